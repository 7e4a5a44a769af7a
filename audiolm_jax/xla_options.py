"""Per-program XLA:CPU compiler options for the LM's training step and samplers.

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

_OPTIONS = {
    "train": {"xla_cpu_experimental_ynn_fusion_type": "",
              "xla_cpu_experimental_xnn_fusion_type": f"{_DOT},{_ELTWISE}"},
    "sample": {"xla_cpu_experimental_ynn_fusion_type": "",
               "xla_cpu_experimental_onednn_fusion_type": _DOT},
}


def lm_cpu_options(kind: str) -> dict | None:
    """Compiler options for an LM program of ``kind`` ('train' or 'sample'), or None (use
    XLA's defaults) off CPU, off x86-64, or when ``AUDIOLM_JAX_CPU_KERNELS=default``."""
    if kind not in _OPTIONS:
        raise ValueError(f"kind must be one of {sorted(_OPTIONS)}, got {kind!r}")
    if not cpu_tuning_enabled():
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if jax.default_backend() != "cpu":
        return None
    if kind == "sample" and _has_avx512():
        return None
    if not _accepted(kind):
        return None
    return dict(_OPTIONS[kind])


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
def _accepted(kind: str) -> bool:
    """Whether this jax/jaxlib compiles with the options (they are experimental XLA flags,
    checked on jax 0.10; another version may not know them): one tiny program, compiled once."""
    try:
        jax.jit(lambda x: x @ x, compiler_options=_OPTIONS[kind]).lower(
            jax.ShapeDtypeStruct((8, 8), jnp.float32)).compile()
    except Exception:  # TypeError (old jit signature) or XLA's INVALID_ARGUMENT
        return False
    return True
