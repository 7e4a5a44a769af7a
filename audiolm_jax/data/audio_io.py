"""Reading and writing audio files.

``load_audio`` decodes with soundfile (libsndfile: wav, flac, ogg and, with
libsndfile >= 1.1, mp3), falling back to librosa/audioread for anything
soundfile cannot open that is not a wav/flac/ogg file. The result is always a
finite float32 mono array at the requested sample rate; anything else raises
:class:`AudioDecodeError`, whose message names the file. ``audio_frames`` reads
only the header, so long files can be loaded a window at a time.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import soundfile as sf

__all__ = ["AUDIO_EXTENSIONS", "MAX_ABS_SAMPLE", "AudioDecodeError", "audio_frames", "load_audio",
           "save_wav"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# Formats libsndfile reads natively; a soundfile error on these is final.
_SNDFILE_ONLY = (".wav", ".flac", ".ogg")

# Float files may overshoot full scale a little; samples beyond +24 dBFS are corrupt data
# (e.g. integer PCM mislabelled as float), which would blow up a training loss.
MAX_ABS_SAMPLE = 16.0


class AudioDecodeError(ValueError):
    """An audio file is missing, empty, corrupt, not audio, or non-finite."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode audio file {self.path!r}: {reason}")

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.path, self.reason))


def _check_wav_truncation(path: str) -> None:
    """Raises if a RIFF/WAVE file's data chunk is shorter than its header says.

    libsndfile silently reads a truncated WAV up to wherever the bytes end, so
    a half-downloaded file would otherwise pass as a short, valid one.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return  # not a plain RIFF WAVE (e.g. RF64/W64): let libsndfile judge
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                available = size - pos - 8
                if chunk_size not in (0, 0xFFFFFFFF) and available < chunk_size:
                    raise AudioDecodeError(
                        path, f"truncated WAV: data chunk declares {chunk_size} bytes "
                              f"but only {available} are present")
                return
            pos += 8 + chunk_size + (chunk_size & 1)


def audio_frames(path: str | os.PathLike) -> tuple[int, int] | None:
    """(frames, sample_rate) from the file's header, or None if libsndfile cannot tell."""
    try:
        info = sf.info(os.fspath(path))
    except Exception:  # pylint: disable=broad-except -- load_audio reports the real problem
        return None
    return (int(info.frames), int(info.samplerate)) if info.frames > 0 else None


def _decode(path: str, start: int = 0, frames: int | None = None) -> tuple[np.ndarray, int]:
    """Returns (float32 [frames, channels], sample_rate) of file frames [start, start + frames)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        data, sr = sf.read(path, start=start, frames=-1 if frames is None else frames,
                           dtype="float32", always_2d=True)
        return data, int(sr)
    except Exception as e:  # pylint: disable=broad-except
        sf_error = e
    if ext in _SNDFILE_ONLY:
        raise AudioDecodeError(path, f"not a readable audio file ({sf_error})")
    try:  # mp3 & friends via librosa -> audioread (ffmpeg/gstreamer backends)
        import librosa  # pylint: disable=g-import-not-at-top

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as e:  # pylint: disable=broad-except
        raise AudioDecodeError(
            path, f"not a readable audio file (soundfile: {sf_error}; audioread: {e!r})") from e
    y = np.asarray(y, np.float32)
    data = y[:, None] if y.ndim == 1 else y.T  # librosa gives [channels, frames]
    # This fallback decodes the whole file; only libsndfile formats are read by window.
    return data[start:None if frames is None else start + frames], int(sr)


def load_audio(path: str | os.PathLike, sample_rate: int | None, *, start: int = 0,
               frames: int | None = None, mono: bool = True) -> np.ndarray:
    """Decodes ``path`` to float32 mono samples at ``sample_rate`` (``mono=False``:
    ``[channels, samples]``, every channel checked and resampled the same way).

    Channels are averaged to mono; audio is resampled with
    ``librosa.resample`` (soxr_hq) when the file's rate differs. With
    ``sample_rate=None`` the file's own rate is kept. ``start``/``frames``
    select a window in the file's own frames (default: the whole file).

    Raises:
      AudioDecodeError: missing, empty, corrupt/truncated, non-audio, zero-length,
        non-finite (NaN/Inf) or wildly out-of-range (peak > ``MAX_ABS_SAMPLE``)
        files. The message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioDecodeError(path, "file not found")
    if not os.path.isfile(path):
        raise AudioDecodeError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(path, "empty file (0 bytes)")
    if os.path.splitext(path)[1].lower() == ".wav":
        try:
            _check_wav_truncation(path)
        except (OSError, struct.error) as e:
            raise AudioDecodeError(path, f"unreadable WAV header ({e})") from e
    data, sr = _decode(path, int(start), None if frames is None else int(frames))
    if data.size == 0 or data.shape[0] == 0:
        raise AudioDecodeError(path, "contains no audio samples")
    if mono:
        audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    else:
        audio = np.ascontiguousarray(data.T)
    peak = float(np.max(np.abs(audio)))  # NaN/Inf propagate: one pass for the common case
    if not np.isfinite(peak):
        bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise AudioDecodeError(path, f"contains {bad} non-finite (NaN/Inf) samples")
    if peak > MAX_ABS_SAMPLE:
        raise AudioDecodeError(path, f"samples far outside [-1, 1] (peak {peak:.3g}); "
                                     "corrupt or mislabelled float data")
    if sample_rate is not None and int(sample_rate) != sr:
        import librosa  # pylint: disable=g-import-not-at-top

        audio = librosa.resample(audio, orig_sr=sr, target_sr=int(sample_rate), axis=-1)
        if audio.size == 0:
            raise AudioDecodeError(path, "too short to resample")
    return np.ascontiguousarray(audio, dtype=np.float32)


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Writes ``audio`` ([samples] or [samples, channels]) as 16-bit PCM WAV.

    Values are clipped to [-1, 1]; NaNs are written as 0. Parent folders are
    created as needed.
    """
    path = os.fspath(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be [samples] or [samples, channels], got {audio.shape}")
    audio = np.clip(np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    sf.write(path, audio, int(sample_rate), subtype="PCM_16", format="WAV")
