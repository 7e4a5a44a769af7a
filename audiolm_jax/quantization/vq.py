"""EMA vector quantizer (single codebook), pure-functional Flax Linen.

Statistics live in the non-trainable variable collection ``'vq_stats'``:

* ``initialized`` -- bool scalar, True once k-means init has run.
* ``cluster_size`` -- float32 [K], EMA of per-code assignment counts.
* ``embed_sum`` -- float32 [K, D], EMA of per-code sums of assigned vectors.
* ``codebook`` -- float32 [K, D], the codebook actually used for lookup.
  It is *stored* (not re-derived on every call) because right after k-means
  init and right after a dead-code reset it is set directly; after every EMA
  update it is ``embed_sum / laplace_smoothed(cluster_size)[:, None]``.
* ``step`` -- int32 scalar, number of EMA updates applied so far.

No gradient ever reaches these statistics (they are not params and every
input to their update passes through ``stop_gradient``).

Train step (``train=True``, applied with ``mutable=['vq_stats']`` and an rng
stream named ``'vq'``), all inside one jit-compatible call:

1. If not yet initialized (and the batch has at least one valid vector):
   k-means (``kmeans_iters`` Lloyd iterations, initial means sampled from the
   batch rows) -- behind ``jax.lax.cond`` so it only *runs* once.
2. Nearest-code assignment with the current codebook (this codebook produces
   the returned ``quantized`` values).
3. EMA update of ``cluster_size`` / ``embed_sum`` with the batch, Laplace
   smoothing, codebook re-derived.
4. Every ``dead_code_interval`` steps: codes whose (updated) ``cluster_size``
   is below the cutoff are replaced by random rows of the batch.

All reductions are over the *global* flattened batch, and randomness is drawn
on the global index space, so a jitted call whose inputs are sharded over a
mesh produces the same result as an unsharded call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiolm_jax.quantization.base import RNG, STATS, module_option, usage_perplexity

Array = jax.Array

_HI = jax.lax.Precision.HIGHEST  # distances/stats must not drop to bf16 on TPU


# ---------------------------------------------------------------------------
# Pure helpers (exposed for tests and for reuse)
# ---------------------------------------------------------------------------


def nearest_codes(x: Array, codebook: Array) -> Array:
    """Index of the nearest (squared Euclidean) codebook row for each row of x.

    Args:
      x: [N, D] float.
      codebook: [K, D] float.
    Returns:
      int32 [N]. Ties resolve to the lowest index.
    """
    x = x.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    # ||x||^2 is constant per row, so it does not affect the argmin.
    dist = (jnp.sum(codebook**2, axis=-1)[None, :]
            - 2.0 * jnp.matmul(x, codebook.T, precision=_HI))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def kmeans(x: Array, init_means: Array, iters: int,
           weights: Optional[Array] = None) -> Tuple[Array, Array]:
    """Weighted Lloyd k-means.

    Each iteration assigns every row to its nearest mean and replaces each mean
    by the weighted average of its rows; a cluster with no (weighted) rows
    keeps its previous mean.

    Args:
      x: [N, D] data.
      init_means: [K, D] initial means.
      iters: number of Lloyd iterations (static).
      weights: optional [N] non-negative weights (0 = ignore the row).
    Returns:
      (means [K, D], counts [K]) where counts are the weighted cluster sizes of
      the *last* assignment, i.e. the counts that produced the final means (so
      ``means * counts[:, None]`` is the sum of the assigned rows).
    """
    x = x.astype(jnp.float32)
    K = init_means.shape[0]
    w = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
    xw = x * w[:, None]

    def step(_, carry):
        means, _ = carry
        codes = nearest_codes(x, means)
        onehot = jax.nn.one_hot(codes, K, dtype=jnp.float32)
        counts = jnp.matmul(w, onehot, precision=_HI)
        sums = jnp.matmul(onehot.T, xw, precision=_HI)
        new_means = sums / jnp.maximum(counts, 1e-12)[:, None]
        new_means = jnp.where((counts > 0)[:, None], new_means, means)
        return new_means, counts

    init = (init_means.astype(jnp.float32), jnp.zeros((K,), jnp.float32))
    if iters <= 0:
        codes = nearest_codes(x, init[0])
        counts = jnp.matmul(w, jax.nn.one_hot(codes, K, dtype=jnp.float32), precision=_HI)
        return init[0], counts
    return jax.lax.fori_loop(0, iters, step, init)


def _sample_indices(u: Array, valid: Array, num: int) -> Array:
    """Indices of ``num`` valid rows from uniforms ``u`` of shape [..., N + num].

    Valid rows are put in a uniformly random order by sorting ``u[..., :N]``;
    the first ``min(num, n_valid)`` slots take distinct rows (no replacement),
    the remaining slots pick valid rows with replacement using ``u[..., N:]``.
    One uniform draw and one (batched) sort: cheap to compile, and independent
    of sharding. Leading dims of ``u`` give independent samples.
    """
    N = valid.shape[0]
    n_valid = jnp.sum(valid.astype(jnp.int32))
    perm = jnp.argsort(jnp.where(valid, u[..., :N], 2.0), axis=-1)  # valid first, shuffled
    slots = jnp.arange(num)
    distinct = jnp.take(perm, jnp.minimum(slots, N - 1), axis=-1)
    pick = jnp.clip(jnp.floor(u[..., N:] * n_valid).astype(jnp.int32), 0,
                    jnp.maximum(n_valid - 1, 0))
    repeated = jnp.take_along_axis(perm, pick, axis=-1)
    return jnp.where(slots < n_valid, distinct, repeated)


def sample_rows(key: Array, x: Array, weights: Array, num: int) -> Array:
    """Sample ``num`` rows of x among rows with weight > 0.

    Without replacement while enough valid rows exist, then with replacement
    for the remaining slots. Works on the global index space, so the result
    does not depend on how x is sharded.

    Args:
      key: PRNG key.
      x: [N, D].
      weights: [N]; rows with weight <= 0 are never picked (unless there are
        no valid rows at all, in which case the result is arbitrary rows).
      num: number of rows to return (static).
    Returns:
      [num, D].
    """
    u = jax.random.uniform(key, (x.shape[0] + num,))
    return x[_sample_indices(u, weights > 0, num)]


def laplace_smoothed_sizes(cluster_size: Array, epsilon: float) -> Array:
    """``(n + eps) / (sum(n) + K * eps) * sum(n)`` -- never zero, same total."""
    K = cluster_size.shape[0]
    n = jnp.sum(cluster_size)
    return (cluster_size + epsilon) / (n + K * epsilon) * n


def code_histogram_metrics(codes: Array, weights: Array, K: int) -> Dict[str, Array]:
    """Batch ``usage`` (fraction of codes used) and ``perplexity`` (exp entropy)."""
    counts = jnp.matmul(weights.astype(jnp.float32),
                        jax.nn.one_hot(codes, K, dtype=jnp.float32), precision=_HI)
    return usage_perplexity(counts)


# ---------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------


class EMACodebookOptions(nn.Module):
    """The EMA codebook's settings, shared by a quantizer and the stacks that build it
    (documented on :class:`VectorQuantizer`); keyword-only."""

    decay: float = module_option(0.99)
    epsilon: float = module_option(1e-5)
    kmeans_iters: int = module_option(50)
    dead_code_threshold: float = module_option(2.0)
    dead_code_mode: str = module_option("absolute")
    dead_code_interval: int = module_option(1)

    def ema_options(self) -> Dict[str, Any]:
        """These settings as keyword arguments, to pass on to a nested quantizer."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EMACodebookOptions)
                if f.name not in ("parent", "name")}


class VectorQuantizer(EMACodebookOptions):
    """EMA vector quantizer with k-means init and dead-code replacement.

    Attributes:
      codebook_size: K.
      dim: D, vector dimension.
      decay: EMA decay for cluster sizes and sums.
      epsilon: Laplace smoothing constant.
      kmeans_iters: Lloyd iterations for the data-dependent init.
      dead_code_threshold: cutoff for dead codes; <= 0 disables resets.
      dead_code_mode: 'absolute' -> dead iff ``cluster_size < threshold``;
        'relative' -> dead iff ``cluster_size < threshold * sum(cluster_size)/K``.
      dead_code_interval: check for dead codes every this many EMA steps.

    A reset code gets a random batch row as its vector, and its EMA state is
    set to ``cluster_size = max(cutoff, sum(cluster_size) / K)`` (the uniform
    share, as in Mimi) with ``embed_sum = row * cluster_size``, which gives it
    a fair grace period before it can be declared dead again.
    """

    codebook_size: int
    dim: int

    def setup(self):
        if self.dead_code_mode not in ("absolute", "relative"):
            raise ValueError(f"dead_code_mode must be 'absolute' or 'relative', got {self.dead_code_mode!r}")
        if self.dead_code_interval < 1:
            raise ValueError(f"dead_code_interval must be >= 1, got {self.dead_code_interval}")
        K, D = self.codebook_size, self.dim
        col = STATS
        self.initialized = self.variable(col, "initialized", lambda: jnp.array(False))
        self.cluster_size = self.variable(col, "cluster_size", lambda: jnp.zeros((K,), jnp.float32))
        self.embed_sum = self.variable(col, "embed_sum", lambda: jnp.zeros((K, D), jnp.float32))
        self.codebook = self.variable(col, "codebook", lambda: jnp.zeros((K, D), jnp.float32))
        self.step = self.variable(col, "step", lambda: jnp.array(0, jnp.int32))

    # -- pure inference helpers ------------------------------------------------

    def get_codebook(self) -> Array:
        """The current codebook, float32 [K, D]."""
        return self.codebook.value

    def quantize_codes(self, x: Array) -> Array:
        """Codes (int32 [...]) of the nearest codebook rows for x [..., D]."""
        flat = x.reshape(-1, self.dim)
        return nearest_codes(flat, self.codebook.value).reshape(x.shape[:-1])

    def lookup(self, codes: Array) -> Array:
        """Codebook vectors (float32 [..., D]) for codes; negative codes -> zeros."""
        cb = self.codebook.value
        vec = cb[jnp.clip(codes, 0, self.codebook_size - 1)]
        return jnp.where((codes >= 0)[..., None], vec, 0.0)

    # -- training update -------------------------------------------------------

    def _dead_cutoff(self, cluster_size: Array) -> Array:
        if self.dead_code_mode == "absolute":
            return jnp.asarray(self.dead_code_threshold, jnp.float32)
        return self.dead_code_threshold * jnp.sum(cluster_size) / self.codebook_size

    def _train_update(self, x: Array, w: Array, key: Array,
                      init_codebooks: Optional[bool] = None) -> Tuple[Array, Array, Array]:
        """Runs init / EMA / dead-code steps; returns (codebook used, codes, n_reset).

        ``init_codebooks``: None runs k-means behind a ``lax.cond`` on ``initialized``;
        True runs it in this call (no conditional); False never runs it here. Trainers use
        True once on the first batch and False in the hot step, which keeps collectives out of
        conditionals (XLA's CPU backend can deadlock on those with many fake devices) and the
        50 Lloyd iterations out of the step program.
        """
        K = self.codebook_size
        # One random draw per step (threefry is slow to compile): row 0 seeds
        # k-means, row 1 picks dead-code replacements.
        u = jax.random.uniform(key, (2, x.shape[0] + K))
        valid = w > 0
        sample_idx = _sample_indices(u, valid, K)  # [2, K], one batched sort
        any_valid = jnp.sum(w) > 0

        # 1. k-means init, run only once at run time.
        def do_init(_):
            init_means = x[sample_idx[0]]
            means, counts = kmeans(x, init_means, self.kmeans_iters, w)
            return means, counts, means * counts[:, None]

        def keep(_):
            return self.codebook.value, self.cluster_size.value, self.embed_sum.value

        need_init = jnp.logical_and(jnp.logical_not(self.initialized.value), any_valid)
        if init_codebooks is None:
            codebook, cluster_size, embed_sum = jax.lax.cond(need_init, do_init, keep, None)
        elif init_codebooks:
            need_init = any_valid
            codebook, cluster_size, embed_sum = jax.tree.map(
                lambda new, old: jnp.where(need_init, new, old), do_init(None), keep(None))
        else:
            need_init = jnp.array(False)
            codebook, cluster_size, embed_sum = keep(None)
        initialized = jnp.logical_or(self.initialized.value, need_init)

        # 2. Assign with the (possibly just initialized) codebook.
        codes = nearest_codes(x, codebook)

        # 3. EMA update with Laplace smoothing.
        onehot = jax.nn.one_hot(codes, K, dtype=jnp.float32)
        counts = jnp.matmul(w, onehot, precision=_HI)
        sums = jnp.matmul(onehot.T, x * w[:, None], precision=_HI)
        new_cs = self.decay * cluster_size + (1.0 - self.decay) * counts
        new_es = self.decay * embed_sum + (1.0 - self.decay) * sums
        new_cb = new_es / laplace_smoothed_sizes(new_cs, self.epsilon)[:, None]
        step = self.step.value + any_valid.astype(jnp.int32)

        # 4. Dead-code replacement with random batch rows.
        if self.dead_code_threshold > 0:
            check = jnp.logical_and(any_valid, step % self.dead_code_interval == 0)
            cutoff = self._dead_cutoff(new_cs)
            dead = jnp.logical_and(new_cs < cutoff, check)
            rows = x[sample_idx[1]]
            reset_size = jnp.maximum(cutoff, jnp.sum(new_cs) / K)
            new_cb = jnp.where(dead[:, None], rows, new_cb)
            new_es = jnp.where(dead[:, None], rows * reset_size, new_es)
            new_cs = jnp.where(dead, reset_size, new_cs)
            n_reset = jnp.sum(dead.astype(jnp.int32))
        else:
            n_reset = jnp.array(0, jnp.int32)

        # A batch with no valid vectors (e.g. this level dropped for the whole
        # batch) must not decay the EMA or reset codes: keep the old state.
        sel = lambda new, old: jnp.where(any_valid, new, old)
        self.codebook.value = sel(new_cb, codebook)
        self.cluster_size.value = sel(new_cs, cluster_size)
        self.embed_sum.value = sel(new_es, embed_sum)
        self.initialized.value = initialized
        self.step.value = step
        return codebook, codes, n_reset

    # -- forward ---------------------------------------------------------------

    def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None,
                 init_codebooks: Optional[bool] = None) -> Dict[str, Any]:
        """Quantizes x.

        Args:
          x: [..., D] float.
          train: update the EMA statistics (needs ``mutable=['vq_stats']`` and
            rng ``'vq'``) and return straight-through ``quantized``.
          init_codebooks: see ``_train_update`` (None: k-means once, under a cond).
          mask: optional bool [...]; False entries are ignored by the statistics,
            metrics and commit loss, get ``quantized = 0`` and ``codes = -1``.
        Returns:
          dict with ``quantized`` [..., D] (x.dtype), ``codes`` int32 [...],
          ``commit_loss`` scalar (mean squared error per latent element between
          x and its detached quantized value, over valid vectors), ``usage``,
          ``perplexity`` (batch code histogram, valid vectors only) and
          ``codes_reset`` (int32, codes replaced this step).
        """
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got shape {x.shape}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim).astype(jnp.float32)
        if mask is None:
            w = jnp.ones(flat.shape[:1], jnp.float32)
        else:
            w = jnp.broadcast_to(mask, lead).reshape(-1).astype(jnp.float32)
        xs = jax.lax.stop_gradient(flat)  # statistics never carry gradients

        if train and not self.is_initializing():
            if not self.is_mutable_collection(STATS):
                raise ValueError(f"train=True requires apply(..., mutable=[{STATS!r}])")
            codebook, codes, n_reset = self._train_update(xs, w, self.make_rng(RNG),
                                                          init_codebooks)
        else:
            codebook = self.codebook.value
            codes = nearest_codes(xs, codebook)
            n_reset = jnp.array(0, jnp.int32)

        q = jax.lax.stop_gradient(codebook[codes])
        valid = w > 0
        per_vec = jnp.mean((q - flat) ** 2, axis=-1)
        commit = jnp.sum(per_vec * w) / jnp.maximum(jnp.sum(w), 1.0)
        out = flat + jax.lax.stop_gradient(q - flat) if train else q
        out = jnp.where(valid[:, None], out, 0.0)
        codes_out = jnp.where(valid, codes, -1)

        result = {
            "quantized": out.reshape(x.shape).astype(x.dtype),
            "codes": codes_out.reshape(lead),
            "commit_loss": commit,
            "codes_reset": n_reset,
        }
        result.update(code_histogram_metrics(codes, w, self.codebook_size))
        return result
