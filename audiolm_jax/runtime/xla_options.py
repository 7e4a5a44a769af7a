"""Per-program XLA:CPU compiler options, chosen by the program's name.

Each compiled program that may be tuned has a name (``PROGRAMS``: ``lm_train`` for the LM's
training step, ``lm_sample`` for its samplers, ...); the code that compiles it asks
``compiler_options(name)`` and passes the answer to ``jax.jit``. The table below is the whole
choice, so it can be read and changed in one place, and ``AUDIOLM_JAX_CPU_KERNELS=default``
turns all of it off.

XLA:CPU can hand matrix multiplications to one of several kernel libraries (YNNPACK by
default in jaxlib 0.10, XNNPACK, oneDNN). Which is fastest depends on the shapes: measured
on the 2-core x86 box with the benchmark GPT (6 x 384, vocab 2048; BUILD_NOTES.md, "LM
speed, session 4"), interleaving compiled variants of the same program in one process:

* training step (batch 8 x 512): XNNPACK for dots and elementwise ops, 10-25% more tokens/s
  than the default, loss bit-identical;
* sampling (matrix-vector products at batch 1-8): oneDNN for dots, +24% tokens/s at batch 8,
  the same at batch 1, sampled tokens identical. On a CPU with AVX-512 (a Zen 5 EPYC, session 7)
  XLA's default (YNNPACK) was as fast or faster at batch 4-8 (+1% to +11% in four in-process
  A/Bs, equal at batch 1), so there the sampler keeps the default.

Codec programs (convolutions) showed no gain, so they keep the default. The options only apply
on x86-64 CPUs (where jaxlib ships these libraries); ``AUDIOLM_JAX_CPU_KERNELS=default``
turns them off, and the samplers' decode-layout weight copies with them. They are passed to
``jax.jit(compiler_options=...)``, so they never affect other programs in the process, and
the backend is only queried when a program is built.
"""

from __future__ import annotations

import functools
import os
import platform

import jax
import jax.numpy as jnp

_DOT = "LIBRARY_FUSION_TYPE_DOT"
_ELTWISE = "LIBRARY_FUSION_TYPE_ELTWISE"

# Option sets by name: which kernel library XLA:CPU hands each kind of fusion to.
OPTION_SETS = {
    "xnnpack": {"xla_cpu_experimental_ynn_fusion_type": "",
                "xla_cpu_experimental_xnn_fusion_type": f"{_DOT},{_ELTWISE}"},
    "onednn_dot": {"xla_cpu_experimental_ynn_fusion_type": "",
                   "xla_cpu_experimental_onednn_fusion_type": _DOT},
}

# Each named program's option set on an x86-64 CPU: (without AVX-512, with AVX-512).
# None: XLA's defaults.
PROGRAMS = {
    "lm_train": ("xnnpack", "xnnpack"),
    "lm_sample": ("onednn_dot", None),
    "codec_train": (None, None),
    "vqvae_train": (None, None),
}


def compiler_options(program: str | None, target: str | None = None) -> dict | None:
    """The compiler options of the program named ``program`` (a key of ``PROGRAMS``), or None
    (XLA's defaults): for ``None``, off CPU, off x86-64, where the table says so, or when
    ``AUDIOLM_JAX_CPU_KERNELS=default``. ``target``: the platform the program is compiled
    for (default: JAX's backend; 'tpu' when compiling ahead of time for a TPU slice)."""
    if program is None:
        return None
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {sorted(PROGRAMS)}, got {program!r}")
    if PROGRAMS[program] == (None, None) or not cpu_tuning_enabled():
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if (target or jax.default_backend()) != "cpu":
        return None
    name = PROGRAMS[program][1 if _has_avx512() else 0]
    if name is None or not _accepted(name):
        return None
    return dict(OPTION_SETS[name])


def cpu_tuning_enabled() -> bool:
    """False when ``AUDIOLM_JAX_CPU_KERNELS=default``: no tuned kernel options here, and no
    decode-layout weight copies in the samplers (``lm.sampling.decode_layout``)."""
    return os.environ.get("AUDIOLM_JAX_CPU_KERNELS", "tuned") != "default"


@functools.cache
def _has_avx512() -> bool:
    """Whether the CPU has AVX-512 (read from Linux's /proc/cpuinfo; False where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


@functools.cache
def _accepted(name: str) -> bool:
    """Whether this jax/jaxlib compiles with option set ``name`` (experimental XLA flags,
    checked on jax 0.10; another version may not know them): one tiny program, compiled once."""
    try:
        jax.jit(lambda x: x @ x, compiler_options=OPTION_SETS[name]).lower(
            jax.ShapeDtypeStruct((8, 8), jnp.float32)).compile()
    except Exception:  # TypeError (old jit signature) or XLA's INVALID_ARGUMENT
        return False
    return True
