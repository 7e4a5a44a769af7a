"""Finite scalar quantization and the typed quantizer configs / registry.

FSQ is checked against numpy (the bound, the mixed-radix codes), jax.grad (straight-through),
its own decode, an unsharded run, and a codec train step; the typed configs against the
pre-registry ``make_quantizer`` (kept below as the reference) on every shipped config.
"""

import glob
import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from audiolm_jax.quantization import (
    STATS,
    FiniteScalarQuantizer,
    FSQConfig,
    ResidualFSQ,
    ResidualVQ,
    RVQConfig,
    SplitResidualVQ,
    make_quantizer,
    quantizer_config,
    quantizer_kinds,
    quantizer_section,
    quantizer_settings,
)
from audiolm_jax.quantization.fsq import bound, codes_to_digits, digits_to_codes, round_ste

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = (8, 5, 3, 4, 7)


def rand(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def np_bound(z, levels, eps=1e-3):
    """The paper's bound in float64, with atanh for the shift."""
    L = np.asarray(levels, np.float64)
    half_l = (L - 1) * (1 - eps) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    return np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset


# --------------------------------------------------------------------------- pure helpers


def test_bound_range_and_exactly_L_integers_per_dim():
    z = np.linspace(-30, 30, 20001, dtype=np.float32)[:, None] * np.ones(len(LEVELS), np.float32)
    b = np.asarray(jax.jit(lambda z: bound(z, LEVELS))(z))
    np.testing.assert_allclose(b, np_bound(z.astype(np.float64), LEVELS), atol=2e-6)
    r = np.round(b)
    for i, L in enumerate(LEVELS):
        lo, hi = -(L // 2), L - L // 2 - 1  # even L: -L/2..L/2-1, odd: -(L-1)/2..(L-1)/2
        assert b[:, i].min() > lo - 0.5 and b[:, i].max() < hi + 0.5, L
        assert sorted(set(r[:, i].tolist())) == list(range(lo, hi + 1)), L
        normalized = r[:, i] / (L // 2)
        assert normalized.min() >= -1.0 and normalized.max() <= 1.0
    # bound(0) rounds to 0 in every dim: the grid's centre is the origin.
    np.testing.assert_array_equal(np.round(np.asarray(bound(jnp.zeros(len(LEVELS)), LEVELS))), 0)


def test_codes_digits_mixed_radix_matches_numpy():
    K = math.prod(LEVELS)
    rng = np.random.default_rng(0)
    digits = np.stack([rng.integers(0, L, 500) for L in LEVELS], -1).astype(np.int32)
    codes = np.asarray(digits_to_codes(jnp.asarray(digits), LEVELS))
    # numpy: dim 0 is the least significant digit.
    ref = np.ravel_multi_index(tuple(digits[:, ::-1].T), LEVELS[::-1])
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_array_equal(np.asarray(codes_to_digits(jnp.asarray(codes), LEVELS)), digits)
    every = np.asarray(codes_to_digits(jnp.arange(K, dtype=jnp.int32), LEVELS))
    assert len({tuple(d) for d in every}) == K  # a bijection onto the grid
    np.testing.assert_array_equal(np.asarray(digits_to_codes(jnp.asarray(every), LEVELS)),
                                  np.arange(K))


def test_straight_through_gradient_is_identity():
    z = jnp.asarray(rand(1, (6, len(LEVELS)), 2.0))
    v = jnp.asarray(rand(2, (6, len(LEVELS))))
    bounded = bound(z, LEVELS)
    np.testing.assert_array_equal(np.asarray(round_ste(bounded)), np.round(np.asarray(bounded)))
    g = jax.grad(lambda b: jnp.sum(round_ste(b) * v))(bounded)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(v))
    # Through a whole level: the training gradient is that of the unrounded map.
    fsq = FiniteScalarQuantizer(levels=LEVELS, dim=6)
    x = jnp.asarray(rand(3, (5, 6)))
    params = fsq.init(jax.random.key(0), x)
    w = jnp.asarray(rand(4, (5, 6)))

    def smooth(x):
        m = fsq.bind(params)
        hw = jnp.asarray([L // 2 for L in LEVELS], jnp.float32)
        return jnp.sum(m.out_proj(bound(m.in_proj(x), LEVELS) / hw) * w)

    g_train = jax.grad(lambda x: jnp.sum(fsq.apply(params, x, train=True)["quantized"] * w))(x)
    np.testing.assert_allclose(np.asarray(g_train), np.asarray(jax.grad(smooth)(x)),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- modules


def test_level_outputs_and_decode_of_encode():
    fsq = FiniteScalarQuantizer(levels=LEVELS, dim=6)
    x = jnp.asarray(rand(5, (3, 7, 6), 3.0))
    params = fsq.init(jax.random.key(0), x)
    out = jax.jit(lambda p, x: fsq.apply(p, x))(params, x)
    codes = fsq.apply(params, x, method="quantize_codes")
    np.testing.assert_array_equal(np.asarray(out["codes"]), np.asarray(codes))
    np.testing.assert_array_equal(np.asarray(fsq.apply(params, codes, method="lookup")),
                                  np.asarray(out["quantized"]))
    assert float(out["commit_loss"]) == 0.0 and int(out["codes_reset"]) == 0
    # Usage / perplexity from the batch histogram (numpy).
    counts = np.bincount(np.asarray(codes).ravel(), minlength=math.prod(LEVELS))
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(float(out["usage"]), (counts > 0).sum() / counts.size, rtol=1e-6)
    np.testing.assert_allclose(float(out["perplexity"]), np.exp(-(p * np.log(p)).sum()),
                               rtol=1e-5)
    # Masked vectors: zero output, code -1.
    mask = jnp.asarray(np.arange(7) < 4)[None].repeat(3, 0)
    m = fsq.apply(params, x, mask=mask)
    assert np.all(np.asarray(m["codes"])[:, 4:] == -1)
    assert np.all(np.asarray(m["quantized"])[:, 4:] == 0)
    cb = fsq.apply(params, method="get_codebook")
    assert cb.shape == (math.prod(LEVELS), 6)


def test_residual_fsq_decode_of_encode_equals_quantized():
    rfsq = make_quantizer(dict(kind="fsq", num_levels=3, fsq_levels=(5, 4, 3)), 6)
    assert isinstance(rfsq, ResidualFSQ) and rfsq.codebook_size == 60
    x = jnp.asarray(rand(6, (2, 9, 6), 2.0))
    v = rfsq.init({"params": jax.random.key(0)}, x)
    assert set(v) == {"params"}  # no statistics collection
    out = jax.jit(lambda v, x: rfsq.apply(v, x))(v, x)
    codes = jax.jit(lambda v, x: rfsq.apply(v, x, method="encode"))(v, x)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(out["codes"]))
    dec = jax.jit(lambda v, c: rfsq.apply(v, c, method="decode"))(v, codes)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(out["quantized"]), atol=1e-6)
    assert codes.shape == (2, 9, 3) and int(codes.min()) >= 0 and int(codes.max()) < 60


def _train_error(num_levels, x, steps=150):
    rfsq = ResidualFSQ(num_levels=num_levels, codebook_size=60, dim=x.shape[-1],
                       fsq_levels=(5, 4, 3))
    params = rfsq.init(jax.random.key(0), x)["params"]
    opt = optax.adam(1e-2)

    def loss(p):
        q = rfsq.apply({"params": p}, x, train=True, rngs={"vq": jax.random.key(0)})
        return jnp.mean((q["quantized"] - x) ** 2)

    @jax.jit
    def run(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        q = rfsq.apply({"params": params}, x)["quantized"]
        return jnp.mean((q - x) ** 2)

    return float(run(params))


def test_two_residual_levels_reduce_error():
    x = jnp.asarray(rand(7, (8, 32, 4)))
    one, two = _train_error(1, x), _train_error(2, x)
    assert two < 0.8 * one < 0.8 * float(jnp.mean(x ** 2)), (one, two)


def test_sharded_train_apply_matches_unsharded():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 host devices"
    mesh = Mesh(np.array(devices), ("data",))
    rfsq = ResidualFSQ(num_levels=3, codebook_size=60, dim=6, fsq_levels=(5, 4, 3), dropout=True,
                       dropout_mode="sample", no_quant_rate=0.25)
    x = rand(8, (8, 4, 6), 2.0)
    v = rfsq.init(jax.random.key(0), jnp.asarray(x))
    f = jax.jit(lambda v, x: rfsq.apply(v, x, train=True, rngs={"vq": jax.random.key(1)}))
    ref = f(v, jnp.asarray(x))
    got = f(v, jax.device_put(x, NamedSharding(mesh, P("data"))))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        if jnp.issubdtype(a.dtype, jnp.integer):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_codec_train_step_with_fsq_has_no_stats():
    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.codec.model import bitrate_bps, frame_rate
    from audiolm_jax.codec.task import CodecTask

    c = tiny_cnn_config()
    c.quantizer.update(kind="fsq", num_levels=2, fsq_levels=(8, 5, 5, 5))
    c.train.batch_size = 2
    assert bitrate_bps(c) == frame_rate(c) * 2 * math.log2(1000)
    task = CodecTask(c)
    assert not task.has_stats
    variables = jax.eval_shape(task.model.init, {"params": jax.random.key(0)},
                               jnp.zeros((1, 4096)))
    assert STATS not in variables
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0))
    assert state.vq_stats == {}
    batch = {"audio": jnp.asarray(rand(9, (2, 4096), 0.1))}
    assert task.init_step(state, batch) is state  # no k-means for FSQ
    new, metrics = jax.jit(task.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["commit_loss"]) == 0.0
    assert new.vq_stats == {} and int(new.step) == 1
    assert float(metrics["grad_norm"]) > 0  # the reconstruction gradient reaches the encoder


# --------------------------------------------------------------------------- typed configs


@pytest.mark.parametrize("section,needle", [
    (dict(kind="rvq", codebook_size=1), "quantizer.codebook_size must be >= 2, got 1"),
    (dict(kind="rvq", decay=1.5), "quantizer.decay"),
    (dict(kind="rvq", codebook_size="big"), "quantizer.codebook_size must be an integer"),
    (dict(kind="rvq", dead_code_mode="sometimes"), "quantizer.dead_code_mode"),
    (dict(kind="split_rvq", num_levels=4, num_semantic_levels=4), "quantizer.num_semantic_levels"),
    (dict(kind="fsq", fsq_levels=(8, 2)), "quantizer.fsq_levels"),
    (dict(kind="fsq", fsq_levels=()), "quantizer.fsq_levels"),
    (dict(kind="fsq", num_levels=0), "quantizer.num_levels"),
    (dict(kind="fsq", dropout_mode="never"), "quantizer.dropout_mode"),
    (dict(kind="rvq", codebok_size=3), "quantizer.codebok_size"),  # unknown key
])
def test_bad_settings_name_the_key(section, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        quantizer_config(section)


def test_unknown_kind_lists_the_known_kinds():
    with pytest.raises(ValueError, match=r"quantizer\.kind") as e:
        make_quantizer(dict(kind="nope"), 8)
    for kind in ("rvq", "split_rvq", "fsq"):
        assert kind in str(e.value)
    assert set(quantizer_kinds()) >= {"rvq", "split_rvq", "fsq"}


def test_config_check_delegates_to_the_typed_config():
    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.config_check import ConfigError, check_codec_config

    c = tiny_cnn_config()
    c.quantizer.update(kind="fsq", fsq_levels=(8, 5, 5, 5))
    check_codec_config(c)
    c.quantizer.fsq_levels = (8, 1)
    with pytest.raises(ConfigError, match=r"quantizer\.fsq_levels"):
        check_codec_config(c)


def test_other_kinds_keys_are_ignored_and_defaults_are_written_once():
    cfg = quantizer_config(dict(kind="rvq", fsq_levels=(8, 5), num_semantic_levels=3))
    assert isinstance(cfg, RVQConfig) and not hasattr(cfg, "fsq_levels")
    fsq = quantizer_config(dict(kind="fsq", codebook_size=1024, decay=0.5, fsq_levels=[8, 6, 5]))
    assert isinstance(fsq, FSQConfig) and fsq.fsq_levels == (8, 6, 5) and fsq.codebook_size == 240
    assert fsq.bits_per_frame == fsq.num_levels * math.log2(240)
    section = quantizer_section("rvq")
    from audiolm_jax.codec.config import base_codec_config

    assert dict(base_codec_config().quantizer) == section
    for kind in quantizer_kinds():
        settings = quantizer_settings({**section, "kind": kind})
        assert all(section[k] == v for k, v in settings.items() if k != "kind"), kind


@pytest.mark.parametrize("kind", ["rvq", "split_rvq", "fsq"])
def test_has_stats_matches_the_built_module(kind):
    cfg = quantizer_config(dict(kind=kind, num_levels=2, codebook_size=8, fsq_levels=(3, 3)))
    module = make_quantizer(cfg, 4)
    variables = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)},
                                                   jnp.zeros((1, 3, 4))))
    assert (STATS in variables) == cfg.has_stats


def _old_make_quantizer(qcfg, latent_dim):
    """``make_quantizer`` as it was before the typed configs (the reference)."""
    defaults = dict(
        kind="rvq", num_levels=8, num_semantic_levels=1, codebook_size=1024, codebook_dim=None,
        decay=0.99, epsilon=1e-5, kmeans_iters=50, dead_code_threshold=2.0,
        dead_code_mode="absolute", dead_code_interval=1, dropout=False, dropout_mode="batch",
        no_quant_rate=0.0)
    get = lambda k: qcfg.get(k, defaults[k])
    common = dict(
        codebook_size=int(get("codebook_size")), dim=int(latent_dim),
        codebook_dim=int(get("codebook_dim") or latent_dim), decay=float(get("decay")),
        epsilon=float(get("epsilon")), kmeans_iters=int(get("kmeans_iters")),
        dead_code_threshold=float(get("dead_code_threshold")),
        dead_code_mode=str(get("dead_code_mode")),
        dead_code_interval=int(get("dead_code_interval")), dropout=bool(get("dropout")),
        dropout_mode=str(get("dropout_mode")), no_quant_rate=float(get("no_quant_rate")))
    if get("kind") == "rvq":
        return ResidualVQ(num_levels=int(get("num_levels")), **common)
    n_sem = int(get("num_semantic_levels"))
    return SplitResidualVQ(num_semantic_levels=n_sem,
                           num_acoustic_levels=int(get("num_levels")) - n_sem, **common)


def _shipped_quantizer_sections():
    from audiolm_jax.codec import config as codec_config

    sections = {name: getattr(codec_config, name)().quantizer
                for name in ("base_codec_config", "tiny_cnn_config", "tiny_soundstream_config",
                             "quickstart_config", "mimi_config", "tiny_mimi_config")}
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "codec", "*.py")))
    paths.append(os.path.join(REPO, "configs", "vqvae_fashion_mnist.py"))
    for path in paths:
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sections[os.path.basename(path)] = module.get_config().quantizer
    # The quantizer section of a workdir saved before the typed configs (no fsq_levels,
    # num_semantic_levels 0 for an rvq, lists for tuples).
    legacy = os.path.join(REPO, "tests", "data", "legacy_v0", "mimi_codec", "config.json")
    if os.path.exists(legacy):
        with open(legacy) as f:
            sections["legacy mimi workdir"] = json.load(f)["quantizer"]
    return sections


def test_shipped_configs_build_the_same_modules_as_before():
    sections = _shipped_quantizer_sections()
    assert len(sections) >= 12
    for name, section in sections.items():
        for latent_dim in (16, 512):
            new, old = make_quantizer(section, latent_dim), _old_make_quantizer(section, latent_dim)
            assert type(new) is type(old) and repr(new) == repr(old), name


def test_resume_check_compares_what_the_quantizer_section_means(tmp_path):
    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.config_check import ConfigError
    from audiolm_jax.workdir import check_resume_matches

    views = {"quantizer": quantizer_settings}
    new = tiny_cnn_config()
    old = json.loads(new.to_json_best_effort())
    del old["quantizer"]["fsq_levels"]  # saved before FSQ existed
    old["quantizer"]["num_semantic_levels"] = 0
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_resume_matches(str(tmp_path), new, ("model", "quantizer"), views=views)
    new.quantizer.fsq_levels = (5, 5)  # not a setting of an rvq
    check_resume_matches(str(tmp_path), new, ("model", "quantizer"), views=views)
    new.quantizer.codebook_size = 32
    with pytest.raises(ConfigError, match=r"quantizer\.codebook_size"):
        check_resume_matches(str(tmp_path), new, ("model", "quantizer"), views=views)
    new.quantizer.update(kind="fsq", codebook_size=64)
    with pytest.raises(ConfigError, match=r"quantizer\.kind"):
        check_resume_matches(str(tmp_path), new, ("model", "quantizer"), views=views)
