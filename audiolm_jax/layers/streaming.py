"""Streaming state: what a layer remembers between the chunks of a signal it processes one
chunk at a time.

Streaming is a mode of the layers themselves (``Conv1d(padding='causal')``,
``ConvTranspose1d(causal=True)``, ``TransformerStack.stream``), not a second graph: in that mode
a layer reads its carried values from the Flax variable collection ``STREAMING`` and writes
the next ones back, as flax's lm1b example keeps its KV cache in a ``cache`` collection::

    y, new = model.apply({"params": params, STREAMING: state}, chunk, ..., mutable=[STREAMING])
    state = new[STREAMING]

The same apply without the collection creates it at its initial value and leaves it there
(lm1b's ``init`` of the cache); :func:`initial_state` is that call. The state is a plain
pytree of arrays, so one streaming step is one compiled call.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

STREAMING = "streaming"


def carry(module: nn.Module, name: str, init: Callable[[], Any]) -> tuple[Any, Callable]:
    """``(value, update)`` for the module's streaming variable ``name``: its value in the
    state passed in, or ``init()`` when the state lacks it. ``update(new)`` stores the next
    value, except on the call that creates the variable, which leaves it at ``init()``."""
    fresh = not module.has_variable(STREAMING, name)
    if fresh:
        module.put_variable(STREAMING, name, init())

    def update(value: Any) -> None:
        if not fresh:
            module.put_variable(STREAMING, name, value)

    return module.get_variable(STREAMING, name), update


def initial_state(module: nn.Module, variables: Any, *args, method: Any = None,
                  **kwargs) -> dict:
    """The initial ``STREAMING`` collection of ``module.apply(variables, *args, method=method,
    **kwargs)`` (``variables`` without that collection); ``{}`` when nothing streams."""
    _, new = module.apply(variables, *args, method=method, mutable=[STREAMING], **kwargs)
    return dict(new).get(STREAMING, {})
