"""``python tests/resume_worker.py KILL_AT_SAVE CLI_ARGS...``: the audiolm-jax command, except
that with KILL_AT_SAVE=N the process SIGKILLs itself inside orbax's final rename of checkpoint N
(every file written, the commit not yet made): the worst moment for a kill to land."""
import os
import signal
import sys


def _die_at_commit(step: str) -> None:
    from orbax.checkpoint._src.path import async_path

    rename = async_path.rename

    async def rename_or_die(src, dst):
        if os.path.basename(str(dst)) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return await rename(src, dst)

    async_path.rename = rename_or_die


if __name__ == "__main__":
    kill_at = sys.argv.pop(1)
    if kill_at != "0":
        _die_at_commit(kill_at)
    from audiolm_jax.cli import run

    run()
