"""Test setup: 8 fake CPU devices and a persistent compilation cache, set before JAX is imported.

The cache lets programs that several tests (and the CLI subprocesses) compile identically be
compiled once per session; it is keyed by the program, so it cannot change results.
"""
import os
import tempfile

# The collective timeout is raised so 8 fake devices sharing 2 busy cores (two test workers)
# wait for each other instead of aborting with "rendezvous termination timeout". The suite's
# programs are tiny and compiled once each, so compiling is most of its time: LLVM's backend
# optimisations are turned off, and fusions go through XLA's older loop emitters instead of
# the MLIR fusion emitters, which compile slower (test_scan_remat + test_moshi_generate, cold
# cache: 75 -> 51 s). Same programs, same HLO; tests compare runs made with the same flags.
# Benchmarks and the package itself keep the defaults.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600"
    " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# With the tpu extra installed (for the TPU compile tests): no libtpu host-detection noise on
# stderr and no /tmp/tpu_logs files (audiolm_jax/aot/topology.py:quiet_libtpu).
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_LOG_DIR", "disabled")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"audiolm_jax_jit_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the README's command): a worker per core, as far as memory allows. A
    worker's peak resident memory was ~5.2 GB (session 16), so one per 6 GiB of RAM: a
    2-core, 7 GiB machine runs the suite in one worker rather than running out of memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        ram_gib = 6.0 * (cores or 1)
    return max(1, min(cores or 1, int(ram_gib // 6)))
