"""``serve`` with this library's own duplex LM: a two-stream depth-layout LM (trained two steps
on a tiny random Mimi's codes) behind the same protocol as a Moshi. The engine's batched frame
equals the batch-1 streaming pipeline, and a client gets the model's voice and no text."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("aiohttp")
pytest.importorskip("sphn")

from helpers import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def duplex_dir(tmp_path_factory):
    from helpers import tiny_duplex_lm_workdir

    return tiny_duplex_lm_workdir(tmp_path_factory.mktemp("duplex"))


def test_engine_slot_equals_the_streaming_pipeline(duplex_dir):
    """Greedy, in slot 1 of 2 while slot 0 hears noise, samples hot and pauses: the audio of
    the batch-1 pipeline (Mimi's streaming encoder -> generate_stream -> streaming decoder)."""
    from audiolm_jax.codec.mimi.streaming import MimiStreamer
    from audiolm_jax.lm.depth_stream import generate_stream
    from audiolm_jax.moshi.generate import Sampling
    from audiolm_jax.serve.engine import DepthLMEngine
    from audiolm_jax.lm.run import LoadedLM

    engine = DepthLMEngine(LoadedLM(duplex_dir[0]), slots=2)
    assert engine.user_levels == engine.model_levels == 2 and engine.delay == 1
    assert engine.max_steps == 48 and engine.piece(3) is None
    hop, n = engine.hop, 10
    rng = np.random.default_rng(0)
    user = (0.3 * np.sin(np.arange(n * hop) * 0.05)).astype(np.float32).reshape(n, hop)
    engine.join(0, Sampling(True, 2.0, 0), seed=5)
    engine.join(1, Sampling(sampling=False))
    got = []
    for t in range(n):
        audio = np.stack([rng.normal(0, 0.3, hop).astype(np.float32), user[t]])
        _, pcm, valid = engine.step(audio, np.array([t % 3 != 1, True]))
        if valid[1]:
            got.append(pcm[1])

    codec = engine.codec
    streamer = MimiStreamer(codec.config, codec.params, codec.vq_stats, batch=1)
    enc, dec = streamer.init_encoder_state(), streamer.init_decoder_state()
    codes = []
    for t in range(n):
        enc, c = streamer.encode_step(enc, user[t][None])
        codes.append(np.asarray(c)[0, 0, :2])
    frames = generate_stream(engine.spec, engine.params, np.stack(codes, -1)[None],
                             engine.silence, temperature=0.0)[0]  # [K, n - 1]
    want = []
    for f in range(frames.shape[1]):
        dec, pcm = streamer.decode_step(dec, frames[None, None, :, f])
        want.append(np.asarray(pcm)[0])
    assert len(got) == len(want) == n - 1
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=1e-5)


def test_chat_with_a_duplex_lm(duplex_dir, tmp_path):
    from audiolm_jax.serve.client import chat
    from audiolm_jax.serve.server import ServeOptions, build_server, load_engine

    server = ServerThread(build_server(duplex_dir[0], ServeOptions(max_sessions=1)))
    try:
        out, text = str(tmp_path / "reply.wav"), str(tmp_path / "reply.txt")
        r = chat(server.url("?seed=2&temperature=1.2"), duplex_dir[1], out, transcript=text,
                 fast=True)
        wav, sr = sf.read(out)
        assert sr == 24000 and wav.shape == (36000,)  # 1.5 s at the wire's rate
        assert np.abs(wav).max() > 0
        assert r["text"] == "" and r["delay_frames"] == 1
    finally:
        server.stop()
    from audiolm_jax.workdir import read_tokens_metadata

    codec_dir = read_tokens_metadata(duplex_dir[0])["codec"]["workdir"]
    with pytest.raises(ValueError, match="holds a codec; serve takes a Moshi or a two-stream"):
        load_engine(codec_dir, 1)
