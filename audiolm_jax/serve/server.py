"""``audiolm-jax serve``: a Moshi workdir behind Kyutai's websocket protocol (``/api/chat``).

Every connection is a session with its own generator (batch 1: the compiled step is shared,
as the config is) and its own Mimi streaming encoder/decoder states. One frame loop owns the
model: every 80 ms it steps each active session once (Mimi encode -> ``generator.step`` ->
Mimi decode, :mod:`audiolm_jax.moshi.converse`'s per-frame pipeline) on a single compute
thread, so steps are serialized, never concurrent, and the event loop stays free for the
sockets. A session whose client sent more than one frame (``chat --fast``, or network
jitter) catches up within the same tick while the tick has time left.

Input timing: nothing is stepped before a session's first audio; after it, a session with no
buffered audio for ``SILENCE_GRACE_S`` hears silence (the conversation's clock runs on), and
one that sends nothing for ``idle_timeout`` is told so (0x05) and closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import itertools
import logging
import math
import os
import time
from typing import Any, Optional

import numpy as np

from audiolm_jax.serve import protocol
from audiolm_jax.serve.opus import OPUS_FRAME, OPUS_RATE, OpusDecoder, OpusEncoder
from audiolm_jax.serve.protocol import Kind, ProtocolError

log = logging.getLogger("audiolm_jax.serve")

SILENCE_GRACE_S = 0.24  # three frames of jitter before the server fills in silence
MAX_OUTBOX = 250  # messages queued for a client that does not read (~10 s of replies)
CATCH_UP_SHARE = 0.75  # extra catch-up rounds only while the tick has used less than this
UNBOUNDED_CONTEXT_FRAMES = 3000  # a model without a sliding window: 4 minutes per session
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# What the page may fetch: the files present at start-up, by bare name (no paths, no "..").
STATIC_FILES = ({n: os.path.join(STATIC_DIR, n) for n in sorted(os.listdir(STATIC_DIR))
                 if os.path.isfile(os.path.join(STATIC_DIR, n))}
                if os.path.isdir(STATIC_DIR) else {})


# ----------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    sampling: bool = True
    temperature: float = 0.8
    top_k: int = 250
    text_temperature: float = 0.7
    text_top_k: int = 25
    seed: int = 0


_QUERY_FIELDS = {"temperature": float, "top_k": int, "text_temperature": float,
                 "text_top_k": int, "seed": int}


def sampling_from_query(query, defaults: SamplingOptions) -> SamplingOptions:
    """URL query (``?temperature=&top_k=&text_temperature=&text_top_k=&seed=``) over the
    server's defaults; a bad value -> ValueError with the reason. Other keys are ignored
    (Kyutai's web client sends its own, e.g. ``audio_topk``)."""
    changes = {}
    for name, kind in _QUERY_FIELDS.items():
        if name not in query:
            continue
        raw = query.get(name)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ValueError(f"query {name}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not (math.isfinite(value) and 0 <= value <= 100):
            raise ValueError(f"query {name}={raw!r} must be a finite number in [0, 100] (0 = greedy)")
        if name.endswith("top_k") and not 0 <= value <= 1_000_000:
            raise ValueError(f"query {name}={raw!r} must be in [0, 1000000] (0 = no cut)")
        if name == "seed" and not 0 <= value < 2 ** 32:
            raise ValueError(f"query seed={raw!r} must be in [0, 2**32)")
        changes[name] = value
    return dataclasses.replace(defaults, **changes)


@dataclasses.dataclass
class ServeOptions:
    max_sessions: int = 4
    idle_timeout: float = 30.0
    auth_token: Optional[str] = None
    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES
    sampling: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)

    def __post_init__(self):
        if self.max_sessions < 1:
            raise ValueError(f"--max_sessions={self.max_sessions} must be at least 1")
        if not self.idle_timeout > 0:
            raise ValueError(f"--idle_timeout={self.idle_timeout} must be positive (seconds)")


# ----------------------------------------------------------------------------- the model
class SessionModel:
    """One conversation's model state: generator (KV ring, token ring, PRNG) and Mimi's
    streaming encoder and decoder states. Touched only on the compute thread."""

    def __init__(self, generator, enc_state, dec_state, encoder: OpusEncoder):
        self.generator, self.enc_state, self.dec_state = generator, enc_state, dec_state
        self.opus_out = encoder
        self.frames = 0


class MoshiEngine:
    """The shared part: weights (converted once), Mimi streamer, tokenizer. ``step`` runs one
    frame of one session; call it from one thread only."""

    def __init__(self, moshi):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        from audiolm_jax.codec.mimi.streaming import MimiStreamer

        self.moshi = moshi
        codec = moshi.codec
        if codec is None:
            raise ValueError(f"--workdir {moshi.path!r} names no codec (tokens.json 'codec'): "
                             "serve needs the Mimi its codes come from")
        if getattr(codec.config.model, "kind", None) != "mimi":
            raise ValueError("serve needs a streaming Mimi codec; this workdir's codec is "
                             f"{getattr(codec.config.model, 'kind', None)!r}")
        cfg = self.config = moshi.model_config
        self.user_levels, self.model_levels = cfg.n_q - cfg.dep_q, cfg.dep_q
        if max(self.user_levels, self.model_levels) > codec.num_levels:
            raise ValueError(f"the Moshi reads {max(self.user_levels, self.model_levels)} "
                             f"codebooks per stream; its codec has {codec.num_levels}")
        self.sample_rate, self.hop = int(codec.sample_rate), int(codec.hop_length)
        self.frame_rate = float(codec.frame_rate)
        self.delay = int(max(cfg.delays))
        self.max_steps = None if cfg.context else UNBOUNDED_CONTEXT_FRAMES
        # Once for all sessions (a generator would otherwise convert its own copy).
        self.params = jax.tree.map(jnp.asarray, nn.meta.unbox(moshi.params))
        self.streamer = MimiStreamer(codec.config, codec.params, codec.vq_stats, batch=1)
        self.tokenizer = moshi.text_tokenizer
        from audiolm_jax.text.stream import TEXT_EPAD_ID, TEXT_PAD_ID

        self._silent_ids = {TEXT_PAD_ID, TEXT_EPAD_ID}
        if self.tokenizer is not None:
            self._silent_ids |= set(self.tokenizer.control_ids)

    def new_session(self, sampling: SamplingOptions) -> SessionModel:
        from audiolm_jax.moshi.generate import MoshiGenerator

        gen = MoshiGenerator(self.config, self.params, batch_size=1, sampling=sampling.sampling,
                             temperature=sampling.temperature, top_k=sampling.top_k,
                             text_temperature=sampling.text_temperature,
                             text_top_k=sampling.text_top_k, seed=sampling.seed,
                             max_steps=self.max_steps)
        return SessionModel(gen, self.streamer.init_encoder_state(),
                            self.streamer.init_decoder_state(), OpusEncoder(self.sample_rate))

    def step(self, sm: SessionModel, frame: np.ndarray) -> tuple[bytes, Optional[str]]:
        """One frame of user audio (``hop`` samples at the codec's rate) -> (Ogg-Opus pages of
        the model's reply frame, maybe empty; its text piece or None)."""
        sm.enc_state, codes = self.streamer.encode_step(sm.enc_state, frame[None])
        user = np.asarray(codes)[0, 0, :self.user_levels].astype(np.int32)
        out = sm.generator.step(user[None, :, None])
        sm.frames += 1
        if out is None:  # the first max(delays) frames
            return b"", None
        out = np.asarray(out)
        sm.dec_state, pcm = self.streamer.decode_step(sm.dec_state, out[0, 1:, 0][None, None, :])
        pages = sm.opus_out(np.asarray(pcm, np.float32)[0])
        return pages, self.piece(int(out[0, 0, 0]))

    def piece(self, token: int) -> Optional[str]:
        if self.tokenizer is None or token in self._silent_ids:
            return None
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")

    def warmup(self, sampling: SamplingOptions) -> float:
        """Compiles the step, encoder and decoder before the first client (s taken)."""
        t0 = time.perf_counter()
        sm = self.new_session(sampling)
        for _ in range(self.delay + 2):
            self.step(sm, np.zeros(self.hop, np.float32))
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------- sessions
_CLOSE = object()


class Session:
    """One websocket conversation, event-loop side: input buffer, outbox, timers."""

    def __init__(self, sid: int, ws, model: SessionModel, hop: int, sample_rate: int,
                 peer: str):
        self.id, self.ws, self.model, self.hop, self.peer = sid, ws, model, hop, peer
        self.opus_in = OpusDecoder(sample_rate)
        self.pending: list[np.ndarray] = []
        self.buffered = 0
        self.started = False  # first audio received
        self.last_recv = time.monotonic()
        self.closing = False
        self.outbox: asyncio.Queue = asyncio.Queue()

    def push_audio(self, pcm: np.ndarray) -> None:
        if len(pcm):  # (header pages carry none: the clock starts with the first sound)
            self.pending.append(pcm)
            self.buffered += len(pcm)
            self.started = True

    def frames_buffered(self) -> int:
        return self.buffered // self.hop

    def take_frame(self) -> np.ndarray:
        buf = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        frame, rest = buf[:self.hop], buf[self.hop:]
        self.pending = [rest] if len(rest) else []
        self.buffered = len(rest)
        return frame

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:
            self.fail(f"client reads too slowly ({MAX_OUTBOX} messages queued)")
            return
        self.outbox.put_nowait(data)

    def fail(self, reason: str, level: int = logging.WARNING) -> None:
        """Logs the one-line reason, sends it as 0x05 and closes; the session stops stepping."""
        if self.closing:
            return
        log.log(level, "session %d (%s): %s", self.id, self.peer, protocol.one_line(reason))
        self.outbox.put_nowait(protocol.error(reason))
        self.close()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait(_CLOSE)

    async def sender(self) -> None:
        """Drains the outbox into the socket (a slow client never blocks the frame loop)."""
        while True:
            item = await self.outbox.get()
            if item is _CLOSE:
                break
            try:
                await self.ws.send_bytes(item)
            except (ConnectionError, RuntimeError):  # the client went away
                self.closing = True
                break
        if not self.ws.closed:
            await self.ws.close()


# ----------------------------------------------------------------------------- server
class MoshiServer:
    def __init__(self, engine: MoshiEngine, options: ServeOptions):
        self.engine, self.options = engine, options
        self.sessions: dict[int, Session] = {}
        self._setting_up = 0
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moshi-step")
        self._loop_task: Optional[asyncio.Task] = None
        self.frame_s = engine.hop / engine.sample_rate
        self.slow_frames = 0

    # -------------------------------------------------------------- aiohttp
    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/api/chat", self.handle_chat)
        app.router.add_get("/", self.handle_static)
        app.router.add_get("/static/{name}", self.handle_static)
        app.on_startup.append(self._start_loop)
        app.on_cleanup.append(self._stop_loop)
        return app

    async def _start_loop(self, _app) -> None:
        self._loop_task = asyncio.create_task(self._frame_loop())

    async def _stop_loop(self, _app) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        for s in list(self.sessions.values()):
            s.close()
        self._executor.shutdown(wait=False)

    async def _compute(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _authorized(self, request) -> bool:
        token = self.options.auth_token
        if not token:
            return True
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    async def handle_static(self, request):
        """The browser page: ``/`` is ``static/index.html``; ``/static/NAME`` one file of the
        package's own ``static`` folder (a bare file name: nothing outside it is reachable)."""
        from aiohttp import web

        name = request.match_info.get("name", "index.html")
        path = STATIC_FILES.get(name)
        if path is None:
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def handle_chat(self, request):
        from aiohttp import WSMsgType, web

        peer = request.remote or "?"
        if not self._authorized(request):
            log.warning("refused %s: missing or wrong token", peer)
            raise web.HTTPUnauthorized(text="missing or wrong ?token=")
        # aiohttp itself drops (close 1009, no reason) messages over 4x our limit; between the
        # two the client gets a 0x05 that says why.
        ws = web.WebSocketResponse(max_msg_size=4 * self.options.max_message_bytes)
        await ws.prepare(request)
        if len(self.sessions) + self._setting_up >= self.options.max_sessions:
            log.warning("refused %s: busy (%d sessions)", peer, self.options.max_sessions)
            await ws.send_bytes(protocol.error(
                f"busy: the server already holds its {self.options.max_sessions} sessions"))
            await ws.close()
            return ws
        try:
            sampling = sampling_from_query(request.query, self.options.sampling)
        except ValueError as e:
            log.warning("refused %s: %s", peer, e)
            await ws.send_bytes(protocol.error(str(e)))
            await ws.close()
            return ws
        self._setting_up += 1
        try:  # on the compute thread: a new sampling setting compiles its step there
            model = await self._compute(self.engine.new_session, sampling)
        finally:
            self._setting_up -= 1
        sid = next(self._ids)
        session = Session(sid, ws, model, self.engine.hop, self.engine.sample_rate, peer)
        self.sessions[sid] = session
        sender = asyncio.create_task(session.sender())
        log.info("session %d (%s) open: %s", sid, peer, dataclasses.asdict(sampling))
        session.send(protocol.handshake())
        session.send(protocol.metadata({
            "sample_rate": OPUS_RATE, "frame_size": OPUS_FRAME, "frame_rate": self.engine.frame_rate,
            "delay_frames": self.engine.delay, "codec_sample_rate": self.engine.sample_rate,
            "session": sid, "sampling": dataclasses.asdict(sampling)}))
        try:
            async for msg in ws:
                if session.closing:
                    break
                if msg.type == WSMsgType.BINARY:
                    self._receive(session, msg.data)
                elif msg.type == WSMsgType.TEXT:
                    session.fail("text websocket frame: the protocol is binary (kind byte + payload)")
                elif msg.type == WSMsgType.ERROR:
                    session.fail(f"websocket error: {ws.exception()}")
                    break
        finally:
            session.close()
            self.sessions.pop(sid, None)
            await sender
            log.info("session %d (%s) closed after %d frames", sid, peer, model.frames)
        return ws

    def _receive(self, session: Session, data: bytes) -> None:
        try:
            msg = protocol.parse_from_client(data, self.options.max_message_bytes)
            session.last_recv = time.monotonic()
            if msg.kind == Kind.AUDIO:
                session.push_audio(session.opus_in(msg.payload))
            elif msg.kind == Kind.CONTROL:
                log.info("session %d: control %s (ignored)", session.id,
                         protocol.Control(msg.payload[0]).name)
            # METADATA and PING only keep the session alive.
        except ProtocolError as e:
            session.fail(str(e))

    # -------------------------------------------------------------- the frame loop
    def _run_round(self, jobs):
        """Compute thread: one step for each (session, frame)."""
        results = []
        for session, frame in jobs:
            try:
                results.append((session, *self.engine.step(session.model, frame), None))
            except Exception as e:  # noqa: BLE001 - one broken session must not stop the rest
                log.exception("session %d: step failed", session.id)
                results.append((session, b"", None, f"internal error: {type(e).__name__}: {e}"))
        return results

    async def _round(self, tick_start: float, first: bool) -> int:
        now = time.monotonic()
        jobs = []
        for s in list(self.sessions.values()):
            if s.closing:
                continue
            if now - s.last_recv > self.options.idle_timeout:
                s.fail(f"idle: nothing received for {self.options.idle_timeout:g} s", logging.INFO)
                continue
            if s.frames_buffered():
                jobs.append((s, s.take_frame()))
            elif first and s.started and now - s.last_recv > SILENCE_GRACE_S:
                jobs.append((s, np.zeros(self.engine.hop, np.float32)))
        if not jobs:
            return 0
        t0 = time.perf_counter()
        results = await self._compute(self._run_round, jobs)
        took = time.perf_counter() - t0
        if took > self.frame_s:
            self.slow_frames += 1
            log.warning("frame took %.1f ms for %d session(s) (budget %.0f ms)", 1000 * took,
                        len(jobs), 1000 * self.frame_s)
        for s, pages, piece, err in results:
            if err:
                s.fail(err, logging.ERROR)
                continue
            if pages:
                s.send(protocol.audio(pages))
            if piece:
                s.send(protocol.text(piece))
        return len(jobs)

    async def _frame_loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tick_start = time.monotonic()
            try:
                stepped = await self._round(tick_start, first=True)
                # Catch-up: sessions with more buffered frames step again while time is left.
                while stepped and time.monotonic() - tick_start < CATCH_UP_SHARE * self.frame_s:
                    stepped = await self._round(tick_start, first=False)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop serves everyone: log and go on
                log.exception("frame loop error")
            next_tick += self.frame_s
            if time.monotonic() - next_tick > self.frame_s:  # far behind: do not burst
                next_tick = time.monotonic()


# ----------------------------------------------------------------------------- entry points
def build_server(workdir: str, options: ServeOptions, moshi=None) -> MoshiServer:
    """Loads the workdir, compiles and warms the step, -> a server ready for its first client."""
    from audiolm_jax.moshi.run import load_moshi

    engine = MoshiEngine(moshi or load_moshi(workdir))
    took = engine.warmup(options.sampling)
    log.info("model ready (warm-up %.1f s): %d Hz codec, %d-sample frames, delay %d frames",
             took, engine.sample_rate, engine.hop, engine.delay)
    return MoshiServer(engine, options)


async def start(server: MoshiServer, host: str = "127.0.0.1", port: int = 0,
                ssl_context=None) -> tuple[Any, int]:
    """Starts listening; -> (aiohttp AppRunner, the bound port). ``port=0``: a free one."""
    from aiohttp import web

    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, bound


def ssl_context_from(cert: Optional[str], key: Optional[str]):
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("--ssl_cert and --ssl_key go together")
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def serve(workdir: str, host: str = "127.0.0.1", port: int = 8998, *,
          options: Optional[ServeOptions] = None, ssl_cert: Optional[str] = None,
          ssl_key: Optional[str] = None) -> None:
    """Runs the server until interrupted (the CLI's ``serve``)."""
    options = options or ServeOptions()
    ssl_context = ssl_context_from(ssl_cert, ssl_key)
    server = build_server(workdir, options)

    async def main():
        runner, bound = await start(server, host, port, ssl_context)
        scheme = "wss" if ssl_context else "ws"
        log.info("serving %s://%s:%d/api/chat (max %d sessions)", scheme, host, bound,
                 options.max_sessions)
        print(f"serving {scheme}://{host}:{bound}/api/chat", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
