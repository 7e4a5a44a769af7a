"""``serve`` / ``chat``: a tiny Moshi workdir (random Kyutai-layout weights, a Mimi-like
16 kHz codec, a text tokenizer; the fixture of test_moshi_converse.py) behind Kyutai's
websocket protocol on 127.0.0.1: the handshake, a conversation through the ``chat`` client,
two at once, busy, protocol errors (the server goes on serving), bad queries, the token."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
sphn = pytest.importorskip("sphn")

import soundfile as sf  # noqa: E402

from audiolm_jax.serve import protocol  # noqa: E402
from audiolm_jax.serve.protocol import Kind, ProtocolError  # noqa: E402
from helpers import ServerThread  # noqa: E402

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def moshi_dir(tmp_path_factory):
    from helpers import tiny_moshi_workdir

    workdir, user, _ = tiny_moshi_workdir(tmp_path_factory.mktemp("serve"))
    return workdir, user


@pytest.fixture(scope="module")
def server(moshi_dir):
    from audiolm_jax.serve.server import SamplingOptions, ServeOptions, build_server

    # Hot text sampling (random weights then say many words); the sessions share its compile.
    options = ServeOptions(max_sessions=2, idle_timeout=5.0, auth_token=TOKEN,
                           sampling=SamplingOptions(text_temperature=2.0, text_top_k=0))
    t = ServerThread(build_server(moshi_dir[0], options))
    yield t
    t.stop()


def q(extra: str = "") -> str:
    return f"?token={TOKEN}" + (f"&{extra}" if extra else "")


async def _talk(url: str, sends=(), listen: float = 5.0):
    """Connects, sends raw messages after the first reply, -> [(kind, payload)] received until
    the server closes (or ``listen`` s)."""
    got = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            first = await ws.receive(timeout=60)
            if first.type == aiohttp.WSMsgType.BINARY:
                got.append((first.data[0], first.data[1:]))
            for m in sends:
                await (ws.send_str(m) if isinstance(m, str) else ws.send_bytes(m))
            end = time.monotonic() + listen
            while time.monotonic() < end:
                try:
                    msg = await ws.receive(timeout=end - time.monotonic())
                except asyncio.TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                got.append((msg.data[0], msg.data[1:]))
    return got


def talk(url, sends=(), listen=5.0):
    return asyncio.run(_talk(url, sends, listen))


def test_protocol_parse_reasons():
    assert protocol.parse(protocol.handshake()).kind == Kind.HANDSHAKE
    assert protocol.parse(protocol.metadata({"a": 1})).json() == {"a": 1}
    for data, needle in ((b"", "empty"), (b"\x09x", "unknown message kind 0x09"),
                         (b"\x03\x07", "control code"), (b"\x04[1]", "not an object"),
                         (b"\x02\xff", "not UTF-8"), (b"\x01", "without Ogg-Opus"),
                         ("\x01", "binary"), (b"\x01" + b"x" * 100, "over the 50-byte")):
        with pytest.raises(ProtocolError, match=needle):
            protocol.parse(data, max_bytes=50)
    with pytest.raises(ProtocolError, match="may not send text"):
        protocol.parse_from_client(protocol.text("hi"))


def test_handshake_then_metadata(server):
    got = talk(server.url(q()), listen=0.5)
    assert got[0] == (Kind.HANDSHAKE, b"\0" * 8)
    meta = json.loads(got[1][1])
    assert got[1][0] == Kind.METADATA and meta["sample_rate"] == 24000
    assert meta["delay_frames"] == 1 and meta["codec_sample_rate"] == 16000


def test_chat_fast_writes_the_reply_and_text(server, moshi_dir, tmp_path):
    from audiolm_jax.serve.client import chat

    server.wait_idle()
    out, text = str(tmp_path / "reply.wav"), str(tmp_path / "reply.txt")
    r = chat(server.url(q("seed=3")), moshi_dir[1], out, transcript=text, fast=True)
    wav, sr = sf.read(out)
    assert sr == 24000 and wav.shape == (48000,)  # 2 s, at the wire's rate
    assert np.abs(wav).max() > 0
    assert r["text"] and open(text).read().splitlines()[0] == r["text"]
    assert r["delay_frames"] == 1 and r["latency_median_ms"] is not None


def test_real_time_chat_measures_latency(server):
    """80 ms every 80 ms: each chunk's reply frame comes back within a few frames."""
    from audiolm_jax.serve.client import chat_async

    server.wait_idle()
    audio = np.sin(np.arange(24000) * 0.02).astype(np.float32) * 0.3
    r = asyncio.run(chat_async(server.url(q()), audio, fast=False))
    assert len(r["reply"]) == 24000 and len(r["latency_ms"]) == 12  # 13 chunks, delay 1
    assert 0 < r["latency_median_ms"] <= r["latency_p95_ms"] < 2000, r["latency_ms"]


def test_two_sessions_at_once_each_as_if_alone(server):
    """Two sessions share each batched step, yet each reply is bit-for-bit the one its seed
    gives alone (slots are independent), and other seeds give other voices."""
    from audiolm_jax.serve.client import chat_async

    server.wait_idle()
    audio = np.sin(np.arange(24000) * 0.02).astype(np.float32) * 0.3
    alone = asyncio.run(chat_async(server.url(q("seed=1")), audio, fast=True))
    server.wait_idle()

    async def both():
        return await asyncio.gather(*(chat_async(server.url(q(f"seed={s}")), audio, fast=True)
                                      for s in (1, 2)))

    a, b = asyncio.run(both())
    assert len(a["reply"]) == len(b["reply"]) == 24000
    assert a["metadata"]["session"] != b["metadata"]["session"]
    np.testing.assert_array_equal(a["reply"], alone["reply"])
    assert a["text"] == alone["text"]
    assert not np.array_equal(a["reply"], b["reply"])  # other seeds, other voices
    # Sessions came and went with other seeds and settings: still the warm-up's one program.
    assert server.server.engine._frame._cache_size() == 1


def test_busy_when_full(server):
    server.wait_idle()

    async def three():
        async with aiohttp.ClientSession() as http:
            a = await http.ws_connect(server.url(q()))
            b = await http.ws_connect(server.url(q()))
            for ws in (a, b):
                assert (await ws.receive(timeout=30)).data[0] == Kind.HANDSHAKE
            c = await http.ws_connect(server.url(q()))
            refused = await c.receive(timeout=30)
            closed = await c.receive(timeout=30)
            await a.close(), await b.close()
            return refused, closed

    refused, closed = asyncio.run(three())
    assert refused.data[0] == Kind.ERROR and b"busy" in refused.data
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.parametrize("send, needle", [
    (b"\x01not an ogg page at all", b"not Ogg-Opus"),
    (b"\x01OggS" + bytes(range(256)) * 4, b"not Ogg-Opus"),
    (b"\x42", b"unknown message kind 0x42"),
    (b"", b"empty message"),
    (b"\x01" + bytes(protocol.MAX_MESSAGE_BYTES + 100), b"over the 1048576-byte limit"),
    (protocol.text("hello"), b"may not send text"),
    ("a text frame", b"binary"),
], ids=["garbage", "garbage-after-OggS", "unknown-kind", "empty", "oversize", "client-text",
        "websocket-text-frame"])
def test_bad_messages_get_an_error_and_the_server_goes_on(server, send, needle):
    server.wait_idle()
    got = talk(server.url(q()), [send])
    errors = [p for k, p in got if k == Kind.ERROR]
    assert len(errors) == 1 and needle in errors[0], got
    server.wait_idle()
    assert talk(server.url(q()), listen=0.2)[0][0] == Kind.HANDSHAKE  # still serving


@pytest.mark.parametrize("query, needle", [
    ("temperature=hot", b"not a number"), ("top_k=-1", b"top_k"),
    ("text_temperature=nan", b"finite"), ("seed=1.5", b"not an integer"),
], ids=["temperature", "top_k", "text_temperature", "seed"])
def test_bad_query_values(server, query, needle):
    server.wait_idle()
    got = talk(server.url(q(query)), listen=1.0)
    assert got[0][0] == Kind.ERROR and needle in got[0][1], got


def test_token_is_required(server):
    async def connect(url):
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(url)
            return e.value.status

    assert asyncio.run(connect(server.url())) == 401
    assert asyncio.run(connect(server.url("?token=wrong"))) == 401


def test_idle_session_is_closed(server):
    server.wait_idle()
    start = time.monotonic()
    got = talk(server.url(q()), listen=15.0)
    assert any(k == Kind.ERROR and b"idle" in p for k, p in got), got
    assert 4.5 < time.monotonic() - start < 12


def test_engine_slot_equals_the_per_session_pipeline(moshi_dir):
    """The engine's batched frame (vmapped Mimi encode -> slot step -> Mimi decode), greedy,
    in slot 1 of 2 while slot 0 hears noise and pauses: the text tokens of the batch-1
    pipeline ``converse`` runs (MimiStreamer + MoshiGenerator), and its audio."""
    from audiolm_jax.codec.mimi.streaming import MimiStreamer
    from audiolm_jax.moshi.generate import MoshiGenerator, Sampling
    from audiolm_jax.moshi.run import load_moshi
    from audiolm_jax.serve.engine import MoshiEngine

    moshi = load_moshi(moshi_dir[0])
    engine = MoshiEngine(moshi, slots=2)
    codec = moshi.codec
    hop, n = engine.hop, 12
    rng = np.random.default_rng(0)
    user = (0.3 * np.sin(np.arange(n * hop) * 0.05)).astype(np.float32).reshape(n, hop)
    engine.join(0, Sampling(True, 2.0, 0, 2.0, 0), seed=5)
    engine.join(1, Sampling(sampling=False))
    got = []
    for t in range(n):
        audio = np.stack([rng.normal(0, 0.3, hop).astype(np.float32), user[t]])
        text, pcm, valid = engine.step(audio, np.array([t % 3 != 1, True]))
        if valid[1]:
            got.append((int(text[1]), pcm[1]))

    streamer = MimiStreamer(codec.config, codec.params, codec.vq_stats, batch=1)
    enc, dec = streamer.init_encoder_state(), streamer.init_decoder_state()
    gen = MoshiGenerator(moshi.model_config, moshi.params)
    want = []
    for t in range(n):
        enc, codes = streamer.encode_step(enc, user[t][None])
        out = gen.step(np.asarray(codes)[:, 0, :engine.user_levels, None])
        if out is not None:
            dec, pcm = streamer.decode_step(dec, np.asarray(out)[:, 1:, 0][:, None, :])
            want.append((int(out[0, 0, 0]), np.asarray(pcm)[0]))
    assert len(got) == len(want) == n - engine.delay
    assert [t for t, _ in got] == [t for t, _ in want]
    np.testing.assert_allclose(np.stack([p for _, p in got]), np.stack([p for _, p in want]),
                               atol=1e-5)


def test_query_takes_kyutai_web_client_names():
    from audiolm_jax.serve.server import SamplingOptions, sampling_from_query

    got = sampling_from_query({"audio_temperature": "0.5", "audio_topk": "7", "text_topk": "3",
                               "audio_seed": "9", "pad_mult": "0"}, SamplingOptions())
    assert (got.temperature, got.top_k, got.text_top_k, got.seed) == (0.5, 7, 3, 9)
    with pytest.raises(ValueError, match="audio_topk='x'"):
        sampling_from_query({"audio_topk": "x"}, SamplingOptions())


def test_only_this_servers_page_may_open_the_websocket(server):
    """A page from another site (its Origin header) gets 403 and a logged reason; the server's
    own page and clients without an Origin (scripts) are served."""
    port = server.port

    async def connect(origin):
        headers = {"Origin": origin} if origin else {}
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(server.url(q()), headers=headers) as ws:
                    return (await ws.receive(timeout=30)).data[0]
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    server.wait_idle()
    assert asyncio.run(connect("https://evil.example")) == 403
    assert asyncio.run(connect(f"http://127.0.0.1:{port}")) == Kind.HANDSHAKE
    server.wait_idle()
    assert asyncio.run(connect(None)) == Kind.HANDSHAKE


def test_allowed_origins_option(moshi_dir):
    from types import SimpleNamespace

    from audiolm_jax.serve.server import MoshiServer, ServeOptions

    def allowed(origins, origin):
        srv = MoshiServer.__new__(MoshiServer)
        srv.options = ServeOptions(allowed_origins=origins)
        return srv._origin_allowed(SimpleNamespace(headers={"Origin": origin},
                                                   host="127.0.0.1:8998"))

    assert allowed((), "http://127.0.0.1:8998") and not allowed((), "http://other:8998")
    assert allowed(("https://client.example",), "https://client.example")
    assert allowed(("*",), "https://anything.example")
