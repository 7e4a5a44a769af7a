"""``serve`` under load: real-time latency of well-behaved clients alone, side by side, and
while hostile clients (issue 17, part 5) hammer the same server.

    python benchmarks/serve_load.py [--seconds 10] [--sessions 4] [--workdir DIR]

Starts the server in this process (its event loop in a thread, as ``tests/helpers.py``'s
``ServerThread``) on a tiny Moshi workdir (``tests/helpers.py:tiny_moshi_workdir``: random
``moshi.py:tiny`` weights, the quickstart's 16 kHz Mimi-like codec; built in a temporary
folder unless ``--workdir`` names one it built before), then:

* ``alone``: one ``chat_async`` client streaming ``--seconds`` of audio in real time;
* ``together``: ``--sessions`` such clients at once (``--max_sessions`` = ``--sessions``);
* ``hostile``: the same clients on a server with two more slots while, in a loop until they
  finish, another thread runs every hostile case of ``tests/test_serve_hostile.py`` (garbage,
  unknown kind, empty, 50 MB, not-Opus Ogg, Opus from 48 kHz PCM, client text, websocket text
  frame, 5000 pings, connect-and-drop after the upgrade and after the request line, a drop
  mid-stream, a half-open websocket, a half-open HTTP request, plain GET and POST, 100
  connections at once); then checks that the server still hands out a session.

Per client: latency median / p95 / max (ms from sending a chunk to having its reply frame,
``serve.client``'s measure), the largest gap between consecutive reply frames, and
``real_time``: max latency under ``--real_time_ms`` (default 400: five 80 ms frames) and no
drift (the last quarter's median latency within one frame of the first quarter's). Per run:
the server's ``slow_frames`` (steps that took longer than a frame). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import struct
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

FRAME_MS = 80.0


# ----------------------------------------------------------------------------- clients
def client_figures(r: dict, real_time_ms: float) -> dict:
    lat = np.asarray(r["latency_ms"], float)
    # Reply frame j is done at sent_j + lat_j, and chunks go out every 80 ms.
    gaps = FRAME_MS + np.diff(lat) if len(lat) > 1 else np.zeros(1)
    q = max(1, len(lat) // 4)
    drift = float(np.median(lat[-q:]) - np.median(lat[:q]))
    return {"latency_median_ms": round(float(np.median(lat)), 1),
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 1),
            "latency_max_ms": round(float(lat.max()), 1),
            "max_reply_gap_ms": round(float(gaps.max()), 1),
            "drift_ms": round(drift, 1),
            "real_time": bool(lat.max() < real_time_ms and drift < FRAME_MS),
            "chunks": len(lat)}


async def talkers(url: str, n: int, seconds: float) -> list[dict]:
    from audiolm_jax.serve.client import chat_async

    t = np.arange(int(seconds * 24000)) / 24000
    audios = [(0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t)).astype(np.float32) for i in range(n)]
    return await asyncio.gather(*(chat_async(url + f"?seed={i}", a) for i, a in enumerate(audios)))


def summary(results: list[dict], real_time_ms: float) -> dict:
    per = [client_figures(r, real_time_ms) for r in results]
    all_lat = np.concatenate([np.asarray(r["latency_ms"], float) for r in results])
    return {"clients": per,
            "latency_median_ms": round(float(np.median(all_lat)), 1),
            "latency_p95_ms": round(float(np.percentile(all_lat, 95)), 1),
            "all_real_time": all(p["real_time"] for p in per)}


# ----------------------------------------------------------------------------- hostile
def hostile_cases(port: int, url: str):
    """(name, function) for each hostile case; each returns a short outcome string."""
    import aiohttp

    from audiolm_jax.serve import protocol
    from test_serve_hostile import RawWS, errors, opus_pages

    big = RawWS.frame(b"\x01" + bytes(50_000_000), mask=bytes(4))
    pages48 = opus_pages(1.0, 48000)
    flood = b"".join(RawWS.frame(protocol.ping()) for _ in range(5000))

    def session(sends, listen=1.0, raw=None):
        ws = RawWS(port)
        first = ws.recv(10)
        if not first or first[1][:1] != b"\x00":
            ws.sock.close()
            return "busy" if first and b"busy" in first[1] else "no handshake"
        try:
            if raw is not None:
                ws.sock.sendall(raw)
            for m, op in sends:
                ws.send(m, op)
        except OSError:
            pass
        got, code = ws.messages(listen)
        ws.sock.close()
        errs = errors(got)
        return (errs[0][:40].decode("utf-8", "replace") if errs
                else f"close {code}" if code else f"{len(got)} messages")

    def connect_drop():
        ws = RawWS(port)
        ws.abort()
        return f"HTTP {ws.status}"

    def drop_request_line():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/chat HTTP/1.1\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        return "dropped"

    def mid_stream():
        ws = RawWS(port)
        if not ws.recv(10):
            return "no handshake"
        for p in opus_pages(0.5):
            ws.send(protocol.audio(p))
            time.sleep(0.08)
        ws.abort()
        return "aborted"

    def half_open_ws():  # holds a slot until the idle timeout
        ws = RawWS(port)
        got, code = ws.messages(10)
        ws.sock.close()
        return (errors(got)[0][:30].decode() if errors(got) else f"close {code}")

    def half_open_http():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        time.sleep(1.0)
        s.close()
        return "left"

    def plain(method):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"{method} /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n".encode())
        reply = s.recv(200)
        s.close()
        return reply.split(b"\r\n")[0].decode()

    def hundred():
        async def one(http):
            try:
                async with http.ws_connect(url) as ws:
                    m = await ws.receive(timeout=30)
                    return m.data[:1] if m.type == aiohttp.WSMsgType.BINARY else b"?"
            except Exception:  # noqa: BLE001 - counted
                return b"x"

        async def go():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                return await asyncio.gather(*(one(http) for _ in range(100)))

        got = asyncio.run(go())
        return f"{got.count(bytes(1))} handshakes, {got.count(bytes([5]))} refused"

    return [
        ("garbage", lambda: session([(b"\x01not an ogg page", 2)])),
        ("unknown_kind", lambda: session([(b"\x42", 2)])),
        ("empty", lambda: session([(b"", 2)])),
        ("fifty_mb", lambda: session([], raw=big, listen=5)),
        ("not_opus_ogg", lambda: session([(b"\x01OggS" + bytes(range(256)) * 4, 2)])),
        ("opus_from_48k", lambda: session([(protocol.audio(p), 2) for p in pages48])),
        ("client_text", lambda: session([(protocol.text("hello"), 2)])),
        ("ws_text_frame", lambda: session([(b"a text frame", 1)])),
        ("ping_flood", lambda: session([], raw=flood, listen=3)),
        ("connect_drop", connect_drop),
        ("drop_after_request_line", drop_request_line),
        ("drop_mid_stream", mid_stream),
        ("half_open_ws", half_open_ws),
        ("half_open_http", half_open_http),
        ("plain_get", lambda: plain("GET")),
        ("plain_post", lambda: plain("POST")),
        ("hundred_at_once", hundred),
    ]


def _loop_case(name, fn, stop, outcomes, pause):
    while not stop.is_set():
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - a case that broke is an outcome too
            out = f"client error: {type(e).__name__}: {e}"[:80]
        outcomes.setdefault(name, {})
        outcomes[name][out] = outcomes[name].get(out, 0) + 1
        stop.wait(pause)


def hostile_process(port: int, url: str, go, stop, queue, pause: float, only=None,
                    nice: int = 0) -> None:
    """In a process of its own (no share of the server's GIL): from ``go``, a thread per
    hostile case, each repeating it (``pause`` s between tries) until ``stop``; -> outcome
    counts."""
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    if nice:
        os.nice(nice)
    local_stop, outcomes = threading.Event(), {}
    threads = [threading.Thread(target=_loop_case, args=(n, fn, local_stop, outcomes, pause),
                                daemon=True) for n, fn in hostile_cases(port, url)
               if not only or n in only]
    queue.put("ready")
    go.wait()
    for t in threads:
        t.start()
    stop.wait()
    local_stop.set()
    for t in threads:
        t.join(30)
    queue.put(outcomes)


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per client")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="a tiny Moshi workdir built before")
    ap.add_argument("--real_time_ms", type=float, default=400.0)
    ap.add_argument("--spare", type=int, default=4,
                    help="hostile run: this many more sessions than --sessions")
    ap.add_argument("--pause", type=float, default=0.1,
                    help="seconds each hostile case waits before its next try")
    ap.add_argument("--nice", type=int, default=19,
                    help="hostile run: the hostile process's niceness (19: its clients stand "
                         "for other machines, not for a rival of the server on the same CPU; "
                         "0: equal share)")
    ap.add_argument("--cases", default="", help="hostile run: only these cases (comma list)")
    ap.add_argument("--hostile_only", action="store_true", help="skip 'alone' and 'together'")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from helpers import ServerThread, tiny_moshi_workdir

    from audiolm_jax.moshi.run import load_moshi
    from audiolm_jax.serve.server import ServeOptions, build_server
    from test_serve_hostile import RawWS

    t0 = time.perf_counter()
    if args.workdir and os.path.isdir(os.path.join(args.workdir, "moshi")):
        workdir = os.path.join(args.workdir, "moshi")
    else:
        import pathlib

        root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="serve_load_"))
        root.mkdir(parents=True, exist_ok=True)
        workdir = tiny_moshi_workdir(root)[0]
    moshi = load_moshi(workdir)
    out = {"host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "seconds_per_client": args.seconds, "sessions": args.sessions,
           "real_time_rule": f"max latency < {args.real_time_ms:g} ms and drift < 80 ms",
           "setup_s": None}

    def run_server(max_sessions):
        return ServerThread(build_server(workdir, ServeOptions(max_sessions=max_sessions,
                                                               idle_timeout=3.0), moshi=moshi))

    out["setup_s"] = round(time.perf_counter() - t0, 1)  # the workdir, loaded
    if not args.hostile_only:
        srv = run_server(args.sessions)
        alone = asyncio.run(talkers(srv.url(), 1, args.seconds))
        out["alone"] = (summary(alone, args.real_time_ms)
                        | {"slow_frames": srv.server.slow_frames})
        srv.wait_idle()
        slow = srv.server.slow_frames
        together = asyncio.run(talkers(srv.url(), args.sessions, args.seconds))
        out["together"] = (summary(together, args.real_time_ms)
                           | {"slow_frames": srv.server.slow_frames - slow,
                              "max_sessions": args.sessions})
        srv.stop()

    # Spare slots, so that the hostile clients reach a session, not only 'busy'.
    srv = run_server(args.sessions + args.spare)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    go, stop, queue = ctx.Event(), ctx.Event(), ctx.Queue()
    only = [c for c in args.cases.split(",") if c] if args.cases else None
    proc = ctx.Process(target=hostile_process, args=(srv.port, srv.url(), go, stop, queue,
                                                     args.pause, only, args.nice), daemon=True)
    proc.start()
    assert queue.get(timeout=120) == "ready"

    async def hostile_run():
        task = asyncio.create_task(talkers(srv.url(), args.sessions, args.seconds))
        end = time.monotonic() + 30
        while len(srv.server.sessions) < args.sessions and time.monotonic() < end:
            await asyncio.sleep(0.05)  # the good clients hold their slots first
        go.set()
        try:
            return await task
        finally:
            stop.set()

    lags: list[float] = []

    async def lag_monitor():  # on the server's event loop: how late a 10 ms sleep wakes up
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    monitor = asyncio.run_coroutine_threadsafe(lag_monitor(), srv.loop)
    t1 = time.perf_counter()
    hostile = asyncio.run(hostile_run())
    monitor.cancel()
    outcomes = queue.get(timeout=120)
    proc.join(30)
    srv.wait_idle(15)
    ws = RawWS(srv.port)
    first = ws.recv(30)
    ws.close()
    out["hostile"] = (summary(hostile, args.real_time_ms)
                      | {"slow_frames": srv.server.slow_frames,
                         "max_sessions": args.sessions + args.spare,
                         "hostile_nice": args.nice, "hostile_pause_s": args.pause,
                         "wall_s": round(time.perf_counter() - t1, 1),
                         "event_loop_lag_ms": {
                             "p50": round(1000 * float(np.median(lags)), 1),
                             "p99": round(1000 * float(np.percentile(lags, 99)), 1),
                             "max": round(1000 * float(np.max(lags)), 1)},
                         "hostile_outcomes": outcomes,
                         "accepts_a_session_after": bool(first and first[1][:1] == b"\x00")})
    srv.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
