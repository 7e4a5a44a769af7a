"""24 kHz mono Ogg-Opus in and out of a session (``sphn``), at the codec's own rate.

The wire is always 24 kHz (what Kyutai's clients speak); a codec at another rate (the tests'
16 kHz Mimi-like codec) goes through :class:`StreamResampler`: ``soxr.ResampleStream``,
stateful so that consecutive chunks join without clicks, wrapped so that after every chunk
the output count is exactly ``floor(total_in * out_rate / in_rate)``. The filter's own lag
is made up once with leading zeros, so sample counts keep mapping to frames (the client's
latency measure relies on that)."""

from __future__ import annotations

import numpy as np

from audiolm_jax.serve.protocol import ProtocolError

OPUS_RATE = 24000
OPUS_FRAME = 1920  # 80 ms at 24 kHz; sphn's writer takes whole Opus frame sizes


class StreamResampler:
    """Exact-count streaming resampler (identity when the rates match)."""

    def __init__(self, in_rate: int, out_rate: int):
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self._soxr = None
        if self.in_rate != self.out_rate:
            import soxr

            self._soxr = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32",
                                             quality="HQ")
        self._in_total = 0
        self._out_total = 0
        self._fifo = np.zeros(0, np.float32)
        self._primed = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(-1)
        if self._soxr is None:
            return x
        y = np.asarray(self._soxr.resample_chunk(x), np.float32).reshape(-1)
        self._in_total += len(x)
        want = self._in_total * self.out_rate // self.in_rate - self._out_total
        fifo = np.concatenate([self._fifo, y])
        if len(fifo) < want:
            # Only at the start, while the filter fills: its lag becomes leading silence.
            fifo = np.concatenate([np.zeros(want - len(fifo), np.float32), fifo])
        out, self._fifo = fifo[:want], fifo[want:]
        self._out_total += len(out)
        return out


class OpusDecoder:
    """Client's Ogg-Opus pages -> PCM at ``sample_rate``; bad bytes -> :class:`ProtocolError`."""

    def __init__(self, sample_rate: int):
        import sphn

        self._reader = sphn.OpusStreamReader(OPUS_RATE)
        self._resample = StreamResampler(OPUS_RATE, sample_rate)
        self._first = True

    def __call__(self, pages: bytes) -> np.ndarray:
        # sphn buffers anything shorter than a page header without complaint: a stream
        # must at least start like one.
        if self._first and not bytes(pages[:4]) == b"OggS":
            raise ProtocolError(f"audio is not Ogg-Opus: stream starts with {bytes(pages[:4])!r}, "
                                "not b'OggS'")
        self._first = False
        try:
            pcm = self._reader.append_bytes(bytes(pages))
        except Exception as e:  # sphn raises ValueError on anything that is not Ogg-Opus
            raise ProtocolError(f"audio is not Ogg-Opus: {' '.join(str(e).split())[:200]}") from None
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        return self._resample(pcm) if len(pcm) else pcm


class OpusEncoder:
    """PCM at ``sample_rate`` -> Ogg-Opus pages (bytes, maybe empty) in 80 ms Opus frames."""

    def __init__(self, sample_rate: int):
        import sphn

        self._writer = sphn.OpusStreamWriter(OPUS_RATE)
        self._resample = StreamResampler(sample_rate, OPUS_RATE)
        self._pending = np.zeros(0, np.float32)

    def __call__(self, pcm: np.ndarray) -> bytes:
        buf = np.concatenate([self._pending, self._resample(pcm)])
        pages = []
        while len(buf) >= OPUS_FRAME:
            pages.append(bytes(self._writer.append_pcm(np.ascontiguousarray(buf[:OPUS_FRAME]))))
            buf = buf[OPUS_FRAME:]
        self._pending = buf
        return b"".join(pages)
