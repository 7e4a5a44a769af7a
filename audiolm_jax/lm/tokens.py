"""Pre-tokenised corpora for language-model training: write, load and window.

A corpus of audio files is turned once into discrete tokens (codec codes or
μ-law samples), stored in a *token directory*, and the LM trains on random
fixed-length windows of it.

Token directory format (``format: 1``)
--------------------------------------
``TOKDIR/metadata.json``::

    {"format": 1,
     "tokenizer": "codec" | "mulaw",
     "sample_rate": int,          # audio rate the tokenizer consumed
     "frame_rate": float,         # token frames per second (= sample_rate for mulaw)
     "num_levels": int,           # K: codebook levels (1 for mulaw)
     "codebook_size": int,        # tokens per level (256 for mulaw)
     "num_streams": int,          # S: 1, or 2 for stereo (two-speaker) conversations
     "codec": {"workdir", "checkpoint_step", "config": {...}} | null,
     "num_files": int,            # audio files given (sorted) before skipping
     "files_per_shard": int,
     "num_shards": int,
     "shard_files": ["shard_00000-of-0000N.npz", ...],
     "skipped": {"count": int, "files": {path: reason}},   # malformed files left out
     "text": null | {"tokenizer": path, "vocab_size": int,   # with --text_tokenizer only
              "no_transcript": [names]}}  # files without an alignment JSON: text all -1

``skipped`` is updated by each process after its shards (with several processes
writing at once, a shard's own ``skipped`` array is the authoritative record).

``TOKDIR/shard_{i:05d}-of-{n:05d}.npz`` (uncompressed ``np.savez``) holds the
tokens of sorted input files ``[i * files_per_shard, (i + 1) * files_per_shard)``:

* ``tokens``: int16 (int32 if the codebook exceeds int16) ``[S, K, total_frames]``,
  the utterances' frames concatenated back to back in file order;
* ``starts``: int64 ``[num_utterances]``, each utterance's first frame;
* ``names``: str ``[num_utterances]``, source file base names;
* ``skipped``: str ``[m]``, base names of malformed files left out;
* ``text`` (token directories with a text stream): int32 ``[total_frames]``, Moshi's aligned
  text stream of stream 0's speaker (``audiolm_jax/text/stream.py``) frame by frame beside the
  audio tokens; -1 (no input, no loss) for a file with no alignment JSON. A file whose
  alignment JSON is malformed is left out like an unreadable audio file.

Shards are written to a temporary name in the same folder and renamed with
``os.replace``, so a shard file that exists is complete; re-running
:func:`tokenize_corpus` skips finished shards (resumable, and splittable over
processes: shard ``i`` belongs to process ``i % process_count``).

Training windows (:func:`make_window_iterator`) are ``frames`` consecutive
frames inside one shard (they may cross utterance boundaries, as in a
concatenated corpus), drawn uniformly over all valid window starts of all
shards. With ``eval_fraction > 0`` the last ``floor(eval_fraction * T)``
frames of every shard (T its frame count) are held out: ``split='train'``
windows lie entirely before that point, ``split='eval'`` windows and
:func:`iter_eval_windows` windows entirely after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "TokenDir",
    "WindowIterator",
    "iter_eval_windows",
    "load_token_dir",
    "make_window_iterator",
    "shard_file_name",
    "tokenize_corpus",
]

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
MULAW_CODEBOOK = 256
# Keys that must agree between an existing metadata.json and a resumed run.
_IDENTITY_KEYS = ("format", "tokenizer", "sample_rate", "frame_rate", "num_levels",
                  "codebook_size", "num_streams", "num_files", "files_per_shard", "num_shards",
                  "text_tokenizer")


def shard_file_name(index: int, count: int) -> str:
    return f"shard_{index:05d}-of-{count:05d}.npz"


def _token_dtype(codebook_size: int):
    return np.int16 if codebook_size <= np.iinfo(np.int16).max + 1 else np.int32


def _jsonable(config: Any) -> Any:
    if config is None:
        return None
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=str))


# ----------------------------------------------------------------------------- audio


def _load_channels(path: str, sample_rate: int) -> np.ndarray:
    """float32 [2, samples] at ``sample_rate``; the channels of a stereo file, checked like any
    other input (truncation, NaN/Inf, range) by :func:`load_audio`."""
    from audiolm_jax.data.audio_io import load_audio

    channels = load_audio(path, sample_rate, mono=False)
    if channels.shape[0] != 2:
        raise ValueError(f"stereo_streams=True needs 2-channel audio, but {path!r} has "
                         f"{channels.shape[0]} channel(s)")
    return channels


def _load_streams(path: str, sample_rate: int, stereo: bool) -> np.ndarray:
    """float32 [S, samples]."""
    if stereo:
        return _load_channels(path, sample_rate)
    from audiolm_jax.data.audio_io import load_audio

    return load_audio(path, sample_rate)[None]


# ----------------------------------------------------------------------------- writing


def _atomic_write(path: str, write_fn) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _check_compatible(existing: dict, wanted: dict, out_dir: str) -> None:
    diffs = [f"{k}: existing {existing.get(k)!r} vs requested {wanted.get(k)!r}"
             for k in _IDENTITY_KEYS if existing.get(k) != wanted.get(k)]
    old_codec, new_codec = existing.get("codec"), wanted.get("codec")
    if (old_codec is None) != (new_codec is None):
        diffs.append("codec: one run used a codec, the other did not")
    elif old_codec is not None:
        for k in ("checkpoint_step", "config"):
            if old_codec.get(k) != new_codec.get(k):
                diffs.append(f"codec.{k} differs")
    if diffs:
        raise ValueError(
            f"{os.path.join(out_dir, METADATA_FILE)} was written for a different tokenization "
            f"({'; '.join(diffs)}); use a new output directory or delete the old one")


def tokenize_corpus(
        audio_paths: Sequence[str],
        out_dir: str,
        *,
        tokenizer: str = "codec",
        codec: Any = None,
        sample_rate: int = 16000,
        files_per_shard: int = 64,
        process_index: int = 0,
        process_count: int = 1,
        stereo_streams: bool = False,
        codec_workdir: str | None = None,
        text_tokenizer: str | None = None,
) -> dict[str, Any]:
    """Tokenises ``audio_paths`` into the token directory ``out_dir``.

    Args:
      audio_paths: audio files; they are sorted, then cut into shards of
        ``files_per_shard`` consecutive files.
      out_dir: token directory (created).
      tokenizer: ``'codec'`` (needs ``codec``, a ``LoadedCodec``-like object) or
        ``'mulaw'`` (8-bit μ-law samples at ``sample_rate``).
      process_index, process_count: this process writes shards ``i`` with
        ``i % process_count == process_index``; process 0 writes metadata.json.
      stereo_streams: tokenise each of a 2-channel file's channels as its own
        stream (S=2); a file without exactly 2 channels raises ``ValueError``.
      codec_workdir: recorded in the metadata (defaults to ``codec.workdir``).
      text_tokenizer: a SentencePiece ``.model``: each shard also holds the aligned text
        stream built from the moshi-finetune alignment JSON beside each audio file (same stem,
        ``.json``); see the module docstring.

    Returns:
      ``{'num_files', 'skipped_files': [paths], 'skip_reasons': {path: reason},
      'shards_written': [indices], 'shards_skipped': [indices already present],
      'no_transcript': [paths]}`` for this process's shards.
    """
    from audiolm_jax.data.audio_io import AudioDecodeError
    from audiolm_jax.text.alignment import AlignmentError
    from audiolm_jax.tokenizers.mulaw import mulaw_encode

    if tokenizer not in ("codec", "mulaw"):
        raise ValueError(f"tokenizer must be 'codec' or 'mulaw', got {tokenizer!r}")
    if files_per_shard < 1:
        raise ValueError(f"files_per_shard must be >= 1, got {files_per_shard}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got "
                         f"{process_index}, {process_count}")
    paths = sorted(os.fspath(p) for p in audio_paths)
    if not paths:
        raise ValueError("no audio files to tokenize")
    num_streams = 2 if stereo_streams else 1

    if tokenizer == "codec":
        if codec is None:
            raise ValueError("tokenizer='codec' needs codec= (see audiolm_jax.codec.inference.load_codec)")
        sr = int(codec.sample_rate)
        num_levels, codebook_size = int(codec.num_levels), int(codec.codebook_size)
        frame_rate = float(codec.frame_rate)
        codec_meta = {
            "workdir": codec_workdir or getattr(codec, "workdir", None),
            "checkpoint_step": None if getattr(codec, "step", None) is None else int(codec.step),
            "config": _jsonable(getattr(codec, "config", None)),
        }
        encode = lambda x: np.asarray(codec.encode(x), np.int64)  # [K, frames]
    else:
        sr = int(sample_rate)
        num_levels, codebook_size, frame_rate, codec_meta = 1, MULAW_CODEBOOK, float(sr), None
        encode = lambda x: np.asarray(mulaw_encode(np.asarray(x, np.float32)), np.int64)[None]

    text_rows = None if text_tokenizer is None else _TextRows(text_tokenizer, frame_rate)
    num_shards = -(-len(paths) // files_per_shard)
    shard_files = [shard_file_name(i, num_shards) for i in range(num_shards)]
    metadata = {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "sample_rate": sr,
        "frame_rate": frame_rate,
        "num_levels": num_levels,
        "codebook_size": codebook_size,
        "num_streams": num_streams,
        "codec": codec_meta,
        "num_files": len(paths),
        "files_per_shard": int(files_per_shard),
        "num_shards": num_shards,
        "shard_files": shard_files,
        "skipped": {"count": 0, "files": {}},
        "text_tokenizer": None if text_rows is None else text_rows.identity,
        "text": None if text_rows is None else {"tokenizer": text_rows.path,
                                                "vocab_size": text_rows.tokenizer.vocab_size,
                                                "no_transcript": []},
    }
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, METADATA_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            _check_compatible(json.load(f), metadata, out_dir)
    elif process_index == 0:
        text = json.dumps(metadata, indent=2).encode()
        _atomic_write(meta_path, lambda f: f.write(text))

    dtype = _token_dtype(codebook_size)
    skipped_all, written, already, no_transcript = [], [], [], []
    reasons: dict[str, str] = {}
    for i in range(process_index, num_shards, process_count):
        shard_path = os.path.join(out_dir, shard_files[i])
        if os.path.exists(shard_path):
            already.append(i)
            continue
        chunks, texts, starts, names, skipped = [], [], [], [], []
        offset = 0
        for path in paths[i * files_per_shard:(i + 1) * files_per_shard]:
            try:
                streams = _load_streams(path, sr, stereo_streams)
                words = None if text_rows is None else text_rows.words(path, streams.shape[-1] / sr)
            except (AudioDecodeError, AlignmentError) as e:
                what = "alignment" if isinstance(e, AlignmentError) else "audio"
                warnings.warn(f"skipping {path!r}: malformed {what} file {e.path!r}: {e.reason}")
                skipped.append(path)
                reasons[path] = e.reason if what == "audio" else f"alignment: {e.reason}"
                continue
            codes = np.stack([encode(s) for s in streams])  # [S, K, frames]
            if text_rows is not None:
                texts.append(text_rows.row(words, codes.shape[2]))
                if words is None:
                    no_transcript.append(path)
            if codes.shape[1] != num_levels:
                raise ValueError(f"tokenizer gave {codes.shape[1]} levels for {path!r}, "
                                 f"expected {num_levels}")
            if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
                raise ValueError(f"tokens of {path!r} fall outside [0, {codebook_size})")
            chunks.append(codes.astype(dtype))
            starts.append(offset)
            names.append(os.path.basename(path))
            offset += codes.shape[2]
        tokens = (np.concatenate(chunks, axis=2) if chunks
                  else np.zeros((num_streams, num_levels, 0), dtype))
        arrays = dict(tokens=tokens, starts=np.asarray(starts, np.int64),
                      names=np.asarray(names, dtype=str),
                      skipped=np.asarray([os.path.basename(p) for p in skipped], dtype=str))
        if text_rows is not None:
            arrays["text"] = (np.concatenate(texts) if texts else np.zeros((0,), np.int32))
        _atomic_write(shard_path, lambda f: np.savez(f, **arrays))
        written.append(i)
        skipped_all.extend(skipped)
    if reasons or no_transcript:
        _record_skips(meta_path, reasons, no_transcript)
    return {"num_files": len(paths), "skipped_files": skipped_all, "skip_reasons": reasons,
            "shards_written": written, "shards_skipped": already,
            "no_transcript": no_transcript}


class _TextRows:
    """Builds each file's aligned text row with a SentencePiece model (``audiolm_jax/text``)."""

    def __init__(self, path: str, frame_rate: float):
        from audiolm_jax.text.tokenizer import TextTokenizer

        self.path = os.path.abspath(os.fspath(path))
        self.tokenizer = TextTokenizer.load(self.path)
        self.frame_rate = float(frame_rate)
        # What a resumed run must share: the model's bytes, not where the file lies.
        self.identity = hashlib.sha256(self.tokenizer.model_bytes).hexdigest()[:16]

    def words(self, audio_path: str, seconds: float):
        from audiolm_jax.text.alignment import alignment_path, load_alignment

        return load_alignment(alignment_path(audio_path), duration=seconds)

    def row(self, words, num_frames: int) -> np.ndarray:
        from audiolm_jax.text.stream import text_stream

        return text_stream(words, num_frames, self.tokenizer, frame_rate=self.frame_rate)


def _record_skips(meta_path: str, reasons: dict[str, str],
                  no_transcript: Sequence[str] = ()) -> None:
    """Merges this run's skipped files (and files without a transcript) into metadata.json
    (kept across resumed runs)."""
    if not os.path.exists(meta_path):
        return  # another process writes it; the shards' own ``skipped`` arrays still hold them
    with open(meta_path) as f:
        metadata = json.load(f)
    files = dict(metadata.get("skipped", {}).get("files", {}))
    files.update(reasons)
    metadata["skipped"] = {"count": len(files), "files": dict(sorted(files.items()))}
    if no_transcript and metadata.get("text") is not None:
        names = set(metadata["text"].get("no_transcript", []))
        names.update(os.path.basename(p) for p in no_transcript)
        metadata["text"]["no_transcript"] = sorted(names)
    text = json.dumps(metadata, indent=2).encode()
    _atomic_write(meta_path, lambda f: f.write(text))


# ----------------------------------------------------------------------------- reading


def _mmap_npz_member(path: str, name: str) -> np.ndarray | None:
    """Memory-maps ``name`` of an uncompressed .npz; None if not possible."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            n_name = int.from_bytes(local[26:28], "little")
            n_extra = int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + n_name + n_extra)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            offset = f.tell()
        if dtype.hasobject:
            return None
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


class Shard:
    """One shard; ``tokens`` is memory-mapped (or loaded) on first access."""

    def __init__(self, path: str):
        self.path = path
        self._tokens = None
        self._text = None
        self._small = None

    @property
    def tokens(self) -> np.ndarray:
        """[S, K, total_frames] int16/int32."""
        if self._tokens is None:
            arr = _mmap_npz_member(self.path, "tokens")
            if arr is None:
                with np.load(self.path, allow_pickle=False) as z:
                    arr = z["tokens"]
            self._tokens = arr
        return self._tokens

    @property
    def text(self) -> np.ndarray | None:
        """int32 [total_frames] aligned text stream, or None for a directory without text."""
        if self._text is None:
            arr = _mmap_npz_member(self.path, "text")
            if arr is None:
                with np.load(self.path, allow_pickle=False) as z:
                    arr = z["text"] if "text" in z.files else False
            self._text = arr
        return None if self._text is False else self._text

    def _load_small(self) -> dict[str, np.ndarray]:
        if self._small is None:
            with np.load(self.path, allow_pickle=False) as z:
                self._small = {k: z[k] for k in ("starts", "names", "skipped") if k in z.files}
        return self._small

    @property
    def starts(self) -> np.ndarray:
        return self._load_small()["starts"]

    @property
    def names(self) -> np.ndarray:
        return self._load_small()["names"]

    @property
    def num_frames(self) -> int:
        return int(self.tokens.shape[-1])

    def __repr__(self) -> str:
        return f"Shard({self.path!r})"


class TokenDir:
    """A loaded token directory (see the module docstring for the format)."""

    def __init__(self, path: str, metadata: dict[str, Any], shards: list[Shard]):
        self.path = path
        self.metadata = metadata
        self.shards = shards
        self.num_levels = int(metadata["num_levels"])
        self.num_streams = int(metadata["num_streams"])
        self.codebook_size = int(metadata["codebook_size"])
        self.frame_rate = float(metadata["frame_rate"])
        self.tokenizer = metadata["tokenizer"]
        self.text = metadata.get("text")  # None, or the text stream's tokenizer and counts
        self._frames = None

    @property
    def shard_frames(self) -> list[int]:
        if self._frames is None:
            frames = []
            for shard in self.shards:
                t = shard.tokens
                if t.ndim != 3 or t.shape[:2] != (self.num_streams, self.num_levels):
                    raise ValueError(f"{shard.path} holds tokens of shape {t.shape}; metadata says "
                                     f"[{self.num_streams}, {self.num_levels}, frames]")
                text = shard.text if self.text is not None else None
                if self.text is not None and (text is None or text.shape != (t.shape[2],)):
                    raise ValueError(f"{shard.path}: its text stream does not match its "
                                     f"{t.shape[2]} token frames (metadata lists a text stream)")
                frames.append(int(t.shape[2]))
            self._frames = frames
        return self._frames

    @property
    def total_frames(self) -> int:
        return int(sum(self.shard_frames))

    def __repr__(self) -> str:
        return (f"TokenDir({self.path!r}, tokenizer={self.tokenizer!r}, shards={len(self.shards)}, "
                f"S={self.num_streams}, K={self.num_levels}, V={self.codebook_size})")


def load_token_dir(tok_dir: str) -> TokenDir:
    """Opens a token directory written by :func:`tokenize_corpus`.

    Raises FileNotFoundError naming the directory if it, its metadata.json, or
    any listed shard is missing (e.g. tokenisation has not finished).
    """
    tok_dir = os.fspath(tok_dir)
    meta_path = os.path.join(tok_dir, METADATA_FILE)
    if not os.path.isdir(tok_dir):
        raise FileNotFoundError(f"token directory {tok_dir!r} does not exist")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{tok_dir!r} is not a token directory: {meta_path} is missing")
    with open(meta_path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format {metadata.get('format')!r}")
    missing = [n for n in metadata["shard_files"] if not os.path.exists(os.path.join(tok_dir, n))]
    if missing:
        raise FileNotFoundError(
            f"token directory {tok_dir!r} is incomplete: {len(missing)} of "
            f"{len(metadata['shard_files'])} shards missing (e.g. {missing[0]}); "
            f"rerun tokenize_corpus to finish it")
    return TokenDir(tok_dir, metadata,
                    [Shard(os.path.join(tok_dir, n)) for n in metadata["shard_files"]])


# ----------------------------------------------------------------------------- windows


def _region(num_frames: int, split: str, eval_fraction: float) -> tuple[int, int]:
    """[lo, hi) frames of a shard that belong to ``split``."""
    boundary = num_frames - int(np.floor(eval_fraction * num_frames))
    return (0, boundary) if split == "train" else (boundary, num_frames)


def _check_split(split: str, eval_fraction: float) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
    if split == "eval" and eval_fraction == 0.0:
        raise ValueError("split='eval' needs eval_fraction > 0")


class WindowIterator:
    """Infinite iterator of ``{'codes': int32 [batch, S, K, frames]}`` random windows (plus
    ``'text': int32 [batch, frames]``, the aligned text rows, in a directory with text).

    Batch ``n`` of the *global* batch (``batch_size * shard_count`` windows) is
    drawn with ``np.random.default_rng([seed, n])`` among all valid window
    starts (numbered globally over all shards); process ``shard_index`` reads
    only rows ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of
    it. So the global batch is the same whatever the process count, and each
    process loads only its own windows. ``get_state()`` is
    ``{'step': n, 'seed', 'shard_index', 'shard_count'}`` (JSON-serialisable);
    ``set_state`` resumes exactly.
    """

    def __init__(self, token_dir: TokenDir, *, frames: int, batch_size: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1, split: str = "train",
                 eval_fraction: float = 0.0):
        _check_split(split, eval_fraction)
        if frames < 1 or batch_size < 1:
            raise ValueError(f"frames and batch_size must be >= 1, got {frames}, {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
        self.token_dir = token_dir
        self.frames, self.batch_size, self.seed = int(frames), int(batch_size), int(seed)
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.step = 0
        lows, counts = [], []
        for n in token_dir.shard_frames:
            lo, hi = _region(n, split, eval_fraction)
            lows.append(lo)
            counts.append(max(0, hi - lo - self.frames + 1))
        self._lows = np.asarray(lows, np.int64)
        self._ends = np.cumsum(np.asarray(counts, np.int64))  # global start index ends
        total = int(self._ends[-1]) if len(self._ends) else 0
        self.num_windows = total
        if self.num_windows == 0:
            raise ValueError(
                f"{token_dir.path!r} has no {split} window of {frames} frames "
                f"(shard frames: {token_dir.shard_frames}, "
                f"eval_fraction={eval_fraction})")

    def __iter__(self) -> "WindowIterator":
        return self

    def _window(self, g: int) -> tuple[Any, int, int]:
        s = int(np.searchsorted(self._ends, g, side="right"))
        before = int(self._ends[s - 1]) if s else 0
        start = int(self._lows[s]) + g - before
        return self.token_dir.shards[s], start, start + self.frames

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.step])
        starts = rng.integers(0, self.num_windows, size=self.batch_size * self.shard_count)
        mine = starts[self.shard_index * self.batch_size:(self.shard_index + 1) * self.batch_size]
        windows = [self._window(int(g)) for g in mine]
        self.step += 1
        return _window_batch(windows, self.token_dir.text is not None)

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "shard_index": self.shard_index,
                "shard_count": self.shard_count}

    def set_state(self, state: dict[str, Any]) -> None:
        for key in ("seed", "shard_index", "shard_count"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"iterator state was saved with {key}={state[key]}, "
                                 f"this iterator has {key}={getattr(self, key)}")
        self.step = int(state["step"])


def make_window_iterator(token_dir: TokenDir, *, frames: int, batch_size: int, seed: int,
                         shard_index: int = 0, shard_count: int = 1, split: str = "train",
                         eval_fraction: float = 0.0) -> WindowIterator:
    """Training iterator of random token windows; see :class:`WindowIterator`."""
    return WindowIterator(token_dir, frames=frames, batch_size=batch_size, seed=seed,
                          shard_index=shard_index, shard_count=shard_count, split=split,
                          eval_fraction=eval_fraction)


def iter_eval_windows(token_dir: TokenDir, frames: int, batch_size: int,
                      max_batches: int | None = None, *, eval_fraction: float = 0.0,
                      shard_index: int = 0, shard_count: int = 1,
                      drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, non-overlapping windows from the start of each shard.

    Windows are ``[lo + m * frames, lo + (m+1) * frames)`` for each shard in
    order, where ``lo`` is 0 or, with ``eval_fraction > 0``, the start of the
    shard's held-out region; window number ``w`` goes to ``shard_index`` if
    ``w % shard_count == shard_index``. Yields ``{'codes': int32 [batch, S, K,
    frames]}`` (and ``'text'`` as :class:`WindowIterator`) (a final partial batch only with ``drop_remainder=False``), at
    most ``max_batches`` batches.
    """
    if frames < 1 or batch_size < 1:
        raise ValueError(f"frames and batch_size must be >= 1, got {frames}, {batch_size}")
    if eval_fraction > 0:
        _check_split("eval", eval_fraction)
    batch, emitted, w = [], 0, 0
    for shard, n in zip(token_dir.shards, token_dir.shard_frames):
        lo, hi = _region(n, "eval", eval_fraction) if eval_fraction > 0 else (0, n)
        for start in range(lo, hi - frames + 1, frames):
            mine = w % shard_count == shard_index
            w += 1
            if not mine:
                continue
            batch.append((shard, start, start + frames))
            if len(batch) == batch_size:
                yield _window_batch(batch, token_dir.text is not None)
                batch, emitted = [], emitted + 1
                if max_batches is not None and emitted >= max_batches:
                    return
    if batch and not drop_remainder:
        yield _window_batch(batch, token_dir.text is not None)


def _window_batch(windows, with_text: bool) -> dict[str, np.ndarray]:
    """``{'codes': [B, S, K, frames]}`` (and ``'text': [B, frames]``) of (shard, lo, hi)."""
    batch = {"codes": np.stack([shard.tokens[:, :, lo:hi] for shard, lo, hi in windows]
                               ).astype(np.int32)}
    if with_text:
        batch["text"] = np.stack([shard.text[lo:hi] for shard, lo, hi in windows]
                                 ).astype(np.int32)
    return batch
