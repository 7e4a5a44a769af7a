"""Tests for audiolm_jax.quantization against an independent numpy reference."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from audiolm_jax.quantization import (
    ResidualVQ,
    SplitResidualVQ,
    VectorQuantizer,
    bits_per_frame,
    kmeans,
    make_quantizer,
    nearest_codes,
    sample_rows,
)

K, D = 8, 4


# ---------------------------------------------------------------------------
# numpy reference
# ---------------------------------------------------------------------------


def np_nearest(x, cb):
    x, cb = np.asarray(x, np.float64), np.asarray(cb, np.float64)
    return ((x[:, None, :] - cb[None]) ** 2).sum(-1).argmin(-1)


def np_kmeans(x, means, iters, w=None):
    x = np.asarray(x, np.float64)
    means = np.array(means, np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    counts = np.zeros(len(means))
    for _ in range(iters):
        codes = np_nearest(x, means)
        counts = np.zeros(len(means))
        sums = np.zeros_like(means)
        for i, c in enumerate(codes):
            counts[c] += w[i]
            sums[c] += w[i] * x[i]
        nz = counts > 0
        means[nz] = sums[nz] / counts[nz, None]
    return means, counts


def np_ema(cs, es, x, codes, decay, eps, w=None):
    """One EMA step + Laplace smoothing; returns (cluster_size, embed_sum, codebook)."""
    x = np.asarray(x, np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    k = len(cs)
    counts = np.zeros(k)
    sums = np.zeros((k, x.shape[1]))
    for i, c in enumerate(codes):
        counts[c] += w[i]
        sums[c] += w[i] * x[i]
    cs = decay * np.asarray(cs, np.float64) + (1 - decay) * counts
    es = decay * np.asarray(es, np.float64) + (1 - decay) * sums
    n = cs.sum()
    smoothed = (cs + eps) / (n + k * eps) * n
    return cs, es, es / smoothed[:, None]


def np_greedy_rvq(x, codebooks):
    residual = np.asarray(x, np.float64)
    codes, q = [], np.zeros_like(residual)
    for cb in codebooks:
        c = np_nearest(residual, cb)
        residual = residual - np.asarray(cb, np.float64)[c]
        q = q + np.asarray(cb, np.float64)[c]
        codes.append(c)
    return np.stack(codes, -1), q


def is_row_of(v, rows, atol=1e-5):
    return bool(np.any(np.all(np.abs(np.asarray(rows) - np.asarray(v)[None]) < atol, axis=-1)))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def rand(seed, shape, scale=1.0):
    # numpy, not jax.random: every new shape would cost an eager XLA compile.
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def vq_vars(vq, codebook, cluster_size, step=0):
    """Initialized 'vq_stats' for a VectorQuantizer with a consistent embed_sum."""
    cb = jnp.asarray(codebook, jnp.float32)
    cs = jnp.asarray(cluster_size, jnp.float32)
    return {"vq_stats": {
        "initialized": jnp.array(True), "cluster_size": cs, "embed_sum": cb * cs[:, None],
        "codebook": cb, "step": jnp.array(step, jnp.int32)}}


def set_rvq_codebooks(variables, codebooks, prefix=()):
    """Returns variables with the RVQ levels' stats replaced by fixed codebooks."""
    stats = jax.tree.map(lambda a: a, variables["vq_stats"])
    node = stats
    for p in prefix:
        node = node[p]
    for l, cb in enumerate(codebooks):
        node[f"levels_{l}"] = vq_vars(None, cb, np.full(len(cb), 4.0))["vq_stats"]
    return {**variables, "vq_stats": stats}


def japply(model, variables, *args, method=None, **kw):
    """Jitted ``model.apply`` (eager Flax dispatch is slow to warm up on CPU)."""
    return jax.jit(lambda v, *a: model.apply(v, *a, method=method, **kw))(variables, *args)


def jinit(model, x):
    return jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)


def train_apply(model):
    @jax.jit
    def f(variables, x, key):
        return model.apply(variables, x, train=True, rngs={"vq": key}, mutable=["vq_stats"])
    return f


# ---------------------------------------------------------------------------
# VectorQuantizer
# ---------------------------------------------------------------------------


def test_nearest_codes_and_lookup():
    x, cb = rand(0, (32, D)), rand(1, (K, D))
    np.testing.assert_array_equal(np.asarray(nearest_codes(x, cb)), np_nearest(x, cb))
    vq = VectorQuantizer(codebook_size=K, dim=D)
    v = vq_vars(vq, cb, np.ones(K))
    xr = x.reshape(4, 8, D)

    def everything(m, x):  # eval: no rng, no mutation
        codes = m.quantize_codes(x)
        return codes, m.lookup(codes), m.lookup(-jnp.ones((2,), jnp.int32)), m(x, train=False)

    codes, vecs, neg, out = japply(vq, v, xr, method=everything)
    np.testing.assert_array_equal(np.asarray(codes), np_nearest(x, cb).reshape(4, 8))
    np.testing.assert_allclose(vecs, cb[np.asarray(codes)])
    np.testing.assert_array_equal(neg, 0.0)  # negative codes (dropped levels) -> zeros
    np.testing.assert_array_equal(np.asarray(out["codes"]), np.asarray(codes))
    np.testing.assert_allclose(out["quantized"], cb[np.asarray(codes)])
    hist = np.bincount(np.asarray(codes).ravel(), minlength=K) / codes.size
    nz = hist[hist > 0]
    np.testing.assert_allclose(out["usage"], (hist > 0).mean(), rtol=1e-6)
    np.testing.assert_allclose(out["perplexity"], np.exp(-(nz * np.log(nz)).sum()), rtol=1e-5)


def test_kmeans_matches_numpy_lloyd():
    x, init = rand(2, (40, D)), rand(3, (K, D))
    means, counts = kmeans(jnp.asarray(x), jnp.asarray(init), 7)
    ref_m, ref_c = np_kmeans(x, init, 7)
    np.testing.assert_allclose(means, ref_m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(counts, ref_c)
    w = (np.arange(40) % 3 != 0).astype(np.float32)  # weight 0 rows are ignored
    means, counts = kmeans(jnp.asarray(x), jnp.asarray(init), 7, jnp.asarray(w))
    ref_m, ref_c = np_kmeans(x[w > 0], init, 7)
    np.testing.assert_allclose(means, ref_m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(counts, ref_c)


def test_sample_rows_valid_only():
    x = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, D), np.float32)
    w = np.zeros(10, np.float32)
    w[[2, 5, 7]] = 1.0
    rows = np.asarray(sample_rows(jax.random.key(0), jnp.asarray(x), jnp.asarray(w), 6))[:, 0]
    assert set(rows[:3].tolist()) == {2.0, 5.0, 7.0}  # distinct while they last
    assert set(rows.tolist()) <= {2.0, 5.0, 7.0}  # then with replacement, still valid


def test_module_kmeans_init_from_batch_rows():
    x = rand(4, (2, 16, D))
    flat = x.reshape(-1, D)
    key = jax.random.key(5)

    def first_step(iters):
        # decay=1 freezes the EMA so the stats show the raw k-means result.
        vq = VectorQuantizer(codebook_size=K, dim=D, decay=1.0, kmeans_iters=iters,
                             dead_code_threshold=0.0)
        v = jinit(vq, x)
        assert not bool(v["vq_stats"]["initialized"])
        _, st = train_apply(vq)(v, x, key)
        return st["vq_stats"]

    # With 0 iterations, embed_sum / cluster_size are the sampled initial means.
    st0 = first_step(0)
    assert bool(st0["initialized"]) and int(st0["step"]) == 1
    cs0 = np.asarray(st0["cluster_size"])
    assert np.all(cs0 >= 1)  # distinct batch rows each win at least themselves
    init_means = np.asarray(st0["embed_sum"]) / cs0[:, None]
    for row in init_means:
        assert is_row_of(row, flat)
    assert len({tuple(np.round(r, 5)) for r in init_means}) == K  # no replacement

    # Same rng -> same initial means -> numpy Lloyd from there.
    st = first_step(6)
    ref_m, ref_c = np_kmeans(flat, init_means, 6)
    np.testing.assert_allclose(st["cluster_size"], ref_c)
    nz = ref_c > 0
    np.testing.assert_allclose(np.asarray(st["embed_sum"])[nz] / ref_c[nz, None], ref_m[nz],
                               rtol=1e-4, atol=1e-5)


def test_ema_update_matches_numpy():
    decay, eps = 0.9, 1e-3
    vq = VectorQuantizer(codebook_size=K, dim=D, decay=decay, epsilon=eps, dead_code_threshold=0.0)
    cb, cs = rand(6, (K, D)), np.abs(rand(7, (K,))) + 0.5
    v = vq_vars(vq, cb, cs, step=3)
    x = rand(8, (3, 10, D))
    flat = x.reshape(-1, D)
    f = jax.jit(lambda v, x, m, k: vq.apply(v, x, train=True, mask=m, rngs={"vq": k},
                                            mutable=["vq_stats"]))
    out, st = f(v, x, np.ones((3, 10), bool), jax.random.key(0))  # all-valid mask == no mask
    codes = np_nearest(flat, cb)
    np.testing.assert_array_equal(np.asarray(out["codes"]).ravel(), codes)
    np.testing.assert_allclose(out["quantized"].reshape(-1, D), cb[codes], rtol=1e-6, atol=1e-6)
    ref_cs, ref_es, ref_cb = np_ema(cs, cb * cs[:, None], flat, codes, decay, eps)
    s = st["vq_stats"]
    np.testing.assert_allclose(s["cluster_size"], ref_cs, rtol=1e-5)
    np.testing.assert_allclose(s["embed_sum"], ref_es, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["codebook"], ref_cb, rtol=1e-5, atol=1e-6)
    assert int(s["step"]) == 4 and int(out["codes_reset"]) == 0

    # Masked vectors do not count; they get code -1 and zero output.
    mask = np.arange(30).reshape(3, 10) % 4 != 0
    out, st = f(v, x, mask, jax.random.key(0))
    m = mask.ravel()
    ref_cs, ref_es, ref_cb = np_ema(cs, cb * cs[:, None], flat[m], codes[m], decay, eps)
    np.testing.assert_allclose(st["vq_stats"]["cluster_size"], ref_cs, rtol=1e-5)
    np.testing.assert_allclose(st["vq_stats"]["codebook"], ref_cb, rtol=1e-5, atol=1e-6)
    oc = np.asarray(out["codes"]).ravel()
    np.testing.assert_array_equal(oc[~m], -1)
    np.testing.assert_array_equal(oc[m], codes[m])
    np.testing.assert_array_equal(np.asarray(out["quantized"]).reshape(-1, D)[~m], 0.0)
    ref_commit = ((cb[codes[m]] - flat[m]) ** 2).mean()
    np.testing.assert_allclose(out["commit_loss"], ref_commit, rtol=1e-5)


@pytest.mark.parametrize("mode,threshold", [("absolute", 2.0), ("relative", 0.5)])
def test_dead_code_reset(mode, threshold):
    decay, eps = 0.9, 1e-5
    cb = rand(9, (K, D))
    # Cluster sizes chosen so absolute(<2) and relative(<0.5*mean) dead sets differ.
    cs = np.array([10.0, 0.1, 3.0, 1.5, 8.0, 0.0, 2.5, 40.0], np.float32)
    x = rand(10, (2, 12, D)) * 0.3  # small spread: many codes win nothing
    mask = np.ones((2, 12), bool)
    mask[1] = False  # reset rows must come from the valid rows only
    flat, m = x.reshape(-1, D), mask.ravel()
    vq = VectorQuantizer(codebook_size=K, dim=D, decay=decay, epsilon=eps,
                         dead_code_threshold=threshold, dead_code_mode=mode)
    run = jax.jit(lambda v, k: vq.apply(v, x, train=True, mask=mask, rngs={"vq": k},
                                        mutable=["vq_stats"]))
    out, st = run(vq_vars(vq, cb, cs), jax.random.key(1))

    codes = np_nearest(flat[m], cb)
    ref_cs, _, ref_cb = np_ema(cs, cb * cs[:, None], flat[m], codes, decay, eps)
    cutoff = threshold if mode == "absolute" else threshold * ref_cs.sum() / K
    dead = ref_cs < cutoff
    assert 0 < dead.sum() < K
    s = st["vq_stats"]
    assert int(out["codes_reset"]) == dead.sum()
    new_cb = np.asarray(s["codebook"])
    np.testing.assert_allclose(new_cb[~dead], ref_cb[~dead], rtol=1e-5, atol=1e-6)
    for k in np.flatnonzero(dead):
        assert is_row_of(new_cb[k], flat[m]) and not is_row_of(new_cb[k], flat[~m])
    reset_size = max(cutoff, ref_cs.sum() / K)
    np.testing.assert_allclose(np.asarray(s["cluster_size"])[dead], reset_size, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s["cluster_size"])[~dead], ref_cs[~dead], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s["embed_sum"])[dead],
                               new_cb[dead] * reset_size, rtol=1e-5, atol=1e-6)

    # Check interval: with interval 2, step 0->1 skips the check, 1->2 runs it.
    vq2 = vq.clone(dead_code_interval=2)
    run2 = jax.jit(lambda v: vq2.apply(v, x, train=True, mask=mask, rngs={"vq": jax.random.key(1)},
                                       mutable=["vq_stats"]))
    assert int(run2(vq_vars(vq2, cb, cs, step=0))[0]["codes_reset"]) == 0
    assert int(run2(vq_vars(vq2, cb, cs, step=1))[0]["codes_reset"]) == dead.sum()


def test_straight_through_commit_loss_and_no_codebook_grad():
    vq = VectorQuantizer(codebook_size=K, dim=D, dead_code_threshold=0.0)
    cb = rand(11, (K, D))
    v = vq_vars(vq, cb, np.full(K, 3.0))
    x = rand(12, (2, 5, D))

    float_keys = ("codebook", "embed_sum", "cluster_size")

    def f(fstats, x):
        stats = {**v["vq_stats"], **fstats}
        out, _ = vq.apply({"vq_stats": stats}, x, train=True, rngs={"vq": jax.random.key(0)},
                          mutable=["vq_stats"])
        return jnp.stack([jnp.sum(out["quantized"]), out["commit_loss"]])

    fstats = {k: v["vq_stats"][k] for k in float_keys}
    vals = jax.jit(f)(fstats, x)
    g_stats, g_x = jax.jit(jax.jacrev(f, argnums=(0, 1)))(fstats, x)
    np.testing.assert_allclose(g_x[0], np.ones_like(x))  # straight-through
    flat = x.reshape(-1, D)
    q = cb[np_nearest(flat, cb)]
    np.testing.assert_allclose(vals[1], ((q - flat) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(g_x[1].reshape(-1, D), 2 * (flat - q) / flat.size, rtol=1e-4,
                               atol=1e-7)
    for name in float_keys:
        np.testing.assert_array_equal(g_stats[name], 0.0)


# ---------------------------------------------------------------------------
# ResidualVQ
# ---------------------------------------------------------------------------


def fixed_rvq(L=3, **kw):
    rvq = ResidualVQ(num_levels=L, codebook_size=K, dim=D, dead_code_threshold=0.0, **kw)
    x = rand(13, (2, 6, D))
    v = jinit(rvq, x)
    codebooks = [rand(20 + l, (K, D), scale=1.0 / (l + 1)) for l in range(L)]
    return rvq, set_rvq_codebooks(v, codebooks), codebooks, x


def test_rvq_matches_numpy_greedy_and_decode_roundtrip():
    rvq, v, cbs, x = fixed_rvq()

    def everything(m, x):  # one compile for all the pure entry points
        codes, c2 = m.encode(x), m.encode(x, n_levels=2)
        return (m(x), codes, m.decode(codes), c2, m.decode(c2), m(x, n_levels=2))

    out, codes, dec, c2, dec2, out2 = japply(rvq, v, x, method=everything)
    ref_codes, ref_q = np_greedy_rvq(x.reshape(-1, D), cbs)
    np.testing.assert_array_equal(np.asarray(out["codes"]).reshape(-1, 3), ref_codes)
    np.testing.assert_allclose(out["quantized"].reshape(-1, D), ref_q, rtol=1e-5, atol=1e-5)
    assert codes.shape == (2, 6, 3) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(out["codes"]))
    np.testing.assert_allclose(dec, out["quantized"], atol=1e-6)
    # Fewer levels: encode(n) == first n codes; decode accepts them.
    np.testing.assert_array_equal(np.asarray(c2), np.asarray(codes[..., :2]))
    _, q2 = np_greedy_rvq(x.reshape(-1, D), cbs[:2])
    np.testing.assert_allclose(dec2.reshape(-1, D), q2, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out2["codes"][..., 2]), -1)
    np.testing.assert_allclose(out2["quantized"].reshape(-1, D), q2, atol=1e-5)


def test_rvq_projection_and_trained_error_decreases():
    rvq = ResidualVQ(num_levels=3, codebook_size=K, dim=6, codebook_dim=3, kmeans_iters=10)
    x = rand(14, (4, 8, 6))
    v = jinit(rvq, x)
    assert v["params"]["in_proj"]["kernel"].shape == (6, 3)
    f = train_apply(rvq)
    for i in range(3):
        out, st = f(v, x, jax.random.key(i))
        v = {**v, **st}
    assert out["quantized"].shape == x.shape and out["codes"].shape == (4, 8, 3)
    assert all(bool(v["vq_stats"][f"levels_{l}"]["initialized"]) for l in range(3))
    # Residual error in codebook space is non-increasing with the number of levels.
    z = np.asarray(x.reshape(-1, 6) @ np.asarray(v["params"]["in_proj"]["kernel"]))
    codes, cbs = japply(rvq, v, x, method=lambda m, x: (m.encode(x), m.get_codebooks()))
    codes, cbs = np.asarray(codes).reshape(-1, 3), np.asarray(cbs)
    errs = [np.mean(z**2)]
    q = np.zeros_like(z)
    for l in range(3):
        q = q + cbs[l][codes[:, l]]
        errs.append(np.mean((z - q) ** 2))
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:])), errs
    roundtrip, ev = japply(rvq, v, x, method=lambda m, x: (m.decode(m.encode(x)), m(x)["quantized"]))
    np.testing.assert_allclose(roundtrip, ev, atol=1e-5)


def test_rvq_gradients_straight_through_and_per_level_detach():
    rvq, v, cbs, x = fixed_rvq()

    def f(x):
        out, _ = rvq.apply(v, x, train=True, rngs={"vq": jax.random.key(0)}, mutable=["vq_stats"])
        return jnp.concatenate([jnp.sum(out["quantized"])[None], out["metrics"]["commit_loss"],
                                out["commit_loss"][None]])

    grads = np.asarray(jax.jit(jax.jacrev(f))(x))  # [1 + L + 1, B, T, D]
    np.testing.assert_allclose(grads[0], np.ones_like(x))  # straight-through
    flat = x.reshape(-1, D)
    codes, _ = np_greedy_rvq(flat, cbs)
    residual = flat.astype(np.float64)
    expected_total = 0.0
    for l in range(3):
        q_l = cbs[l][codes[:, l]]
        g = grads[1 + l].reshape(-1, D)
        # Level l's loss sees earlier levels' quantized values as constants:
        # d/dx mean((sg(q_l) - r_l)^2) = 2 (r_l - q_l) / numel, r_l = x - sum_{j<l} q_j.
        # (Without the detach, the straight-through would zero this for l >= 1.)
        expected = 2 * (residual - q_l) / flat.size
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)
        assert np.abs(g).sum() > 0
        expected_total = expected_total + expected / 3  # commit_loss = mean over levels
        residual = residual - q_l
    np.testing.assert_allclose(grads[-1].reshape(-1, D), expected_total, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_rvq_quantizer_dropout(mode):
    L, B = 3, 6
    rvq = ResidualVQ(num_levels=L, codebook_size=K, dim=D, dead_code_threshold=0.0, decay=0.9,
                     dropout=True, dropout_mode=mode)
    x = rand(15, (B, 3, D))
    v = jinit(rvq, x)
    v = set_rvq_codebooks(v, [rand(30 + l, (K, D), 1.0 / (l + 1)) for l in range(L)])
    f = train_apply(rvq)
    seen = set()
    for i in range(12):
        out, st = f(v, x, jax.random.key(i))
        codes = np.asarray(out["codes"])
        n = (codes[:, 0, :] >= 0).sum(-1)  # active levels per sample
        assert np.all((n >= 1) & (n <= L))
        for b in range(B):  # active levels are a prefix, the rest is -1
            assert np.all(codes[b, :, : n[b]] >= 0) and np.all(codes[b, :, n[b]:] == -1)
        if mode == "batch":
            assert len(set(n)) == 1
        seen.update(n.tolist())
        # Dropped levels contribute zero: output == decode of the (-1 padded) codes.
        np.testing.assert_allclose(out["quantized"], japply(rvq, v, out["codes"], method="decode"),
                                   atol=1e-5)
        # Dropped samples do not enter the EMA: counts mass == active vectors.
        for l in range(L):
            s_old, s_new = v["vq_stats"][f"levels_{l}"], st["vq_stats"][f"levels_{l}"]
            n_vec = (codes[..., l] >= 0).sum()
            np.testing.assert_allclose(np.sum(s_new["cluster_size"]),
                                       0.9 * np.sum(s_old["cluster_size"]) + 0.1 * n_vec
                                       if n_vec else np.sum(s_old["cluster_size"]), rtol=1e-5)
            assert int(s_new["step"]) == int(n_vec > 0)
    assert seen == set(range(1, L + 1))
    # Eval never drops.
    assert np.all(np.asarray(japply(rvq, v, x, train=False)["codes"]) >= 0)


def test_no_quant_rate_bypasses():
    rvq, v, _, x = fixed_rvq(no_quant_rate=1.0)
    out, _ = train_apply(rvq)(v, x, jax.random.key(0))
    np.testing.assert_allclose(out["quantized"], x)
    assert float(out["metrics"]["bypass_frac"]) == 1.0
    assert not np.allclose(japply(rvq, v, x, train=False)["quantized"], x)


# ---------------------------------------------------------------------------
# SplitResidualVQ, factory
# ---------------------------------------------------------------------------


def test_split_rvq_shapes_and_semantic_not_dropped():
    model = SplitResidualVQ(num_semantic_levels=1, num_acoustic_levels=2, codebook_size=K, dim=6,
                            codebook_dim=4, kmeans_iters=5, dropout=True, dropout_mode="sample")
    x = rand(16, (4, 5, 6))
    v = jinit(model, x)
    assert set(v["params"]) == {"semantic", "acoustic"}
    assert v["params"]["semantic"]["in_proj"]["kernel"].shape == (6, 4)
    f = train_apply(model)
    n_ac = set()
    for i in range(8):
        out, st = f(v, x, jax.random.key(i))
        codes = np.asarray(out["codes"])
        assert codes.shape == (4, 5, 3) and out["quantized"].shape == x.shape
        assert out["semantic_quantized"].shape == x.shape
        assert np.all(codes[..., 0] >= 0) and np.all(codes[..., 1] >= 0)
        n_ac.update((codes[:, 0, 1:] >= 0).sum(-1).tolist())
        assert out["metrics"]["usage"].shape == (3,)
        assert int(st["vq_stats"]["semantic"]["levels_0"]["step"]) == 1
    assert n_ac == {1, 2}
    v = {**v, **st}

    def everything(m, x):
        codes, c1 = m.encode(x), m.encode(x, n_levels=1)
        return (codes, m(x), m.decode(codes), m.encode(x, n_levels=2), m.decode(c1))

    codes, ev, dec, c2, dec1 = japply(model, v, x, method=everything)
    assert codes.shape == (4, 5, 3) and c2.shape == (4, 5, 2)
    np.testing.assert_array_equal(np.asarray(ev["codes"]), np.asarray(codes))
    np.testing.assert_allclose(dec, ev["quantized"], atol=1e-5)
    # Semantic level only == the semantic branch output.
    np.testing.assert_allclose(dec1, ev["semantic_quantized"], atol=1e-5)


def test_make_quantizer_and_bits():
    cfg = ml_collections.ConfigDict(dict(kind="rvq", num_levels=3, codebook_size=16,
                                         codebook_dim=0))
    q = make_quantizer(cfg, 8)
    assert isinstance(q, ResidualVQ) and q.num_levels == 3 and q.inner_dim == 8 and not q.projects
    assert q.decay == 0.99 and q.dead_code_mode == "absolute"
    cfg = ml_collections.ConfigDict(dict(kind="split_rvq", num_levels=4, num_semantic_levels=1,
                                         codebook_size=16, codebook_dim=4, dropout=True,
                                         dead_code_mode="relative", dead_code_threshold=0.1,
                                         dead_code_interval=5))
    q = make_quantizer(cfg, 8)
    assert isinstance(q, SplitResidualVQ)
    assert (q.num_semantic_levels, q.num_acoustic_levels, q.codebook_dim) == (1, 3, 4)
    assert q.dead_code_interval == 5 and q.dropout
    with pytest.raises(ValueError):
        make_quantizer(ml_collections.ConfigDict(dict(kind="nope")), 8)
    assert bits_per_frame(8, 1024) == 80.0


# ---------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------


def test_sharded_train_step_matches_unsharded():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 host devices"
    mesh = Mesh(np.array(devices), ("data",))
    rvq = ResidualVQ(num_levels=2, codebook_size=K, dim=D, kmeans_iters=5, dropout=True,
                     dropout_mode="sample", dead_code_threshold=1.0)
    x = rand(17, (8, 4, D))
    v = jinit(rvq, x)
    f = train_apply(rvq)

    def two_steps(x):
        out1, st = f(v, x, jax.random.key(1))  # includes k-means init
        out2, st = f({**v, **st}, x, jax.random.key(2))
        return out1, out2, st

    ref = two_steps(jnp.asarray(x))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(xs.sharding.device_set) == 8
    got = two_steps(xs)
    flat_ref, flat_got = jax.tree.leaves(ref), jax.tree.leaves(got)
    assert len(flat_ref) == len(flat_got)
    for a, b in zip(flat_ref, flat_got):
        if jnp.issubdtype(a.dtype, jnp.integer) or a.dtype == jnp.bool_:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Variable tree names (the level factory must not rename anything checkpoints hold)
# ---------------------------------------------------------------------------


def test_variable_tree_names_are_stable():
    from flax import traverse_util

    def names(model):
        v = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 3, 8))))
        return sorted("/".join(k) for k in traverse_util.flatten_dict(v))

    stats = ("cluster_size", "codebook", "embed_sum", "initialized", "step")
    rvq = ResidualVQ(num_levels=2, codebook_size=K, dim=8, codebook_dim=4)
    assert names(rvq) == sorted(
        ["params/in_proj/kernel", "params/out_proj/kernel"]
        + [f"vq_stats/levels_{l}/{s}" for l in range(2) for s in stats])
    split = SplitResidualVQ(num_semantic_levels=1, num_acoustic_levels=2, codebook_size=K, dim=8)
    assert names(split) == sorted(
        [f"params/{b}/{p}/kernel" for b in ("semantic", "acoustic") for p in ("in_proj", "out_proj")]
        + [f"vq_stats/semantic/levels_0/{s}" for s in stats]
        + [f"vq_stats/acoustic/levels_{l}/{s}" for l in range(2) for s in stats])
