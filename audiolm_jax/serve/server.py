"""``audiolm-jax serve``: a Moshi workdir, or a two-stream depth LM of this library with its
streaming Mimi, behind Kyutai's websocket protocol (``/api/chat``).

Every connection is a session that owns one slot of the engine's batch
(:mod:`audiolm_jax.serve.engine`: per slot, a generator state and Mimi's streaming states;
its caches reset when it joins, and the slot is freed when it leaves). One frame loop owns
the model: every 80 ms it runs one compiled step for all sessions at once (Mimi encode ->
LM step -> Mimi decode) on a single compute thread, so the event loop stays free for the
sockets, and warns with the measured time when a step takes longer than a frame. A session
whose client sent more than one frame (``chat --fast``, or network jitter) catches up in
extra steps within the same tick while the tick has time left; the others stand still then.

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
from audiolm_jax.serve.engine import DepthLMEngine, MoshiEngine
from audiolm_jax.serve.opus import OPUS_FRAME, OPUS_RATE, OpusDecoder, OpusEncoder
from audiolm_jax.serve.protocol import Kind, ProtocolError

log = logging.getLogger("audiolm_jax.serve")

SILENCE_GRACE_S = 0.24  # three frames of jitter before the server fills in silence
MAX_OUTBOX = 250  # messages queued for a client that does not read (~10 s of replies)
# asyncio accepts up to ``backlog`` connections in one go (one callback): a burst of 100
# connections then held the event loop, and every session's audio, for ~0.4 s.
ACCEPT_BATCH = 16
MAX_BUFFERED_S = 60.0  # audio a client may send ahead of the conversation (``chat --fast``)
CATCH_UP_SHARE = 0.75  # extra catch-up rounds only while the tick has used less than this
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
# The names Kyutai's web client sends for the same settings (its other keys are ignored).
_QUERY_ALIASES = {"audio_temperature": "temperature", "audio_topk": "top_k",
                  "text_topk": "text_top_k", "audio_seed": "seed"}


def sampling_from_query(query, defaults: SamplingOptions) -> SamplingOptions:
    """URL query (``?temperature=&top_k=&text_temperature=&text_top_k=&seed=``) over the
    server's defaults; a bad value -> ValueError with the reason. Kyutai's web client's names
    (``audio_temperature``, ``audio_topk``, ``text_topk``, ``audio_seed``) are taken too;
    other keys are ignored."""
    changes = {}
    for name, kind in _QUERY_FIELDS.items():
        given = [n for n in (name, *(a for a, t in _QUERY_ALIASES.items() if t == name))
                 if n in query]
        if not given:
            continue
        label = given[0]
        raw = query.get(label)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ValueError(f"query {label}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not (math.isfinite(value) and 0 <= value <= 100):
            raise ValueError(f"query {label}={raw!r} must be a finite number in [0, 100] (0 = greedy)")
        if name.endswith("top_k") and not 0 <= value <= 1_000_000:
            raise ValueError(f"query {label}={raw!r} must be in [0, 1000000] (0 = no cut)")
        if name == "seed" and not 0 <= value < 2 ** 32:
            raise ValueError(f"query {label}={raw!r} must be in [0, 2**32)")
        changes[name] = value
    return dataclasses.replace(defaults, **changes)


@dataclasses.dataclass
class ServeOptions:
    max_sessions: int = 4
    idle_timeout: float = 30.0
    auth_token: Optional[str] = None
    # Browsers send the page's origin with a websocket: by default only this server's own
    # page may open one (another site cannot talk to a local server behind the user's back).
    # Extra origins (e.g. a separately hosted Kyutai client), or "*" for any.
    allowed_origins: tuple = ()
    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES
    sampling: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)

    def __post_init__(self):
        if self.max_sessions < 1:
            raise ValueError(f"--max_sessions={self.max_sessions} must be at least 1")
        if not self.idle_timeout > 0:
            raise ValueError(f"--idle_timeout={self.idle_timeout} must be positive (seconds)")


# ----------------------------------------------------------------------------- the model
class SessionModel:
    """A session's share of the engine: its batch slot, its Opus encoder, frames stepped."""

    def __init__(self, slot: int, encoder: OpusEncoder):
        self.slot, self.opus_out, self.frames = slot, encoder, 0


def generator_sampling(options: SamplingOptions):
    from audiolm_jax.moshi.generate import Sampling

    return Sampling(options.sampling, options.temperature, options.top_k,
                    options.text_temperature, options.text_top_k)


# ----------------------------------------------------------------------------- sessions
_CLOSE = object()


class Session:
    """One websocket conversation, event-loop side: input buffer, outbox, timers."""

    # Messages other than audio (ping, control, metadata): a bucket of CONTROL_BURST that
    # refills at CONTROL_RATE per second; a client that empties it is refused (a flood).
    CONTROL_BURST = 50
    CONTROL_RATE = 10.0

    def __init__(self, sid: int, ws, model: SessionModel, hop: int, sample_rate: int,
                 peer: str):
        self.id, self.ws, self.model, self.hop, self.peer = sid, ws, model, hop, peer
        self.opus_in = OpusDecoder(sample_rate)
        self.pending: list[np.ndarray] = []
        self.buffered = 0
        self.started = False  # first audio received
        self.last_recv = time.monotonic()
        self.closing = False
        self.reason: Optional[str] = None  # why it ended, for the log's closing line
        self.outbox: asyncio.Queue = asyncio.Queue()
        self._allowance, self._allowance_at = float(self.CONTROL_BURST), self.last_recv

    def admit_control(self) -> bool:
        """Takes one non-audio message from the bucket; False once a flood has emptied it."""
        now = time.monotonic()
        self._allowance = min(float(self.CONTROL_BURST),
                              self._allowance + (now - self._allowance_at) * self.CONTROL_RATE)
        self._allowance_at = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

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
        self.reason = protocol.one_line(reason)
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
            except (ConnectionError, RuntimeError) as e:  # the client went away
                self.closing = True
                self.reason = self.reason or f"client went away ({type(e).__name__} on send)"
                break
        if not self.ws.closed:
            try:
                await self.ws.close()
            except (ConnectionError, RuntimeError):  # already gone
                pass

    @staticmethod
    async def refuse(ws, reason: str) -> None:
        """0x05 ``reason`` and a close, for a connection that gets no session (the reason is
        logged by the caller); a client that is already gone is no error."""
        try:
            await ws.send_bytes(protocol.error(reason))
            await ws.close()
        except (ConnectionError, RuntimeError):
            pass


# ----------------------------------------------------------------------------- server
class MoshiServer:
    def __init__(self, engine, options: ServeOptions):
        self.engine, self.options = engine, options
        self.sessions: dict[int, Session] = {}
        self._free_slots = list(range(engine.slots))[::-1]  # the engine's batch rows
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moshi-step")
        self._loop_task: Optional[asyncio.Task] = None
        self.frame_s = engine.hop / engine.sample_rate
        self.slow_frames = 0

    def slots_in_use(self) -> int:
        """Sessions holding a slot, including ones still joining (not yet in ``sessions``)."""
        return self.engine.slots - len(self._free_slots)

    # -------------------------------------------------------------- aiohttp
    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/api/chat", self.handle_chat)
        app.router.add_route("*", "/api/chat", self.handle_not_websocket)  # POST, PUT, ...
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

    def _origin_allowed(self, request) -> bool:
        """No Origin header (scripts, ``chat``), this server's own page, or a listed origin."""
        origin = request.headers.get("Origin")
        allowed = self.options.allowed_origins
        if origin is None or "*" in allowed or origin in allowed:
            return True
        from urllib.parse import urlsplit

        return urlsplit(origin).netloc.lower() == request.host.lower()

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

    async def handle_not_websocket(self, request):
        """Any method but GET on the websocket path: a logged one-line refusal (405)."""
        from aiohttp import web

        log.warning("refused %s: plain HTTP %s %s, not a websocket upgrade",
                    request.remote or "?", request.method, request.path)
        raise web.HTTPMethodNotAllowed(request.method, ["GET"],
                                       text="/api/chat speaks websocket only\n")

    async def handle_chat(self, request):
        from aiohttp import WSMsgType, web

        peer = request.remote or "?"
        if not self._origin_allowed(request):
            origin = protocol.one_line(request.headers.get("Origin", ""), 100)
            log.warning("refused %s: page origin %s is not this server's (--allowed_origins)",
                        peer, origin)
            raise web.HTTPForbidden(text=f"origin {origin} may not open this websocket\n")
        if not self._authorized(request):
            log.warning("refused %s: missing or wrong token", peer)
            raise web.HTTPUnauthorized(text="missing or wrong ?token=")
        # aiohttp itself drops (close 1009, no reason) messages over 4x our limit; between the
        # two the client gets a 0x05 that says why.
        ws = web.WebSocketResponse(max_msg_size=4 * self.options.max_message_bytes)
        if not ws.can_prepare(request).ok:
            log.warning("refused %s: plain HTTP %s %s, not a websocket upgrade", peer,
                        request.method, request.path)
            raise web.HTTPBadRequest(text="/api/chat speaks websocket only (Kyutai's Moshi "
                                     "protocol): connect with a websocket client\n")
        await ws.prepare(request)
        if not self._free_slots:
            log.warning("refused %s: busy (%d sessions)", peer, self.options.max_sessions)
            await Session.refuse(
                ws, f"busy: the server already holds its {self.options.max_sessions} sessions")
            return ws
        try:
            sampling = sampling_from_query(request.query, self.options.sampling)
        except ValueError as e:
            log.warning("refused %s: %s", peer, e)
            await Session.refuse(ws, str(e))
            return ws
        slot = self._free_slots.pop()
        try:  # on the compute thread, between frames (nothing compiles: one program per N)
            await self._compute(self.engine.join, slot, generator_sampling(sampling),
                                sampling.seed)
        except BaseException:
            self._free_slots.append(slot)
            raise
        model = SessionModel(slot, OpusEncoder(self.engine.sample_rate))
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
            while not session.closing:
                msg = await ws.receive()
                if msg.type == WSMsgType.BINARY:
                    self._receive(session, msg.data)
                elif msg.type == WSMsgType.TEXT:
                    session.fail("text websocket frame: the protocol is binary (kind byte + payload)")
                elif msg.type == WSMsgType.ERROR:  # e.g. over aiohttp's size limit (close 1009)
                    session.fail(f"websocket error: {msg.data or ws.exception()}")
                    break
                elif msg.type == WSMsgType.CLOSE:
                    session.reason = session.reason or f"client closed (code {msg.data})"
                    break
                elif msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
                    session.reason = session.reason or "connection lost (no close frame)"
                    break
        finally:
            session.close()
            self.sessions.pop(sid, None)
            self._free_slots.append(model.slot)
            await sender
            log.info("session %d (%s) closed after %d frames: %s", sid, peer, model.frames,
                     session.reason or "server closed")
        return ws

    def _receive(self, session: Session, data: bytes) -> None:
        try:
            msg = protocol.parse_from_client(data, self.options.max_message_bytes)
            session.last_recv = time.monotonic()
            if msg.kind == Kind.AUDIO:
                session.push_audio(session.opus_in(msg.payload))
                if session.buffered > MAX_BUFFERED_S * self.engine.sample_rate:
                    session.fail(f"audio flood: over {MAX_BUFFERED_S:g} s of audio sent ahead "
                                 "of the conversation")
            elif not session.admit_control():
                session.fail(f"{msg.kind.name.lower()} flood: over {session.CONTROL_BURST} "
                             f"non-audio messages at once (the limit is "
                             f"{session.CONTROL_RATE:g} a second)")
            elif msg.kind == Kind.CONTROL:
                log.info("session %d: control %s (ignored)", session.id,
                         protocol.Control(msg.payload[0]).name)
            # METADATA and PING only keep the session alive.
        except ProtocolError as e:
            session.fail(str(e))

    # -------------------------------------------------------------- the frame loop
    def _run_round(self, jobs):
        """Compute thread: one batched step for all sessions in ``jobs`` [(session, frame)];
        the other slots stand still. -> [(session, Ogg pages, text piece, error)]."""
        engine = self.engine
        audio = np.zeros((engine.slots, engine.hop), np.float32)
        active = np.zeros(engine.slots, bool)
        for session, frame in jobs:
            audio[session.model.slot], active[session.model.slot] = frame, True
        try:
            text, pcm, valid = engine.step(audio, active)
        except Exception as e:  # noqa: BLE001 - the sessions of this round end, the server goes on
            log.exception("step failed for %d session(s)", len(jobs))
            return [(s, b"", None, f"internal error: {type(e).__name__}: {e}") for s, _ in jobs]
        results = []
        for session, _ in jobs:
            model = session.model
            model.frames += 1
            if not valid[model.slot]:  # the first max(delays) frames
                results.append((session, b"", None, None))
                continue
            pages = model.opus_out(pcm[model.slot])
            results.append((session, pages, engine.piece(int(text[model.slot])), None))
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
            if self.engine.max_steps and s.model.frames >= self.engine.max_steps:
                s.fail(f"the conversation reached this model's {self.engine.max_steps}-frame "
                       "limit (it has no sliding window)", logging.INFO)
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
            if piece:  # text first, as Kyutai's server sends it (its audio waits on Opus)
                s.send(protocol.text(piece))
            if pages:
                s.send(protocol.audio(pages))
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
def load_engine(workdir: str, slots: int, moshi=None):
    """The engine of a workdir: a Moshi's, or a two-stream depth LM's (ValueError, one line,
    for anything else)."""
    from audiolm_jax import workdir as workdir_lib

    if moshi is not None:
        return MoshiEngine(moshi, slots=slots)
    if "://" not in workdir and not os.path.isfile(os.path.join(workdir,
                                                               workdir_lib.CONFIG_FILE)):
        raise FileNotFoundError(f"--workdir {workdir!r} has no {workdir_lib.CONFIG_FILE}")
    kind = workdir_lib.model_kind(workdir)
    if kind == "moshi":
        from audiolm_jax.moshi.run import load_moshi

        return MoshiEngine(load_moshi(workdir), slots=slots)
    if kind == "lm":
        from audiolm_jax.lm.run import LoadedLM

        return DepthLMEngine(LoadedLM(workdir), slots=slots)
    raise ValueError(f"--workdir {workdir!r} holds {workdir_lib.KINDS[kind]}; serve takes a "
                     "Moshi or a two-stream depth LM")


def build_server(workdir: str, options: ServeOptions, moshi=None) -> MoshiServer:
    """Loads the workdir, compiles and warms the step, -> a server ready for its first client."""
    engine = load_engine(workdir, options.max_sessions, moshi)
    took = engine.warmup()
    log.info("model ready (warm-up %.1f s): %d Hz codec, %d-sample frames, delay %d frames, "
             "%d session slots", took, engine.sample_rate, engine.hop, engine.delay, engine.slots)
    return MoshiServer(engine, options)


async def start(server: MoshiServer, host: str = "127.0.0.1", port: int = 0,
                ssl_context=None) -> tuple[Any, int]:
    """Starts listening; -> (aiohttp AppRunner, the bound port). ``port=0``: a free one."""
    from aiohttp import web

    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=ACCEPT_BATCH)
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
        stop = asyncio.Event()
        import signal  # SIGTERM (a service manager's stop): close the sessions and exit cleanly

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
            log.info("SIGTERM: closing %d session(s) and stopping", len(server.sessions))
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
