"""Word alignments in moshi-finetune's JSON format, read and checked.

moshi-finetune trains on stereo WAVs (left channel: the model's voice, right: the user) and reads
each file's transcript from a JSON file beside it, with the same stem::

    data_stereo/a.wav
    data_stereo/a.json   {"alignments": [["Hello", [0.48, 0.80], "SPEAKER_MAIN"], ...]}

Each entry is ``[word, [start_s, end_s], speaker]``. Their ``annotate.py`` (Whisper word timestamps
on the left channel) writes every word as ``"SPEAKER_MAIN"``, the model's voice; other labels belong
to the user. Words often keep Whisper's leading space; the stream builder strips it. Other top-level
keys (``"text_conditions"``) are ignored here.

:func:`load_alignment` turns the file into a list of :class:`Word` and rejects what would silently
corrupt the text stream: malformed JSON, words out of start order (moshi-finetune cuts training
windows by bisecting on start times, which needs them sorted), negative durations, times outside
the audio, unknown speakers. Each rejection is an :class:`AlignmentError` naming the file and the
reason on one line. A missing file is not an error: it gives None, and the caller trains that file
with a text stream of ``zero_token_id`` (no text loss, no text input).

Words with ``start == end`` pass: moshi-finetune keeps them in the file and drops them only when it
builds the stream, and so does :func:`audiolm_jax.text.stream.text_stream`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Collection

__all__ = [
    "Word",
    "AlignmentError",
    "alignment_path",
    "load_alignment",
    "DEFAULT_SPEAKERS",
    "MAIN_SPEAKER",
    "DEFAULT_TOLERANCE_S",
]

MAIN_SPEAKER = "SPEAKER_MAIN"
DEFAULT_SPEAKERS = frozenset({MAIN_SPEAKER, "SPEAKER_USER"})
# One Mimi frame (12.5 Hz): word timestamps from an aligner may run this far past the audio's end.
DEFAULT_TOLERANCE_S = 1 / 12.5


@dataclasses.dataclass(frozen=True)
class Word:
    """One aligned word: its text as written in the file, its span in seconds, its speaker."""

    text: str
    start: float
    end: float
    speaker: str


class AlignmentError(ValueError):
    """An alignment file that cannot be used; the message is ``"<file>: <reason>"`` on one line."""

    def __init__(self, path: str | os.PathLike, reason: str):
        # Both parts go to args, so the error pickles back (data-loader workers send it across).
        super().__init__(str(path), " ".join(str(reason).split()))
        self.path = str(path)
        self.reason = self.args[1]

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def alignment_path(audio_path: str | os.PathLike) -> pathlib.Path:
    """The alignment file of an audio file: same folder and stem, suffix ``.json``."""
    return pathlib.Path(audio_path).with_suffix(".json")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time(value) -> float | None:
    """A finite number of seconds, or None (bools and strings are not times)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def load_alignment(
    path: str | os.PathLike,
    duration: float | None = None,
    *,
    speakers: Collection[str] | None = DEFAULT_SPEAKERS,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> list[Word] | None:
    """Read the alignment JSON at ``path`` (see :func:`alignment_path` for a WAV's).

    Returns None when the file does not exist, else the words in file order. ``duration`` is the
    audio's length in seconds; a word ending more than ``tolerance`` seconds past it, or starting
    more than ``tolerance`` before 0, is an error (None skips the end check). ``speakers`` is the
    set of accepted labels; None accepts any string. Raises :class:`AlignmentError`.
    """
    path = pathlib.Path(path)
    if duration is not None:
        d = _time(duration)
        if d is None or d < 0:
            raise ValueError(f"{path}: audio duration must be a finite number >= 0, got {duration!r}")
        duration = d
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    allowed = None if speakers is None else frozenset(speakers)

    def bad(reason: str) -> AlignmentError:
        return AlignmentError(path, reason)

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise bad(f"cannot read the file ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise bad(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object with an 'alignments' list, got {type(data).__name__}")
    if "alignments" not in data:
        raise bad("missing key 'alignments'")
    entries = data["alignments"]
    if not isinstance(entries, list):
        raise bad(f"'alignments' must be a list, got {type(entries).__name__}")

    words: list[Word] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 3:
            raise bad(f"alignments[{i}]: expected [word, [start, end], speaker], got {_short(entry)}")
        text, span, speaker = entry
        if not isinstance(text, str):
            raise bad(f"alignments[{i}]: the word must be a string, got {_short(text)}")
        where = f"alignments[{i}] ({_short(text, 30)})"
        if not isinstance(span, list) or len(span) != 2:
            raise bad(f"{where}: expected [start, end] in seconds, got {_short(span)}")
        start, end = _time(span[0]), _time(span[1])
        if start is None or end is None:
            raise bad(f"{where}: times must be finite numbers, got {_short(span)}")
        if not isinstance(speaker, str):
            raise bad(f"{where}: the speaker must be a string, got {_short(speaker)}")
        if allowed is not None and speaker not in allowed:
            raise bad(f"{where}: unknown speaker {speaker!r}; allowed: {sorted(allowed)}")
        if end < start:
            raise bad(f"{where}: ends at {end} s, before its start {start} s")
        if start < -tolerance:
            raise bad(f"{where}: starts at {start} s, before the audio")
        if duration is not None and end > duration + tolerance:
            raise bad(f"{where}: ends at {end} s, past the audio's {duration} s")
        if words and start < words[-1].start:
            raise bad(
                f"words out of order: {where} starts at {start} s, before "
                f"alignments[{i - 1}] ({_short(words[-1].text, 30)}) at {words[-1].start} s"
            )
        words.append(Word(text, start, end, speaker))
    return words
