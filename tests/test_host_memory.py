"""audiolm_jax.host_memory: with it, a repeated large XLA:CPU computation reuses its host pages
instead of page-faulting them in on every call. Run in subprocesses: the setting is
process-wide and must precede JAX's thread pools."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Minor page faults per call of a jitted op with a 64 MB output.
_PROBE = r"""
import resource, sys
from audiolm_jax.host_memory import keep_freed_host_memory
kept = keep_freed_host_memory() if sys.argv[1] == "on" else False
import jax, jax.numpy as jnp
x = jnp.ones((16, 1024, 1024), jnp.float32)
f = jax.jit(lambda x: x * 2.0)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x).block_until_ready()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _faults(mode, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                                     "XLA_FLAGS": "", **env})
    assert out.returncode == 0, out.stderr[-2000:]
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_kept_host_memory_stops_page_faults_per_call():
    kept, faults_on = _faults("on")
    if not kept:
        pytest.skip("not glibc: mallopt unavailable")
    _, faults_off = _faults("off")
    pages = 64 * 2**20 // 4096
    assert faults_off > pages // 2, faults_off  # glibc's default: a fresh mmap every call
    assert faults_on < pages // 20, faults_on  # kept: the same pages are reused


def test_environment_turns_it_off():
    kept, _ = _faults("on", AUDIOLM_JAX_KEEP_HOST_MEMORY="0")
    assert not kept
