"""A few LM training steps in one process of a (possibly) multi-process job.

The LM run exercises every mesh axis across the processes; the codec shares the training loop
(the global batch, collective checkpoints, metrics from process 0) and its pipeline's process
split is tested in-process, so it is not run here (its compiles made this the suite's slowest
test).

Run by tests/test_multihost.py, alone (one process, 8 fake devices) and through
launch/local_multiprocess.sh (two processes, 4 fake devices each); both write metrics.jsonl,
and each process writes ROOT/report_<process>.json.

    python tests/multihost_worker.py ROOT TOKENS_DIR
"""
import json
import os
import sys

from audiolm_jax.train.distributed import maybe_initialize

maybe_initialize()  # from the AUDIOLM_JAX_* variables, before any JAX work

import jax  # noqa: E402

from audiolm_jax.lm.config import tiny_lm_config  # noqa: E402
from audiolm_jax.lm.run import train_lm  # noqa: E402

STEPS = 3


def main(root, tokens):
    quiet = dict(num_steps=STEPS, checkpoint_every=STEPS, log_every=1, progress=False)
    lm = tiny_lm_config()
    lm.model.update(context=128, num_layers=1)
    lm.data.tokens = tokens
    lm.train.update(**quiet)
    lm.mesh.update(data=2, fsdp=2, tensor=2)  # exercise every mesh axis across processes
    lm_summary = train_lm(lm, os.path.join(root, "lm"))
    # One file per process: the processes share one stdout pipe, where lines can interleave.
    report = {"process": jax.process_index(), "processes": jax.process_count(),
              "devices": jax.device_count(), "lm": lm_summary["step"]}
    with open(os.path.join(root, f"report_{jax.process_index()}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
