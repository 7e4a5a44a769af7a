"""Ahead-of-time compilation for Cloud TPU slices from any machine (``audiolm-jax compile``).

With ``libtpu`` installed (the ``tpu`` extra), JAX describes a TPU slice without having one
(:mod:`audiolm_jax.aot.topology`) and runs the real TPU compiler on the host's CPU; the compiled
program reports its memory per chip and the TPU cost model's step time
(:mod:`audiolm_jax.aot.report`), and its optimized HLO lists the collectives it issues
(:mod:`audiolm_jax.aot.hlo`).
"""
