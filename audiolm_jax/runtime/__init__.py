"""Platform tuning, chosen by name and environment outside the model code: which XLA:CPU
kernel libraries each compiled program uses (:mod:`audiolm_jax.runtime.xla_options`, by the
program's name, e.g. ``compiler_options("lm_train")``; ``AUDIOLM_JAX_CPU_KERNELS=default``
turns it off) and glibc's huge-page malloc for XLA:CPU's per-step buffers
(:mod:`audiolm_jax.runtime.host_memory`, ``AUDIOLM_JAX_HUGEPAGES=0`` turns it off). Models,
tasks and the training loop hold no platform knowledge; they name their programs. This
``__init__`` imports nothing: ``host_memory`` runs before JAX is imported.
"""
