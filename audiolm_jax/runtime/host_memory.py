"""Transparent huge pages for XLA:CPU's per-execution buffers (Linux + glibc).

XLA:CPU allocates a program's temporaries as one block per execution and frees it afterwards.
For the benchmark GPT's train step (6 x 384, batch 8 x 512) that block is 1.34 GB: glibc
serves it with a fresh ``mmap`` each step, so every step touches ~330,000 new 4 KiB pages.
The page faults cost 0.5-1.2 s of kernel time per 1.6-2.0 s step on a 2-core host
(BUILD_NOTES.md, "Speed, session 8"). With glibc's ``glibc.malloc.hugetlb=1`` tunable,
malloc asks for transparent huge pages on such blocks (``madvise(MADV_HUGEPAGE)``): 2 MiB
pages, ~5,000 faults per step, and the step took 1.28 s instead of 1.58 s.

A glibc tunable is read once, when the process starts, so the ``audiolm-jax`` command
re-executes itself with the tunable added (``maybe_reexec``) before doing any work. Nothing
else changes: same interpreter, arguments, environment and process id. It is skipped where it
cannot help (not Linux/glibc >= 2.35, THP not in ``madvise`` mode, JAX not running on the
CPU: see :func:`jax_runs_on_cpu`) or when ``AUDIOLM_JAX_HUGEPAGES=0``; a tunable already set by
the user is left as it is.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pkgutil
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "AUDIOLM_JAX_HUGEPAGES"
_DONE = "AUDIOLM_JAX_HUGEPAGES_REEXEC"  # set in the re-executed process: never loops
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Modules whose presence means JAX picks an accelerator over the CPU when JAX_PLATFORMS is unset
# (besides any module of the ``jax_plugins`` namespace, where JAX discovers PJRT plugins).
ACCELERATOR_MODULES = ("jax_plugins.xla_cuda12", "jax_cuda12_plugin", "jax_cuda13_plugin")
# libtpu only wins where the machine has TPU chips (their device files); elsewhere JAX falls
# back to the CPU, e.g. on a machine that has the ``tpu`` extra to compile for TPUs ahead of time.
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")


def thp_mode(path: str = _THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), None if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _glibc_version() -> tuple[int, int] | None:
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def tpu_present(patterns=TPU_DEVICE_FILES) -> bool:
    return any(glob.glob(p) for p in patterns)


def accelerator_plugin_installed() -> bool:
    """Whether a JAX accelerator plugin that will find its hardware is installed (found, not
    imported: no JAX import)."""
    try:
        if importlib.util.find_spec("libtpu") is not None and tpu_present():
            return True
    except (ImportError, ValueError):
        pass
    for name in ACCELERATOR_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # a parent that is not a package, a broken spec
            continue
    try:
        spec = importlib.util.find_spec("jax_plugins")
    except (ImportError, ValueError):
        return False
    locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and any(True for _ in pkgutil.iter_modules(list(locations)))


def jax_runs_on_cpu(environ, accelerator_installed=accelerator_plugin_installed) -> bool:
    """Whether JAX will run this process's programs on the CPU, decided without importing
    JAX: ``JAX_PLATFORMS`` names the platforms JAX tries, first one first; unset, JAX takes
    an installed accelerator plugin over the CPU (``accelerator_installed()``)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not accelerator_installed()


def reexec_environment(environ, *, system: str, glibc: tuple[int, int] | None,
                       thp: str | None, on_cpu: bool) -> dict | None:
    """The environment to re-execute with, or None when no re-exec is wanted.

    Pure: the caller passes the environment and what it knows of the host, so each rule is
    testable. ``madvise`` is the only THP mode where the tunable changes anything: under
    ``always`` every large mapping already gets huge pages, under ``never`` none can. Off the
    CPU (``on_cpu`` False) the large per-step buffers live in device memory: nothing to gain.
    """
    if environ.get(OPT_OUT, "1") == "0" or environ.get(_DONE):
        return None
    if system != "Linux" or glibc is None or glibc < (2, 35) or thp != "madvise":
        return None
    if not on_cpu:
        return None
    if _tunable_value(environ) is not None:
        return None  # the user chose a value: keep it
    current = environ.get("GLIBC_TUNABLES", "")
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"
    env[_DONE] = "1"
    return env


def maybe_reexec() -> None:
    """Re-executes this Python process with glibc's huge-page malloc tunable, if it helps
    here (see the module docstring). Returns only when no re-exec happens. Call it first
    thing in a command's entry point, before any output or threads."""
    env = reexec_environment(os.environ, system=platform.system(), glibc=_glibc_version(),
                             thp=thp_mode(), on_cpu=jax_runs_on_cpu(os.environ))
    if env is None:
        return
    argv = [sys.executable] + list(getattr(sys, "orig_argv", sys.argv)[1:])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    except OSError:
        return  # could not re-execute (odd interpreter path): run as we are


def _tunable_value(environ) -> str | None:
    """This module's tunable's value in ``environ``'s ``GLIBC_TUNABLES``, None if unset."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == TUNABLE:
            return value
    return None


def active() -> bool:
    """Whether this process started with the huge-page tunable (for logs and benchmarks)."""
    return _tunable_value(os.environ) not in (None, "0")
