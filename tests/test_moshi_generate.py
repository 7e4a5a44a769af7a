"""Streaming Moshi generation (:mod:`audiolm_jax.moshi.generate`) against Kyutai's own
``LMGen.step`` (greedy, random weights, past the attention window), against the teacher-forced
forward pass of :mod:`audiolm_jax.moshi.model`, and its contract: None for the first
``max(delays)`` steps, shapes, seeded sampling, one compiled call per step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.moshi import MoshiConfig, from_kyutai, logits, param_shapes
from audiolm_jax.moshi.generate import (MoshiGenerator, Sampling, compiled_step, generate,
                                        sample_token)

VARIANTS = {"positional_embedding": "sin_rope", "depformer_pos_emb": "sin", "layer_scale": 0.5,
            "depformer_layer_scale": 0.25, "norm": "rms_norm", "depformer_multi_linear": False,
            "depformer_weights_per_step_schedule": None, "delays": (1, 2, 0, 1, 0, 1, 1)}

_forward = jax.jit(logits, static_argnums=0)


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), jnp.float32),
                        param_shapes(cfg))


def _user(cfg, B, N, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.card, (B, cfg.n_q - cfg.dep_q, N)).astype(np.int32)


def _teacher_forced(cfg, params, user, out):
    """The full forward on the sequence the generator produced -> (text, audio) logits and
    masks aligned with ``out [B, 1 + dep_q, T]``. The generator feeds the user's step s as
    the delayed column s, i.e. undelayed frame s - 1: user frame t is ``user[..., t + 1]``."""
    T = out.shape[2]
    codes = np.concatenate([out, user[:, :, 1:T + 1]], axis=1)
    return _forward(cfg, params, codes)


def _check_argmax(res, out, tol=1e-4):
    """Where the masks hold, ``out`` is the argmax of the logits, or a float near-tie."""
    for row, (lg, mask) in enumerate([(res.text_logits, res.text_mask),
                                      (res.audio_logits, res.audio_mask)]):
        lg, mask = np.asarray(lg), np.asarray(mask)
        want = out[:, :1] if row == 0 else out[:, 1:]
        assert mask.sum() > 0
        chosen = np.take_along_axis(lg, want[..., None], axis=-1)[..., 0]
        gap = lg.max(-1) - chosen  # 0 where the token is the argmax
        assert (gap[mask] <= tol).all(), (row, np.argwhere(mask & (gap > tol)))


# ----------------------------------------------------------------------------- against Kyutai


def _kyutai(cfg: MoshiConfig, seed: int = 0):
    """Kyutai's LMModel with every weight random (scaled 1 / sqrt(fan_in), norms near 1)."""
    torch = pytest.importorskip("torch")
    lm = pytest.importorskip("moshi.models.lm")
    torch.manual_seed(seed)
    model = lm.LMModel(dtype=torch.float32, **cfg.kyutai_kwargs())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha") or name.endswith(".scale"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / np.sqrt(p.shape[-1]))
    return torch, lm, model.eval()


@pytest.mark.parametrize("overrides", [{}, {**VARIANTS, "scan_layers": True}],
                         ids=["tiny7b", "variants_scanned"])
def test_greedy_matches_kyutai_lmgen(overrides):
    """Identical tokens to ``LMGen(lm, use_sampling=False).step`` over 3 x context steps
    (the KV ring wraps twice), batch 2, random user codes."""
    cfg = MoshiConfig.tiny(**overrides)
    torch, lm, model = _kyutai(cfg)
    params = from_kyutai({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    B, N = 2, 3 * cfg.context
    user = _user(cfg, B, N)

    kyutai_gen = lm.LMGen(model, use_sampling=False)
    outs = []
    with kyutai_gen.streaming(B), torch.no_grad():
        for s in range(N):
            o = kyutai_gen.step(torch.from_numpy(user[:, :, s:s + 1].astype(np.int64)))
            assert (o is None) == (s < max(cfg.delays))
            if o is not None:
                outs.append(o.numpy())
    want = np.concatenate(outs, axis=2)

    got = generate(cfg, params, user)
    assert got.shape == want.shape == (B, 1 + cfg.dep_q, N - max(cfg.delays))
    np.testing.assert_array_equal(got, want)
    # Not luck: teacher-forced, every chosen token beats the runner-up by more than the 1e-4
    # the two forward passes agree to (test_moshi_model), so equal tokens is the right
    # requirement (the smallest margins here are ~1e-3).
    res = _teacher_forced(cfg, params, user, got)
    for lg, mask in [(res.text_logits, res.text_mask), (res.audio_logits, res.audio_mask)]:
        top2 = np.sort(np.asarray(lg), axis=-1)[..., -2:]
        assert (top2[..., 1] - top2[..., 0])[np.asarray(mask)].min() > 1e-4


# ----------------------------------------------------------------------------- no torch


@pytest.mark.parametrize("length,overrides,kwargs", [
    (8, {}, {}), (20, {}, {}), (12, {"context": None}, {"max_steps": 13})],
    ids=["within_context", "past_context", "unbounded_context"])
def test_greedy_is_argmax_of_teacher_forced_forward(length, overrides, kwargs):
    """The incremental path (KV ring, token ring, per-frame depformer) equals the full
    forward: every generated token is the argmax of ``logits`` on the generated sequence.
    ``context=None`` (which Kyutai cannot stream) takes a full-length cache of max_steps."""
    cfg = MoshiConfig.tiny(**overrides)
    params = _random_params(cfg)
    B = 2
    user = _user(cfg, B, length + max(cfg.delays))
    out = generate(cfg, params, user, **kwargs)
    assert out.shape == (B, 1 + cfg.dep_q, length)
    _check_argmax(_teacher_forced(cfg, params, user, out), out)


def test_none_first_then_frames_and_reset():
    cfg = MoshiConfig.tiny(delays=(0, 0, 2, 1, 0, 1, 1))  # max delay 2
    params = _random_params(cfg, seed=4)
    B, N = 2, 6
    user = _user(cfg, B, N, seed=5)
    gen = MoshiGenerator(cfg, params, batch_size=B)
    assert gen.max_delay == 2 and gen.frames == 0

    def run():
        outs = []
        for s in range(N):
            # extra user rows are dropped, as LMGen does
            extra = np.concatenate([user[:, :, s:s + 1], np.full((B, 2, 1), 99, np.int32)], 1)
            outs.append(gen.step(extra))
        return outs

    outs = run()
    assert gen.frames == gen.offset == N
    assert outs[0] is None and outs[1] is None
    for o in outs[2:]:
        assert isinstance(o, np.ndarray) and o.shape == (B, 1 + cfg.dep_q, 1)
        assert o.dtype == np.int32
        assert (o[:, 0] >= 0).all() and (o[:, 0] < cfg.text_card).all()
        assert (o[:, 1:] >= 0).all() and (o[:, 1:] < cfg.card).all()
    gen.reset()
    assert gen.frames == 0
    again = run()
    assert again[:2] == [None, None]
    np.testing.assert_array_equal(np.concatenate(again[2:], 2), np.concatenate(outs[2:], 2))
    np.testing.assert_array_equal(np.concatenate(outs[2:], 2), generate(cfg, params, user))
    with pytest.raises(ValueError, match="user_codes must be"):
        gen.step(user[:, :2, :1])
    with pytest.raises(ValueError, match="user_codes must be"):
        gen.step(user[:1, :, :1])


def test_sampling_seeded_and_in_range():
    cfg = MoshiConfig.tiny()
    params = _random_params(cfg, seed=2)
    B, N = 2, 12
    user = _user(cfg, B, N, seed=3)
    a = generate(cfg, params, user, sampling=True, seed=7)
    b = generate(cfg, params, user, sampling=True, seed=7)
    c = generate(cfg, params, user, sampling=True, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    for x in (a, c):
        assert x.dtype == np.int32
        assert ((x[:, 0] >= 0) & (x[:, 0] < cfg.text_card)).all()  # never the initial ids
        assert ((x[:, 1:] >= 0) & (x[:, 1:] < cfg.card)).all()
    # top-k of 1 is greedy whatever the temperature
    top1 = generate(cfg, params, user, sampling=True, top_k=1, text_top_k=1, seed=9)
    np.testing.assert_array_equal(top1, generate(cfg, params, user))


def test_sample_token_top_k_and_temperature():
    logits = jnp.broadcast_to(jnp.arange(10.0), (2000, 10))
    key = jax.random.PRNGKey(0)
    draws = np.asarray(sample_token(key, logits, True, 1.0, 3))
    assert set(np.unique(draws)) == {7, 8, 9}  # only the top 3
    # softmax over the top 3 at temperature 1: p(9) = e^2 / (1 + e + e^2) ~ 0.665
    assert abs((draws == 9).mean() - 0.665) < 0.05
    cold = np.asarray(sample_token(key, logits, True, 0.05, 3))
    assert (cold == 9).mean() > 0.99
    np.testing.assert_array_equal(sample_token(key, logits, False, 1.0, 3), 9)  # greedy
    np.testing.assert_array_equal(sample_token(key, logits, True, 0.0, 3), 9)  # temp 0: greedy


def test_one_compiled_call_per_step():
    """A step is one jitted call: after many steps (and a reset) the step function holds a
    single compiled program."""
    cfg = MoshiConfig.tiny()
    params = _random_params(cfg)
    gen = MoshiGenerator(cfg, params, batch_size=2, sampling=True, temperature=0.61, seed=1)
    fn = compiled_step(cfg, Sampling(True, 0.61, 250, 0.7, 25))
    assert fn is gen._step and fn._cache_size() == 0
    user = _user(cfg, 2, 30)
    for s in range(20):
        gen.step(user[:, :, s:s + 1])
    gen.reset(seed=2)
    for s in range(20, 30):
        gen.step(user[:, :, s:s + 1])
    assert fn._cache_size() == 1


@pytest.mark.parametrize("scan", [False, True])
def test_bfloat16_steps_read_cast_weights_and_give_the_same_frames(scan):
    """moshi.model.inference_params: a bf16 Moshi's matrices are cast once (norm scales stay
    float32, also stacked over scanned layers), and the step gives bit-identical frames to one
    fed the float32 masters, sampled."""
    import functools

    from audiolm_jax.moshi.generate import init_state, step_fn
    from audiolm_jax.moshi.model import inference_params

    cfg = MoshiConfig.tiny(dtype=jnp.bfloat16, scan_layers=scan)
    params = _random_params(cfg)
    cast = inference_params(cfg, params)
    for path, b in jax.tree_util.tree_leaves_with_path(cast):
        assert b.dtype == (jnp.float32 if path[-1].key == "scale" else jnp.bfloat16), path
    step = jax.jit(functools.partial(step_fn, cfg, Sampling(True, 0.9, 10, 0.9, 10)))
    user = _user(cfg, 2, 12)
    outs = []
    for weights in (params, cast):
        state, frames = init_state(cfg, 2, seed=4), []
        for t in range(12):
            state, out, _ = step(weights, state, user[:, :, t:t + 1])
            frames.append(np.asarray(out))
        outs.append(np.concatenate(frames, -1))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert len(np.unique(outs[0][:, 1:])) > 3  # sampled codes, not a constant
