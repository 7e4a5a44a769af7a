"""Generation past the context (sliding window), duplex forcing, and the dialogue corpus."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import soundfile as sf

from audiolm_jax.data.synthetic import SyntheticDialogueCorpus, write_synthetic_dialogues
from audiolm_jax.lm.config import base_lm_config
from audiolm_jax.lm.run import _layout, _unlayout, sample_frames
from audiolm_jax.lm.sampling import generate, generate_cache_size
from audiolm_jax.lm.task import LMTask


def make_task(layout="flat", streams=1, levels=2, context=24, seed=0):
    c = base_lm_config()
    c.model.update(num_layers=2, num_heads=2, width=16, context=context, dropout=0.0,
                   layout=layout)
    c.tokens.update(codebook_size=16, num_levels=levels, num_streams=streams)
    task = LMTask(c)
    params = nn.meta.unbox(task.init_state(jax.random.PRNGKey(seed)).params)
    # Peaked logits: greedy decoding without near-ties.
    return task, jax.tree.map(lambda x: x * 3.0, params)


def random_codes(shape, seed=1):
    return np.random.default_rng(seed).integers(0, 16, shape).astype(np.int32)


GREEDY = dict(temperature=0.0)


@pytest.mark.parametrize("layout", ["flat", "parallel", "delay", "depth"])
def test_sliding_window_continues_past_the_context(layout):
    task, params = make_task(layout)
    window = task.context // task.rows if layout == "flat" else \
        task.context - task.pattern.max_delay
    assert task.window_frames == window
    prompt = random_codes((1, 2, 5))
    new = 3 * window  # several windows
    before = generate_cache_size()
    out = sample_frames(task, params, prompt, new, jax.random.PRNGKey(0), **GREEDY)
    assert out.shape == (1, 2, 5 + new)
    np.testing.assert_array_equal(out[..., :5], prompt)
    assert out.min() >= 0 and out.max() < 16
    # First window, then the steady state: two compiled shapes however long the output.
    assert generate_cache_size() - before <= 2
    # The first window is exactly one context-sized generation from the prompt.
    first = sample_frames(task, params, prompt, window - 5, jax.random.PRNGKey(0), **GREEDY)
    np.testing.assert_array_equal(out[..., :window], first)
    # A later window is the greedy continuation of the re-laid-out frames kept before it.
    keep = int(window * 0.75)
    start = window - keep
    again = sample_frames(task, params, out[..., start:window], window - keep,
                          jax.random.PRNGKey(1), **GREEDY)
    np.testing.assert_array_equal(out[..., start:start + window], again)


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_forced_frames_hold_across_windows(layout):
    task, params = make_task(layout, streams=2, levels=2)
    prompt = random_codes((2, 2, 3))
    total = 3 + 20
    forced = np.zeros((2, 2, total), np.int32)
    mask = np.zeros((2, 2, total), bool)
    forced[1] = random_codes((2, total), seed=7)  # the user's stream, whole length
    mask[1] = True
    out = sample_frames(task, params, prompt, 20, jax.random.PRNGKey(3), forced=forced,
                        mask=mask, temperature=1.0)
    np.testing.assert_array_equal(out[1], forced[1])
    np.testing.assert_array_equal(out[0, :, :3], prompt[0])


def test_duplex_is_causal_in_the_user_stream():
    """Frame by frame, as a live conversation: the model's frame t never depends on the user's
    frames t and later (flat layout: the model's levels of a frame come before the user's)."""
    task, params = make_task("flat", streams=2, levels=2, context=40)
    prompt = random_codes((2, 2, 2))
    total, cut = 2 + 14, 9
    user = random_codes((2, total), seed=11)
    other = user.copy()
    other[:, cut:] = random_codes((2, total - cut), seed=12)
    outs = []
    for u in (user, other):
        forced = np.zeros((2, 2, total), np.int32)
        mask = np.zeros((2, 2, total), bool)
        forced[1], mask[1] = u, True
        outs.append(sample_frames(task, params, prompt, 14, jax.random.PRNGKey(0),
                                  forced=forced, mask=mask, **GREEDY))
    np.testing.assert_array_equal(outs[0][0, :, :cut + 1], outs[1][0, :, :cut + 1])
    assert not np.array_equal(outs[0][0], outs[1][0])  # the user's later frames do matter


def test_single_window_matches_plain_generate():
    task, params = make_task("delay")
    prompt = random_codes((1, 2, 4))
    out = sample_frames(task, params, prompt, 6, jax.random.PRNGKey(5), temperature=0.7)
    from audiolm_jax.lm.sampling import delay_special_mask

    seq = _layout(task, np.concatenate([prompt, np.zeros((1, 2, 6), np.int32)], -1)[None])
    f, m = delay_special_mask(task.pattern, seq.shape[-1])
    # The prompt frames are given, also the delayed level's slot past the prompt steps.
    given = np.zeros((1, 2, 10), np.int32)
    given[..., :4] = 1
    given = (_layout(task, given[None]) - _layout(task, np.zeros_like(given[None]))) == 1
    f, m = np.where(m, f, seq), m | given
    direct = generate(task.model, params, seq[..., :4], 7, jax.random.PRNGKey(5),
                      temperature=0.7, forced=f, forced_mask=m, allowed_vocab=16)
    np.testing.assert_array_equal(out, _unlayout(task, np.asarray(direct))[0])


def test_dialogue_corpus_takes_turns_and_is_deterministic(tmp_path):
    corpus = SyntheticDialogueCorpus(sample_rate=8000, num_dialogues=4, seconds=6.0, seed=3)
    item = corpus[1]
    audio = item["audio"]
    assert audio.shape == (2, 48000) and np.isfinite(audio).all()
    np.testing.assert_array_equal(audio, corpus[1]["audio"])
    assert not np.array_equal(audio, corpus[2]["audio"])
    channels = [t[0] for t in item["turns"]]
    assert {0, 1} <= set(channels)  # both speakers talk
    # Turn taking: mostly one speaker at a time, and each turn is where its channel has energy.
    env = np.abs(audio).reshape(2, -1, 80).max(-1) > 0.02
    assert (env[0] & env[1]).mean() < 0.2 and env.any(axis=1).all()
    for ch, a, b in item["turns"]:
        assert np.abs(audio[ch, a:b]).max() > 0.05
    va, vb = item["voices"]
    assert va != vb
    paths = write_synthetic_dialogues(tmp_path, 2, sample_rate=8000, seconds=1.0)
    data, sr = sf.read(paths[0])
    assert sr == 8000 and data.shape == (8000, 2)


def test_duplex_pipeline_with_input_stream(tmp_path):
    """Dialogue corpus -> stereo mu-law tokens -> a two-stream LM -> generate with the user's
    side fed from a file, past the model's context."""
    from audiolm_jax.lm.config import tiny_lm_config
    from audiolm_jax.lm.run import generate_audio, tokenize, train_lm
    from audiolm_jax.tokenizers.mulaw import mulaw_decode, mulaw_encode

    sr = 8000
    paths = write_synthetic_dialogues(tmp_path / "dialogues", 3, sample_rate=sr, seconds=0.5)
    tok = str(tmp_path / "tok")
    tokenize(paths, tok, tokenizer="mulaw", sample_rate=sr, stereo_streams=True)
    c = tiny_lm_config()
    c.model.update(num_layers=1, width=32, context=64)
    c.data.tokens = tok
    c.train.update(num_steps=2, checkpoint_every=2, progress=False, async_checkpoints=False)
    lm = str(tmp_path / "lm")
    train_lm(c, lm)
    user = tmp_path / "user.wav"
    user_audio = SyntheticDialogueCorpus(sample_rate=sr, num_dialogues=1, seconds=0.1,
                                         seed=9)[0]["audio"][1]
    sf.write(user, user_audio, sr, subtype="PCM_16")
    out = str(tmp_path / "out.wav")
    gen = generate_audio(lm, paths[0], 0.02, out, seed=0, input_stream=str(user))
    assert gen["streams"] == 2 and gen["sliding_window"]  # 160 new frames > 32-frame context
    wav, got_sr = sf.read(out, dtype="float32")
    assert got_sr == sr and wav.shape[1] == 2 and len(wav) == gen["frames"]
    # Channel 1 is the user's file, frame for frame (mu-law frames are samples).
    from audiolm_jax.data.audio_io import load_audio

    want = np.asarray(mulaw_decode(mulaw_encode(load_audio(str(user), sr))))
    np.testing.assert_allclose(wav[:, 1], want[:len(wav)], atol=2 / 32768)
    with pytest.raises(ValueError, match="two-stream"):
        one = str(tmp_path / "tok1")
        tokenize(paths[:1], one, tokenizer="mulaw", sample_rate=sr)
        c1 = tiny_lm_config()
        c1.model.update(num_layers=1, width=32, context=64)
        c1.data.tokens = one
        c1.train.update(num_steps=1, checkpoint_every=1, progress=False, async_checkpoints=False)
        train_lm(c1, str(tmp_path / "lm1"))
        generate_audio(str(tmp_path / "lm1"), paths[0], 0.01, out, input_stream=str(user))


@pytest.mark.parametrize("layout", ["flat", "depth"])
def test_bfloat16_sampling_reads_cast_weights_and_gives_the_same_tokens(layout):
    """model_kinds.inference_params: a bf16 LM's matrices cast once (embedding tables and
    norms stay float32) sample exactly the tokens the float32 masters do."""
    from test_depth import depth_config, random_params

    if layout == "depth":
        c = depth_config(streams=1)
    else:
        c = base_lm_config()
        c.model.update(num_layers=2, num_heads=2, width=16, context=24, dropout=0.0)
        c.tokens.update(codebook_size=16, num_levels=2)
    c.model.dtype = "bfloat16"
    task = LMTask(c)
    params = jax.tree.map(np.asarray, random_params(lambda k: task.init_state(k).params, 0.3))
    cast = task.lm.inference_params(params)
    for path, x in jax.tree_util.tree_leaves_with_path(cast):
        name = path[-1].key
        kept = name in ("scale", "bias", "wte", "wpe", "depth_wte") or x.ndim < 2
        assert x.dtype == (np.float32 if kept else jax.numpy.bfloat16), path
    assert any(x.dtype != np.float32 for x in jax.tree.leaves(cast))
    rows = task.pattern.model_levels
    prompt = np.random.default_rng(0).integers(0, 16, (2, 3) if rows == 1 else (2, rows, 3))
    a, b = (np.asarray(task.lm.generate(p, prompt, 6, jax.random.PRNGKey(1), temperature=1.0))
            for p in (params, cast))
    np.testing.assert_array_equal(a, b)
