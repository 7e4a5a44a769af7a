"""Mimi streaming: one frame of audio in, that frame's codes out; codes in, a frame of audio
out. Frame by frame must equal offline processing of the whole signal (codes exactly, audio to
float tolerance), with each step one compiled call."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from audiolm_jax.codec.config import tiny_mimi_config
from audiolm_jax.codec.mimi.streaming import MimiStreamer
from audiolm_jax.codec.model import build_codec, hop_length
from audiolm_jax.train.loop import strip_boxes


def _random_codebooks(vq_stats, scale, key):
    """Gaussian codebooks at the latents' scale (a fresh codec's are all zeros: every code ties)."""
    out = {}
    for branch, levels in vq_stats["quantizer"].items():
        out[branch] = {}
        for i, (name, stats) in enumerate(sorted(levels.items())):
            k = jax.random.fold_in(jax.random.fold_in(key, len(out)), i)
            out[branch][name] = dict(stats, codebook=jax.random.normal(k, stats["codebook"].shape)
                                     * scale * 0.6 ** i)
    return {"quantizer": out}


def _stream(streamer, audio):
    """Pushes ``audio [B, frames * hop]`` one frame at a time; returns codes and audio."""
    hop = streamer.hop_length
    enc, dec = streamer.init_encoder_state(), streamer.init_decoder_state()
    codes, out = [], []
    for f in range(audio.shape[1] // hop):
        enc, c = streamer.encode_step(enc, audio[:, f * hop:(f + 1) * hop])
        dec, a = streamer.decode_step(dec, c)
        codes.append(np.asarray(c))
        out.append(np.asarray(a))
    return np.concatenate(codes, axis=1), np.concatenate(out, axis=1)


def test_tiny_mimi_streams_like_offline():
    config = tiny_mimi_config()
    config.model.transformer_context = 6  # 24 transformer steps wrap the ring buffer 4 times
    model = build_codec(config)
    hop = hop_length(config)
    audio = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12 * hop)) * 0.3, jnp.float32)
    variables = strip_boxes(jax.jit(lambda k: model.init({"params": k, "vq": k}, audio[:1, :2 * hop]))(
        jax.random.PRNGKey(1)))
    latents = jax.jit(lambda v, a: model.apply(v, a, method=lambda m, x: m.encoder(x)))(
        variables, audio)
    variables["vq_stats"] = _random_codebooks(variables["vq_stats"], float(jnp.std(latents)),
                                              jax.random.PRNGKey(2))
    codes = np.asarray(jax.jit(lambda v, a: model.apply(v, a, method="encode"))(variables, audio))
    recon = np.asarray(jax.jit(lambda v, c: model.apply(v, c, method="decode"))(variables, codes))

    streamer = MimiStreamer(config, variables["params"], variables["vq_stats"], batch=2)
    got_codes, got_audio = _stream(streamer, audio)
    assert got_codes.shape == codes.shape == (2, 12, 4)
    np.testing.assert_array_equal(got_codes, codes)
    assert len(np.unique(codes)) > 30
    np.testing.assert_allclose(got_audio, recon, atol=1e-5 * np.abs(recon).max())
    # Each step is one compiled program, compiled once for all 12 frames.
    assert streamer._encode._cache_size() == 1 and streamer._decode._cache_size() == 1


def test_streaming_matches_transformers_mimi(tmp_path):
    """The imported reference weights, streamed: codes equal transformers' offline codes."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from mimi_reference import SMALL, make_reference, reference_audio, reference_codes

    from audiolm_jax.codec.mimi.importer import load_mimi_variables

    model = make_reference(str(tmp_path / "hf"), seed=0, **SMALL)
    config, params, vq_stats = load_mimi_variables(str(tmp_path / "hf" / "model.safetensors"), 4)
    streamer = MimiStreamer(config, params, vq_stats, batch=1)
    audio = (np.random.default_rng(1).standard_normal((1, 20 * 64)) * 0.3).astype(np.float32)
    codes, out = _stream(streamer, jnp.asarray(audio))
    want = reference_codes(model, audio, 4)
    np.testing.assert_array_equal(codes.transpose(0, 2, 1), want)
    want_audio = reference_audio(model, want)
    np.testing.assert_allclose(out, want_audio, atol=2e-5 * np.abs(want_audio).max())


def test_streamer_refuses_other_codecs():
    from audiolm_jax.codec.config import tiny_cnn_config

    with pytest.raises(ValueError, match="model.kind"):
        MimiStreamer(tiny_cnn_config(), {}, {})
