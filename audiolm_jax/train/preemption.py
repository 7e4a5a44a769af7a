"""Notices a preemption request (SIGTERM) so the loop can checkpoint and stop between steps.

One process: our own SIGTERM handler sets a flag; the loop checks it after each step, so the
in-flight step completes, then saves. Several processes: SIGTERM may reach the hosts at different
steps, and they must all save the *same* step, so we defer to JAX's preemption sync service
(started by ``jax.distributed.initialize``), which hears the signal on any host and agrees on a
step every host will reach (``multihost_utils.reached_preemption_sync_point``).
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging


class PreemptionWatch:
    """Context manager; ``requested(step)`` is True at the step where training should stop."""

    def __init__(self):
        self._flag = False
        self._previous = None
        self._multi = False

    def __enter__(self) -> "PreemptionWatch":
        self._multi = jax.process_count() > 1
        # signal handlers can only be installed from the main thread; elsewhere (a loop run in a
        # worker thread) we simply never see the signal, as before.
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: will checkpoint after the current step and stop")
        self._flag = True

    def requested(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # preemption service disabled in this job
                return False
        return self._flag

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
