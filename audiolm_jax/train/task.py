"""The contract between the generic training loop (:mod:`audiolm_jax.train.loop`), the export
(:mod:`audiolm_jax.export`) and a kind of model: a :class:`Task` subclass per kind (the codec,
the LM, the VQ-VAE) supplies everything that differs; the loop and the export never branch on
the kind.

Required: ``init_state(rng)`` (pure; weights may carry logical-axis boxes) and
``train_step(state, batch) -> (state, metrics)`` (pure, ``metrics['loss']`` a scalar).
Everything else has a default that does nothing, so a task overrides only what it needs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax


class Task:
    """One kind of model, as the training loop and the export see it."""

    # The config's ``task`` and export.json's ``kind`` ('codec', 'lm', 'vqvae').
    name: str = ""
    # The compiled train step's name in :data:`audiolm_jax.runtime.xla_options.PROGRAMS`
    # (platform tuning is chosen there, by this name); None: XLA's defaults.
    program: str | None = None
    # The fields of the train state that inference needs (what an export keeps).
    inference_keys: tuple[str, ...] = ("params",)

    def __init__(self, config: Any):
        self.config = config

    # ------------------------------------------------------------------ required
    def init_state(self, rng: jax.Array) -> Any:
        raise NotImplementedError

    def train_step(self, state: Any, batch: Any) -> tuple[Any, dict]:
        raise NotImplementedError

    # ------------------------------------------------------------------ optional hooks
    def prepare_batch(self, host_batch: Any) -> Any:
        """A host batch from the data iterator -> the compiled step's batch (on the host)."""
        return host_batch

    def init_step(self, state: Any, batch: Any) -> Any:
        """Runs once, compiled, on the first batch of a fresh run (e.g. k-means codebook
        init). Only compiled when a subclass overrides it (see :func:`overrides`)."""
        return state

    def warm_start(self, state: Any) -> Any:
        """Runs once on the host after a fresh run's initialisation (never on resume), e.g.
        to load another run's weights for fine-tuning; ``state`` holds placed arrays."""
        return state

    def write_samples(self, state: Any, step: int, workdir: str, writer: Any) -> None:
        """Writes samples every ``train.sample_every`` steps (audio, plots)."""

    def inference_state(self, state: Any) -> dict:
        """What inference needs of a train state: ``{key: state.key}`` for
        :attr:`inference_keys` (optimizer state and training-only parts are left behind)."""
        return {key: getattr(state, key) for key in self.inference_keys}

    def export_files(self, workdir: str, out: str,
                     export_workdir: Callable[[str, str, int | None], dict]) -> dict:
        """Writes what inference needs besides the weights and config.json into the export
        folder ``out`` (e.g. an LM's token metadata and its codec); ``export_workdir(source,
        out, step)`` exports another workdir. Returns entries for export.json."""
        return {}


def overrides(task: Any, hook: str) -> bool:
    """Whether ``task``'s class replaces the default (do-nothing) ``hook`` of :class:`Task`."""
    impl = getattr(type(task), hook, None)
    return impl is not None and impl is not getattr(Task, hook, None)
