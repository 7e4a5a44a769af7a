"""Sampling: sample_logits filters, KV-cached generate vs a naive full-forward loop, forcing,
determinism, one compilation per shape, delay-layout special-token forcing."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.lm.patterns import DelayPattern
from audiolm_jax.lm.sampling import (
    combine_forced, delay_special_mask, generate, generate_cache_size, sample_logits,
    segment_plan)
from audiolm_jax.lm.transformer import LMConfig, Transformer, init_params

TINY = dict(vocab_size=32, num_layers=2, num_heads=2, width=16, context=16)


def _setup(seed=0, **kw):
    cfg = LMConfig(**{**TINY, **kw})
    model = Transformer(cfg)
    params = nn.meta.unbox(init_params(model, jax.random.PRNGKey(seed)))
    # make the logits peaked enough that greedy decoding has no near-ties
    params = jax.tree.map(lambda x: x * 3.0, params)
    return cfg, model, params


def _prompt(cfg, batch, length, seed=1):
    shape = (batch, length) if cfg.num_levels == 1 else (batch, cfg.num_levels, length)
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, cfg.vocab_size)


def _naive_greedy(model, params, prompt, num_new):
    """Full forward pass on the growing sequence, argmax of the last position, each step."""
    fwd = jax.jit(lambda p, t: model.apply({"params": p}, t))
    seq = np.asarray(prompt)
    for _ in range(num_new):
        logits = np.asarray(fwd(params, jnp.asarray(seq)))[..., -1, :]
        nxt = logits.argmax(-1).astype(seq.dtype)
        seq = np.concatenate([seq, nxt[..., None]], axis=-1)
    return seq


LOGITS = jnp.array([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -0.5, 1.5]])


# ----------------------------------------------------------------------------- sample_logits


def test_temperature_zero_is_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 50))
    for t in (0.0, 1e-7):
        got = sample_logits(logits, jax.random.PRNGKey(1), temperature=t, top_p=0.9)
        np.testing.assert_array_equal(got, jnp.argmax(logits, -1))
    assert got.shape == (4, 3) and got.dtype == jnp.int32


def test_top_k_one_is_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (64, 50))
    for t in (0.5, 1.0, 10.0):
        got = sample_logits(logits, jax.random.PRNGKey(2), temperature=t, top_k=1)
        np.testing.assert_array_equal(got, jnp.argmax(logits, -1))


def test_top_k_stays_in_top_k():
    logits = jax.random.normal(jax.random.PRNGKey(0), (20,)) * 0.1  # nearly flat
    k = 4
    allowed = set(np.argsort(-np.asarray(logits))[:k].tolist())
    keys = jax.random.split(jax.random.PRNGKey(3), 4000)
    draws = jax.vmap(lambda r: sample_logits(logits, r, temperature=2.0, top_k=k))(keys)
    seen = set(np.asarray(draws).tolist())
    assert seen <= allowed
    assert seen == allowed  # all k are reachable


def test_top_p_small_is_argmax_and_nucleus():
    keys = jax.random.split(jax.random.PRNGKey(4), 2000)
    draw = jax.jit(jax.vmap(lambda r, p: sample_logits(LOGITS[0], r, top_p=p),
                            in_axes=(0, None)))
    np.testing.assert_array_equal(draw(keys, 0.01), 5)
    np.testing.assert_array_equal(draw(keys, 0.0), 5)  # always at least the top token
    # nucleus: smallest set of largest tokens with mass >= p
    probs = np.asarray(jax.nn.softmax(LOGITS[0]))
    order = np.argsort(-probs)
    p = float(probs[order[:2]].sum()) + 0.01  # needs the 3rd token
    seen = set(np.asarray(draw(keys, p)).tolist())
    assert seen == set(order[:3].tolist())


def test_distribution_matches_softmax():
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(5), n)
    for t in (1.0, 0.7):
        draws = np.asarray(jax.vmap(lambda r: sample_logits(LOGITS[0], r, temperature=t))(keys))
        freq = np.bincount(draws, minlength=8) / n
        want = np.asarray(jax.nn.softmax(LOGITS[0] / t))
        np.testing.assert_allclose(freq, want, atol=0.015)
    # top-k renormalises over the kept tokens
    draws = np.asarray(jax.vmap(lambda r: sample_logits(LOGITS[0], r, top_k=3))(keys))
    freq = np.bincount(draws, minlength=8) / n
    top3 = np.argsort(-np.asarray(LOGITS[0]))[:3]
    want = np.zeros(8)
    want[top3] = np.asarray(jax.nn.softmax(LOGITS[0][top3]))
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_traced_temperature_and_top_p():
    f = jax.jit(lambda lg, r, t, p: sample_logits(lg, r, temperature=t, top_p=p))
    assert int(f(LOGITS, jax.random.PRNGKey(0), 0.0, 1.0)[0]) == 5
    assert int(f(LOGITS, jax.random.PRNGKey(0), 1.0, 0.01)[0]) == 5


def test_allowed_vocab():
    logits = jnp.array([0.0, 0.0, 10.0])  # the last id is "special"
    assert int(sample_logits(logits, jax.random.PRNGKey(0), temperature=0.0,
                             allowed_vocab=2)) in (0, 1)


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("kw", [dict(positions="learned"), dict(positions="rope"),
                                dict(positions="rope", tie_embeddings=False),
                                dict(num_levels=3)],
                         ids=["learned", "rope", "rope-untied", "3-level"])
@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_matches_naive_loop(kw, batch):
    cfg, model, params = _setup(**kw)
    prompt = _prompt(cfg, batch, 4)
    num_new = 8
    got = generate(model, params, prompt, num_new, jax.random.PRNGKey(0), temperature=0.0)
    want = _naive_greedy(model, params, prompt, num_new)
    assert got.shape == want.shape == prompt.shape[:-1] + (4 + num_new,)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_segment_plan():
    for prompt_len, num_new, max_length, segments in [(64, 256, 320, None), (5, 200, 205, None),
                                                      (3, 40, 50, 3), (1, 3, 4, 8), (9, 63, 72, None)]:
        plan = segment_plan(prompt_len, num_new, max_length, segments)
        firsts, counts, lengths = map(list, zip(*plan))
        assert firsts == [0] + list(np.cumsum(counts)[:-1])  # contiguous, in order
        assert sum(counts) == num_new and min(counts) >= 1
        # every step's position has its slot; lengths grow; never past max_length
        assert all(length >= prompt_len + f + n for f, n, length in plan)
        assert lengths == sorted(lengths) and lengths[-1] <= max_length
    assert segment_plan(64, 256, 320) == ((0, 64, 128), (64, 64, 192), (128, 64, 256),
                                            (192, 64, 320))
    assert len(segment_plan(1, 3, 4, 8)) == 3  # clamped to one step each
    assert segment_plan(9, 63, 100) == ((0, 63, 100),)  # short: one segment, whole cache
    assert segment_plan(9, 0, 9) == ((0, 0, 9),)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=1.0, top_k=5)],
                         ids=["greedy", "sampled"])
def test_growing_cache_gives_the_same_tokens(kw):
    """Segments with a cache grown between them sample what one max_length cache does; greedy
    also equals the full-forward loop."""
    cfg, model, params = _setup(positions="rope")  # rope: max_length is not capped at 16
    prompt = _prompt(cfg, 2, 3)
    one = generate(model, params, prompt, 30, jax.random.PRNGKey(3), cache_segments=1, **kw)
    three = generate(model, params, prompt, 30, jax.random.PRNGKey(3), cache_segments=3, **kw)
    np.testing.assert_array_equal(one, three)
    if kw["temperature"] == 0.0:
        np.testing.assert_array_equal(three, _naive_greedy(model, params, prompt, 30))


def test_determinism_and_one_compilation():
    cfg, model, params = _setup()
    prompt = _prompt(cfg, 2, 3)
    n0 = generate_cache_size()
    a = generate(model, params, prompt, 10, jax.random.PRNGKey(7), temperature=1.0)
    n1 = generate_cache_size()
    b = generate(model, params, prompt, 10, jax.random.PRNGKey(7), temperature=1.0)
    assert generate_cache_size() == n1 == n0 + 1  # same shapes: no recompilation
    c = generate(model, params, prompt + 1, 10, jax.random.PRNGKey(8), temperature=0.8,
                 top_p=0.9)  # nucleus on: one more version (top_p = 1 skips the filter)...
    generate(model, params, prompt, 10, jax.random.PRNGKey(8), temperature=0.5, top_p=0.7)
    assert generate_cache_size() == n1 + 1  # ...and other values of it do not recompile
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.asarray(a)[:, 3:], np.asarray(c)[:, 3:])
    d = generate(model, params, prompt, 10, jax.random.PRNGKey(9), temperature=1.0)
    assert not np.array_equal(a, d)
    np.testing.assert_array_equal(np.asarray(a)[:, :3], prompt)
    assert np.asarray(a).min() >= 0 and np.asarray(a).max() < cfg.vocab_size


def test_forcing_single_level_flat_style():
    """Flat layout of K=3 levels: force every K-th token (level 0), sample the rest."""
    cfg, model, params = _setup(positions="rope")
    K, P, num_new = 3, 3, 12
    total = P + num_new
    prompt = _prompt(cfg, 2, P)
    forced = jax.random.randint(jax.random.PRNGKey(11), (2, total), 0, cfg.vocab_size)
    mask = np.arange(total) % K == 0
    out = np.asarray(generate(model, params, prompt, num_new, jax.random.PRNGKey(3),
                              temperature=1.0, forced=forced, forced_mask=mask))
    np.testing.assert_array_equal(out[:, mask], np.asarray(forced)[:, mask])  # forced ones
    np.testing.assert_array_equal(out[:, 1:P], np.asarray(prompt)[:, 1:P])  # prompt kept
    free = ~mask
    free[:P] = False
    assert not np.array_equal(out[:, free], np.asarray(forced)[:, free])  # sampled ones
    # greedy with forcing == naive greedy loop with the same forcing
    out_g = np.asarray(generate(model, params, prompt, num_new, jax.random.PRNGKey(3),
                                temperature=0.0, forced=forced, forced_mask=mask))
    fwd = jax.jit(lambda t: model.apply({"params": params}, t))
    seq = np.where(mask[:P], np.asarray(forced)[:, :P], np.asarray(prompt))
    for pos in range(P, total):
        nxt = np.asarray(fwd(jnp.asarray(seq)))[:, -1].argmax(-1)
        if mask[pos]:
            nxt = np.asarray(forced)[:, pos]
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out_g, seq)


def test_forcing_multi_level_delay_layout():
    """3-level delay model: keep level 0 from a 'prompt file', special tokens in the empty
    slots, sample levels 1..2 among real ids."""
    pattern = DelayPattern(3, vocab_size=16)
    cfg, model, params = _setup(num_levels=3, vocab_size=pattern.embed_vocab_size,
                                positions="rope")
    P, num_new = 2, 10
    total = P + num_new
    sp_forced, sp_mask = delay_special_mask(pattern, total)
    assert sp_mask.shape == (3, total)
    np.testing.assert_array_equal(sp_mask, ~pattern.valid_mask(total - pattern.max_delay))
    level0 = np.zeros((3, total), np.int32)
    level0[0] = np.arange(total) % 16
    l0_mask = np.zeros((3, total), bool)
    l0_mask[0, :total - pattern.max_delay] = True
    forced, mask = combine_forced((level0, l0_mask), (sp_forced, sp_mask))
    prompt = pattern.build(np.arange(6).reshape(1, 3, 2) % 16)[:, :, :P]  # [1, 3, 2]
    prompt = jnp.broadcast_to(prompt, (2, 3, P))
    out = np.asarray(generate(model, params, prompt, num_new, jax.random.PRNGKey(1),
                              temperature=1.0, forced=forced, forced_mask=mask,
                              allowed_vocab=pattern.vocab_size))
    assert out.shape == (2, 3, total)
    np.testing.assert_array_equal(out[:, mask], np.broadcast_to(np.asarray(forced), out.shape)
                                  [:, mask])
    assert (out[:, sp_mask] == pattern.special_token).all()
    assert (out[:, ~sp_mask] < pattern.vocab_size).all()
    codes = pattern.revert(out)  # [2, 3, total - 2]
    np.testing.assert_array_equal(codes[:, 0], np.broadcast_to(level0[0, :total - 2],
                                                               (2, total - 2)))


def test_delay_special_mask_head_only():
    pattern = DelayPattern(3, vocab_size=8, delays=(0, 2, 1))
    forced, mask = delay_special_mask(pattern, 6, include_tail=False)
    want = np.zeros((3, 6), bool)
    want[1, :2] = True
    want[2, :1] = True
    np.testing.assert_array_equal(mask, want)
    assert (forced[mask] == 8).all()


def test_errors():
    cfg, model, params = _setup()
    with pytest.raises(ValueError):
        generate(model, params, _prompt(cfg, 1, 4), cfg.context, jax.random.PRNGKey(0))
    with pytest.raises(ValueError):
        generate(model, params, jnp.zeros((1, 3, 4), jnp.int32), 2, jax.random.PRNGKey(0))
