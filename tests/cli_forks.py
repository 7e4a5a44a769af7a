"""``python tests/cli_forks.py ARGV_JSON``: runs the audiolm-jax command once per argument
list, in order, each in a child forked from one process that has already imported the package.

The children are real processes (their own exit status, output and absl flags), so a test
sees what a user would; forking skips each child's ~6 s of imports, which were most of the
time of the CLI tests' short commands. Prints ``[{"returncode", "stdout", "stderr"}, ...]`` as
JSON. The parent never starts JAX's runtime (forking a process whose runtime threads run is
not safe): every child starts its own.
"""
import json
import os
import sys
import tempfile

import importlib

import audiolm_jax.cli as cli

# What the commands import lazily, loaded once before forking.
for _module in ("audiolm_jax.codec.config", "audiolm_jax.config_check", "audiolm_jax.lm.config",
                "audiolm_jax.lm.run"):
    importlib.import_module(_module)


def run_one(argv: list) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: output to the files, run, exit with the command's status
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.argv = ["audiolm-jax", *argv]
            code = 0
            try:
                cli.run()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported like an uncaught error
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


if __name__ == "__main__":
    results = [run_one(argv) for argv in json.loads(sys.argv[1])]
    print(json.dumps(results))
