"""A trained codec loaded from its workdir: encode, decode, reconstruct and evaluate files."""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from audiolm_jax.codec import losses, metrics
from audiolm_jax.codec.mimi.streaming import MimiStreamer
from audiolm_jax.codec.model import bitrate_bps, build_codec, frame_rate, hop_length
from audiolm_jax.codec.registry import codec_config
from audiolm_jax.codec.weights import load_codec_weights
from audiolm_jax.data.audio_io import AudioDecodeError, load_audio
from audiolm_jax.quantization import STATS, quantizer_config


def _encode_valid(codec, audio, length):
    """``Codec`` method for a kind whose encoder pads a partial frame itself (Mimi): codes of
    ``audio [B, T]`` zero-padded past its ``length`` valid samples, equal to those of the
    unpadded audio on every frame (see ``MimiEncoder``)."""
    return codec.quantizer.encode(codec.encoder(audio, length=length))


class LoadedCodec:
    """Inference on one device. Lengths are padded to a bucket so few shapes compile.

    The bucket padding changes no output: a kind whose encoder pads a partial frame itself
    (``pads_partial_frames``: Mimi, whose reference pads inside each conv) is given the true
    length, and each of its strided convs sees, past its own input's valid length, what the
    reference's conv pads with, so a trailing partial frame gets the reference's codes; the
    other kinds pad their input to whole frames with zeros anyway, as the bucket does.

    A file longer than ``chunk_seconds`` is encoded chunk by chunk, so memory stays bounded
    whatever its length (an hour of audio in one call would need gigabytes of activations),
    with the same codes as one whole-file call:

    * convolutional codecs: each chunk is encoded with enough audio on both sides to cover
      the encoder's receptive field (measured once, see :meth:`receptive_field_frames`);
    * a kind whose networks stream (its config's ``streams``: Mimi): the streaming encoder
      (:class:`~audiolm_jax.codec.mimi.streaming.MimiStreamer`), whose carried state makes
      the chunks exact however far its transformer looks back.
    """

    def __init__(self, config: Any, params: Any, vq_stats: Any, step: int,
                 chunk_seconds: float = 30.0):
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self.config = config
        self.model = build_codec(config)
        # On one device, whatever mesh the checkpoint was saved from: a training workdir's
        # arrays (restored onto its training mesh) and an export's (plain arrays) then share
        # compiled programs (the legacy-workdir tests: 12 s of compiles -> 5).
        params, vq_stats = jax.device_put((params, vq_stats), jax.devices()[0])
        self.params, self.vq_stats, self.step = params, vq_stats, step
        self.sample_rate = int(config.data.sample_rate)
        self.hop_length = hop_length(config)
        self.kind = codec_config(config.model)  # the codec kind's typed config
        self.num_levels = int(config.quantizer.num_levels)
        self.codebook_size = int(quantizer_config(config.quantizer).codebook_size)
        self.frame_rate = frame_rate(config)
        # Weights are arguments, not constants baked into the program: XLA would otherwise
        # constant-fold them (minutes for Mimi's 80M parameters).
        self.variables = {"params": params, STATS: vq_stats}
        encode = jax.jit(lambda v, a: self.model.apply(v, a, method="encode"))
        decode = jax.jit(lambda v, c: self.model.apply(v, c, method="decode"))
        self._encode = lambda a: encode(self.variables, a)
        if self.kind.pads_partial_frames:
            # The valid length is an argument: one compilation per bucket, whatever it is.
            encode_valid = jax.jit(lambda v, a, n: self.model.apply(v, a, n,
                                                                    method=_encode_valid))
            self._encode_valid = lambda a, n: encode_valid(self.variables, a, np.int32(n))
        self._decode = lambda c: decode(self.variables, c)
        self.chunk_frames = max(1, round(chunk_seconds * self.frame_rate))
        self._margins: dict[bool, tuple[int, int]] = {}  # decoder? -> (before, after)
        self._streamer = None

    def _bucket(self, length: int) -> int:
        # Round up to a whole quarter second of frames: one compilation per bucket.
        quantum = self.hop_length * max(1, math.ceil(self.sample_rate / 4 / self.hop_length))
        return max(quantum, math.ceil(length / quantum) * quantum)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """[T] float -> int32 codes [levels, frames], frames = ceil(T / hop).

        The input is zero-padded to a length bucket, which changes no code (for Mimi, a last
        partial frame included: see the class docstring).
        """
        audio = np.asarray(audio, np.float32)
        frames = math.ceil(len(audio) / self.hop_length)
        total = self._bucket(len(audio)) // self.hop_length  # frames after padding
        if self.kind.streams:
            if total > self.chunk_frames:
                return self._encode_streaming(audio, frames)
        elif total > self.chunk_frames:  # the field is only measured for long inputs
            before, after = self.receptive_field_frames()
            if total > self.chunk_frames + before + after:
                return self._encode_windows(audio, frames, total, before, after)
        padded = self._frames_of(audio, 0, total)
        if self.kind.pads_partial_frames:
            codes = self._encode_valid(padded, len(audio))
        else:
            codes = self._encode(padded)
        codes = np.asarray(codes)[0, :frames]
        return codes.T.astype(np.int32)

    def _frames_of(self, audio: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """``[1, (hi - lo) * hop]``: frames lo..hi-1 of the audio, zero past its end (the
        bucket padding), copied so no padded copy of a whole long file is ever made."""
        out = np.zeros((1, (hi - lo) * self.hop_length), np.float32)
        piece = audio[lo * self.hop_length: hi * self.hop_length]
        out[0, : len(piece)] = piece
        return out

    def receptive_field_frames(self, decoder: bool = False) -> tuple[int, int]:
        """``(before, after)``: a frame of the encoder's latents (or, with ``decoder``, of
        the decoder's audio) depends on input from at most ``before`` frames earlier to
        ``after`` frames later (one frame of slack each side included).

        Measured, not derived from the config: a NaN at one input position spreads through
        every convolution, activation and padding to exactly the outputs that read it.
        Non-Mimi codecs only (Mimi's transformer would make the field span minutes)."""
        if decoder not in self._margins:
            hop = self.hop_length
            if decoder:  # NaN added to one frame of the dequantized latents
                run = jax.jit(lambda v, c, p: self.model.apply(
                    v, c, p, method=lambda m, c, p: m.decoder(m.quantizer.decode(c)
                                                              + p[None, :, None])))
            else:
                run = jax.jit(lambda v, a: self.model.apply(
                    v, a, method=lambda m, x: m.encoder(m._pad(x))))
            n = 64  # frames; doubled until the NaN stays clear of both ends
            while True:
                mid = n // 2
                if decoder:
                    poison = np.zeros(n, np.float32)
                    poison[mid] = np.nan
                    out = np.asarray(run(self.variables, np.zeros((1, n, 1), np.int32),
                                         poison))[0]
                    bad = np.isnan(out).reshape(n, -1).any(axis=-1)  # per output frame
                else:
                    probe = np.zeros((1, n * hop), np.float32)
                    probe[0, mid * hop] = np.nan
                    bad = np.isnan(np.asarray(run(self.variables, probe))[0]).any(axis=-1)
                hit = np.flatnonzero(bad)
                if hit.size and 0 < hit[0] and hit[-1] < n - 1:
                    # Frame hit[-1] reads frame mid, so frames look back hit[-1] - mid frames.
                    self._margins[decoder] = (int(hit[-1] - mid) + 1, int(mid - hit[0]) + 1)
                    break
                if n >= 1 << 16:
                    raise RuntimeError("could not bound the codec's receptive field")
                n *= 2
        return self._margins[decoder]

    def _encode_windows(self, audio: np.ndarray, frames: int, total: int, before: int,
                        after: int) -> np.ndarray:
        """Conv codecs: chunks of ``chunk_frames`` frames, each encoded in a window that
        reaches ``before``/``after`` frames past it. Every window has the same length (one
        program, whatever the file lengths); near the ends it is shifted to start at 0 or
        stop at the end of the padded signal, so edges are handled as in one whole call."""
        out = []
        for start, stop, lo, hi in self._windows(frames, total, before, after):
            codes = np.asarray(self._encode(self._frames_of(audio, lo, hi)))[0]
            out.append(codes[start - lo: stop - lo])
        return np.concatenate(out).T.astype(np.int32)

    def _windows(self, frames: int, total: int, before: int, after: int):
        """``(start, stop, lo, hi)`` per chunk: output frames start..stop-1 come from input
        frames lo..hi-1, a window of fixed length reaching ``before``/``after`` frames past
        the chunk, shifted to start at 0 or stop at ``total`` near the ends."""
        step = self.chunk_frames
        window = step + before + after
        for start in range(0, frames, step):
            lo = min(max(0, start - before), total - window)
            yield start, min(start + step, frames), lo, lo + window

    def _mimi_streamer(self):
        if self._streamer is None:
            self._streamer = MimiStreamer(self.config, self.params, self.vq_stats, batch=1)
        return self._streamer

    def _streaming_step(self) -> int:
        """Code frames per streaming call: ``chunk_frames``, at most what the kind's streaming
        mode takes at once (Mimi: its transformer's context, the positions its key/value ring
        buffer holds)."""
        limit = self.kind.max_stream_frames
        return self.chunk_frames if limit is None else max(1, min(self.chunk_frames, limit))

    def _encode_streaming(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """Mimi: the streaming encoder over chunks of whole frames (no longer than its
        transformer's context), state carried between them; the last chunk is zero-padded
        and given its valid length, as the whole-file call is, so a partial last frame gets
        the reference's codes here too."""
        step = self._streaming_step()
        state = self._mimi_streamer().init_encoder_state()
        out = []
        for start in range(0, frames, step):
            valid = min(len(audio) - start * self.hop_length, step * self.hop_length)
            state, codes = self._mimi_streamer().encode_step(
                state, self._frames_of(audio, start, start + step), np.int32(valid))
            out.append(np.asarray(codes)[0])
        return np.concatenate(out)[:frames].T.astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [levels, frames] -> [frames * hop] float audio."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must have shape [levels, frames], got {codes.shape}")
        if codes.shape[0] > self.num_levels:
            raise ValueError(f"codes have {codes.shape[0]} levels; this codec has {self.num_levels}")
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        frames = codes.shape[1]
        bucket = self._bucket(frames * self.hop_length) // self.hop_length
        padded = np.zeros((bucket, codes.shape[0]), np.int32)
        padded[:frames] = codes.T
        if self.kind.streams:
            if bucket > self.chunk_frames:
                return self._decode_streaming(padded, frames)
        elif bucket > self.chunk_frames:
            before, after = self.receptive_field_frames(decoder=True)
            if bucket > self.chunk_frames + before + after:
                return self._decode_windows(padded, frames, before, after)
        return np.asarray(self._decode(padded[None]))[0, : frames * self.hop_length]

    def _decode_windows(self, padded: np.ndarray, frames: int, before: int,
                        after: int) -> np.ndarray:
        """Conv codecs: the decoder's counterpart of :meth:`_encode_windows` (windows of
        code frames widened by the decoder's receptive field; same audio as one call, to
        float rounding)."""
        hop = self.hop_length
        out = []
        for start, stop, lo, hi in self._windows(frames, len(padded), before, after):
            audio = np.asarray(self._decode(padded[None, lo:hi]))[0]
            out.append(audio[(start - lo) * hop: (stop - lo) * hop])
        return np.concatenate(out)

    def _decode_streaming(self, padded: np.ndarray, frames: int) -> np.ndarray:
        """Mimi: the streaming decoder over chunks of code frames, state carried."""
        step = self._streaming_step()
        state = self._mimi_streamer().init_decoder_state()
        out = []
        padded = np.pad(padded, ((0, -len(padded) % step), (0, 0)))  # whole chunks
        for start in range(0, frames, step):
            state, audio = self._mimi_streamer().decode_step(
                state, padded[None, start: start + step])
            out.append(np.asarray(audio)[0])
        return np.concatenate(out)[: frames * self.hop_length]

    def reconstruct(self, audio: np.ndarray, num_levels: int | None = None) -> np.ndarray:
        codes = self.encode(audio)
        if num_levels:
            codes = codes[:num_levels]
        return self.decode(codes)[: len(audio)]


def load_codec(workdir: str, step: int | None = None) -> LoadedCodec:
    """A training workdir's or an export directory's codec, ready for files."""
    weights = load_codec_weights(workdir, step)
    return LoadedCodec(weights.config, weights.params, weights.vq_stats, weights.step)


def evaluate_files(codec: LoadedCodec, paths: Iterable[str]) -> dict:
    """Spectral loss, mel distance, SI-SNR, bitrate and per-level codebook usage/perplexity."""
    sr = codec.sample_rate
    spectral, mel, snr, skipped = [], [], [], []
    counts = np.zeros((codec.num_levels, codec.codebook_size), np.int64)
    for path in paths:
        try:
            audio = load_audio(path, sr)
        except AudioDecodeError as e:
            skipped.append(str(path))
            logging.warning("skipping %s", e)
            continue
        codes = codec.encode(audio)
        recon = codec.decode(codes)[: len(audio)]
        for level in range(codec.num_levels):
            counts[level] += np.bincount(codes[level], minlength=codec.codebook_size)
        x, y = jnp.asarray(audio[None]), jnp.asarray(recon[None])
        spectral.append(float(losses.multiscale_spectral_loss(x, y)))
        mel.append(float(losses.multiscale_mel_loss(x, y, sr)))
        snr.append(float(metrics.si_snr_db(x, y)))
    if not spectral:
        raise ValueError(f"no readable audio among the {len(skipped)} files given")
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), axis=1)
    return {
        "spectral_loss": float(np.mean(spectral)),
        "mel_distance": float(np.mean(mel)),
        "si_snr_db": float(np.mean(snr)),
        "bitrate_bps": bitrate_bps(codec.config),
        "frame_rate_hz": codec.frame_rate,
        "codebook_usage": [float(u) for u in (counts > 0).mean(axis=1)],
        "perplexity": [float(p) for p in np.exp(entropy)],
        "num_files": len(spectral),
        "skipped_files": skipped,
        "checkpoint_step": codec.step,
    }
