"""``audiolm-jax chat``: a script client for ``/api/chat``. Streams a WAV as 24 kHz
Ogg-Opus, 80 ms every 80 ms (or as fast as the socket takes it with ``fast=True``), then
silence until the reply is as long as the input; writes the reply WAV and its text.

Latency: user chunk ``j`` is consumed by the server's step ``j``, whose output is reply frame
``j - delay_frames`` (from the server's 0x04 metadata). The latency of chunk ``j`` is the
time from sending it to having decoded reply samples up to the end of that frame; it counts
the network, the step and the Opus/resampler lags. Meaningless with ``fast=True`` (chunks
are queued at the server)."""

from __future__ import annotations

import asyncio
import time
from typing import Optional

import numpy as np

from audiolm_jax.serve import protocol
from audiolm_jax.serve.opus import OPUS_FRAME, OPUS_RATE
from audiolm_jax.serve.protocol import Kind

FRAME_S = OPUS_FRAME / OPUS_RATE


class ChatError(ValueError):
    """The server refused or ended the conversation (its 0x05 reason), or never answered."""


async def chat_async(url: str, audio: np.ndarray, *, fast: bool = False,
                     timeout: float = 60.0, handshake_timeout: float = 60.0) -> dict:
    """``audio``: mono float32 at 24 kHz -> dict with ``reply`` (float32, same length),
    ``text``, ``pieces`` [(seconds since start, piece)], ``latency_ms`` per chunk, metadata."""
    import aiohttp
    import sphn

    audio = np.asarray(audio, np.float32).reshape(-1)
    n_chunks = max(1, -(-len(audio) // OPUS_FRAME))
    padded = np.zeros(n_chunks * OPUS_FRAME, np.float32)
    padded[:len(audio)] = audio
    expected = len(audio)
    writer, reader = sphn.OpusStreamWriter(OPUS_RATE), sphn.OpusStreamReader(OPUS_RATE)
    received: list[np.ndarray] = []
    state = {"samples": 0, "error": None, "meta": {}, "closed": False, "complete": False}
    frame_done: list[float] = []  # time each reply frame was complete
    pieces: list[tuple[float, str]] = []
    sent_at: list[float] = []
    done = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as e:
            raise ChatError(f"{url}: HTTP {e.status} {e.message}") from None
        except aiohttp.ClientError as e:
            raise ChatError(f"{url}: {e}") from None
        try:
            first = await asyncio.wait_for(ws.receive(), handshake_timeout)
        except asyncio.TimeoutError:
            raise ChatError(f"{url}: no handshake within {handshake_timeout:g} s") from None
        if first.type != aiohttp.WSMsgType.BINARY or not first.data:
            raise ChatError(f"{url}: closed before the handshake ({first.type.name})")
        if first.data[0] == Kind.ERROR:
            raise ChatError(f"server: {first.data[1:].decode('utf-8', 'replace')}")
        if first.data[0] != Kind.HANDSHAKE:
            raise ChatError(f"{url}: first message is kind 0x{first.data[0]:02x}, not a handshake")
        t_start = time.monotonic()

        async def receive():
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                        continue
                    kind, payload = msg.data[0], msg.data[1:]
                    if kind == Kind.AUDIO:
                        pcm = np.asarray(reader.append_bytes(payload), np.float32).reshape(-1)
                        if len(pcm):
                            received.append(pcm)
                            state["samples"] += len(pcm)
                            now = time.monotonic()
                            while (len(frame_done) + 1) * OPUS_FRAME <= state["samples"]:
                                frame_done.append(now)
                            if state["samples"] >= expected:
                                state["complete"] = True
                                done.set()
                    elif kind == Kind.TEXT and not state["complete"]:
                        # (A frame's text comes before its audio: the pieces kept are exactly
                        # those of the frames the reply holds, however fast the server ran on.)
                        pieces.append((time.monotonic() - t_start, payload.decode("utf-8", "replace")))
                    elif kind == Kind.METADATA:
                        state["meta"] = protocol.parse(msg.data).json()
                    elif kind == Kind.ERROR:
                        state["error"] = payload.decode("utf-8", "replace")
            finally:
                state["closed"] = True
                done.set()

        receiver = asyncio.create_task(receive())
        try:
            for j in range(n_chunks):
                pages = writer.append_pcm(padded[j * OPUS_FRAME:(j + 1) * OPUS_FRAME])
                sent_at.append(time.monotonic())
                if pages:
                    await ws.send_bytes(protocol.audio(pages))
                if not fast:
                    await asyncio.sleep(max(0.0, t_start + (j + 1) * FRAME_S - time.monotonic()))
            # Silence until the reply covers the input: the model answers `delay` frames late.
            silence = np.zeros(OPUS_FRAME, np.float32)
            deadline = time.monotonic() + timeout
            k = n_chunks
            while not done.is_set() and time.monotonic() < deadline:
                delay = int(state["meta"].get("delay_frames", 1))
                ahead = k - len(frame_done)  # chunks sent whose reply frame is not back yet
                if fast and ahead > delay + 2:  # enough in flight: wait for replies
                    try:
                        await asyncio.wait_for(done.wait(), FRAME_S)
                    except asyncio.TimeoutError:
                        pass
                    continue
                pages = writer.append_pcm(silence)
                if pages:
                    await ws.send_bytes(protocol.audio(pages))
                k += 1
                try:
                    await asyncio.wait_for(done.wait(), 0.005 if fast else FRAME_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            await ws.close()
            await receiver
    if state["error"] and state["samples"] < expected:
        raise ChatError(f"server: {state['error']}")
    if state["samples"] < expected:
        raise ChatError(f"the reply stopped at {state['samples'] / OPUS_RATE:.2f} s of "
                        f"{expected / OPUS_RATE:.2f} s")
    reply = np.concatenate(received)[:expected] if received else np.zeros(0, np.float32)
    delay = int(state["meta"].get("delay_frames", 1))
    lat = [frame_done[j - delay] - sent_at[j] for j in range(delay, n_chunks)
           if j - delay < len(frame_done)]
    ms = lambda q: round(1000 * float(np.percentile(lat, q)), 1) if lat else None
    return {"reply": reply, "text": "".join(p for _, p in pieces).strip(), "pieces": pieces,
            "latency_ms": [round(1000 * x, 1) for x in lat], "latency_median_ms": ms(50),
            "latency_p95_ms": ms(95), "metadata": state["meta"], "error": state["error"],
            "chunks": n_chunks, "seconds": expected / OPUS_RATE}


def chat(url: str, input_path: str, out_path: str, *, transcript: Optional[str] = None,
         fast: bool = False, timeout: float = 60.0) -> dict:
    """Reads ``input_path`` (any rate, resampled to 24 kHz), converses, writes the reply WAV
    (24 kHz) and the transcript; -> a JSON-ready summary with the latency."""
    from audiolm_jax.data.audio_io import load_audio, save_wav

    audio = load_audio(input_path, OPUS_RATE)
    r = asyncio.run(chat_async(url, audio, fast=fast, timeout=timeout))
    save_wav(out_path, r["reply"], OPUS_RATE)
    if transcript:
        with open(transcript, "w") as f:
            f.write(r["text"] + "\n")
            for t, p in r["pieces"]:
                f.write(f"{t:.2f}\t{p}\n")
    return {"out": out_path, "transcript": transcript, "seconds": r["seconds"],
            "reply_seconds": len(r["reply"]) / OPUS_RATE, "text": r["text"],
            "chunks": r["chunks"], "fast": fast,
            "latency_median_ms": r["latency_median_ms"], "latency_p95_ms": r["latency_p95_ms"],
            "delay_frames": r["metadata"].get("delay_frames")}
