"""Independent conversations stepped together: a server's sessions in one compiled call.

Each slot holds a whole batch-1 generator state (:class:`~audiolm_jax.moshi.generate.GenState`:
its KV ring, token ring, step offset and PRNG key) and its own sampling settings
(:class:`~audiolm_jax.moshi.generate.SlotSampling`, traced). The slots are stacked on a
leading axis and stepped by ``jax.vmap`` of the streaming ``step_fn``, so:

* one program serves any mix of conversations: a session joins (its slot's state replaced by
  a fresh one, with its seed) or leaves without a compile, whatever its sampling settings;
* a slot's frames do not depend on the other slots: they equal what the same slot gives
  alone (greedy: equal to :func:`~audiolm_jax.moshi.generate.generate`);
* a slot that is not ``active`` in a step (its client sent nothing yet) keeps its offset and
  PRNG key. The step still writes its rings, but only cells its next real step, at the same
  offset, overwrites before reading, so a paused slot resumes exactly where it stopped.

Every slot keeps its own position, so this works for models without a sliding window too.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.moshi.config import MoshiConfig
from audiolm_jax.moshi.generate import GenState, Sampling, SlotSampling, init_state, step_fn
from audiolm_jax.moshi.model import inference_params


def one_slot_step(config: MoshiConfig, params, state: GenState, user_codes,
                  sampling: SlotSampling, active):
    """One slot's frame (vmapped over slots): as ``step_fn`` on a batch-1 state, but an
    inactive slot keeps its offset and key. -> (state, output [1, 1 + dep_q, 1], valid)."""
    new, out, valid = step_fn(config, sampling, params, state, user_codes)
    new = new._replace(offset=jnp.where(active, new.offset, state.offset),
                       key=jnp.where(active, new.key, state.key))
    return new, out, valid[0] & active


def slots_step(config: MoshiConfig, params, states: GenState, user_codes, sampling, active):
    """All slots' frames: ``states`` stacked ``[S, ...]``, ``user_codes`` int
    ``[S, n_q - dep_q]``, ``sampling`` a :class:`SlotSampling` of ``[S]`` arrays, ``active``
    bool ``[S]`` -> (states, output int32 ``[S, 1 + dep_q]``, valid bool ``[S]``)."""
    step = jax.vmap(functools.partial(one_slot_step, config), in_axes=(None, 0, 0, 0, 0))
    states, out, valid = step(params, states, user_codes[:, None, :, None], sampling, active)
    return states, out[:, 0, :, 0], valid


def set_slot(stacked, slot, one):
    """``stacked`` (a pytree with a leading slot axis) with slot ``slot`` replaced by ``one``
    (the same pytree without that axis)."""
    return jax.tree.map(lambda full, x: full.at[slot].set(x), stacked, one)


def fresh_slot_state(config: MoshiConfig, seed, max_steps: Optional[int] = None) -> GenState:
    """A batch-1 state at the start of a conversation, its PRNG key from ``seed`` (traced)."""
    state = init_state(config, 1, 0, max_steps)
    return state._replace(key=jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=16)
def _compiled(config: MoshiConfig, max_steps: Optional[int]):
    step = jax.jit(functools.partial(slots_step, config), donate_argnums=(1,))
    join = jax.jit(lambda states, slot, seed: set_slot(
        states, slot, fresh_slot_state(config, seed, max_steps)), donate_argnums=(0,))
    return step, join


class SlotSettings:
    """Every slot's sampling settings, stacked into the ``[S]`` arrays the step takes: built
    when a slot's settings change (a join), not at every frame. ``convert`` turns a
    :class:`Sampling` into the step's NamedTuple of scalars (default :meth:`SlotSampling.of`)."""

    def __init__(self, slots: int, convert=SlotSampling.of):
        self._convert = convert
        self._each = [convert(Sampling(sampling=False))] * slots
        self._restack()

    def set(self, slot: int, sampling: Sampling) -> None:
        self._each[slot] = self._convert(sampling)
        self._restack()

    def _restack(self) -> None:
        first = self._each[0]
        self.stacked = type(first)(*(jnp.asarray(np.stack(f)) for f in zip(*self._each)))


class MoshiSlots:
    """``slots`` conversations in one compiled step (see the module docstring).

    ``join(slot, sampling, seed)`` starts a conversation in a slot; ``step(user_codes,
    active)`` advances the active slots by one frame. ``params``: MoshiLM params (boxed or
    not); ``max_steps``: only for ``context=None`` (sizes each slot's full-length cache).
    """

    def __init__(self, config: MoshiConfig, params, slots: int,
                 max_steps: Optional[int] = None):
        if slots < 1:
            raise ValueError(f"slots={slots} must be at least 1")
        self.config, self.slots, self.max_steps = config, int(slots), max_steps
        self.params = inference_params(config, jax.tree.map(jnp.asarray, nn.meta.unbox(params)))
        one = fresh_slot_state(config, 0, max_steps)
        self.state = jax.tree.map(lambda x: jnp.stack([x] * self.slots), one)
        self.settings = SlotSettings(self.slots)
        self._step, self._join = _compiled(config, max_steps)
        self.frames = np.zeros(self.slots, np.int64)

    def join(self, slot: int, sampling: Sampling = Sampling(sampling=False),
             seed: int = 0) -> None:
        """Slot ``slot`` starts a new conversation (the others go on)."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in [0, {self.slots})")
        self.state = self._join(self.state, jnp.int32(slot), jnp.uint32(seed))
        self.settings.set(slot, sampling)
        self.frames[slot] = 0

    def step(self, user_codes, active=None) -> tuple[np.ndarray, np.ndarray]:
        """The user's codebooks of this frame, int ``[S, n_q - dep_q]`` (rows of inactive
        slots are ignored), ``active`` bool ``[S]`` (default all) -> (int32 ``[S, 1 +
        dep_q]``: text token then the model's audio codes, bool ``[S]``: the slots whose
        output is a frame, i.e. active and past the first ``max(delays)`` steps)."""
        need = self.config.n_q - self.config.dep_q
        codes = np.asarray(user_codes)
        if codes.ndim != 2 or codes.shape[0] != self.slots or codes.shape[1] < need:
            raise ValueError(f"user_codes must be [slots={self.slots}, n_q - dep_q = {need}], "
                             f"got shape {codes.shape}")
        active = (np.ones(self.slots, bool) if active is None
                  else np.asarray(active, bool).reshape(self.slots))
        if self.max_steps is not None and (self.frames[active] >= self.max_steps).any():
            raise ValueError(f"max_steps={self.max_steps} frames already generated")
        self.state, out, valid = self._step(self.params, self.state,
                                            jnp.asarray(codes[:, :need], jnp.int32),
                                            self.settings.stacked, jnp.asarray(active))
        self.frames += active
        return np.asarray(out), np.asarray(valid)
