"""The aligned text stream ("inner monologue") of Moshi, built as moshi-finetune builds it.

Moshi predicts, at every 12.5 Hz audio frame, one text token before that frame's audio tokens: the
text of its own speech, placed where the words are spoken. This module turns word alignments
(:class:`audiolm_jax.text.alignment.Word`) into that per-frame stream of ids. It follows
``Interleaver.prepare_item`` and ``Interleaver.build_token_stream`` in moshi-finetune's
``finetune/data/interleaver.py`` with the options its ``train.py`` uses (``keep_main_only=True``,
everything else at its default); the other options are parameters here with their defaults.

Word selection, in order:

1. Words are sorted by start time (a stable sort).
2. Each word is stripped of surrounding whitespace and encoded on its own. A word with newlines is
   encoded line by line, the lines joined by the tokenizer's newline piece (the last id of
   ``encode("\\n")``; when that is empty, the lines are simply concatenated).
3. ``keep_main_only`` (default True): only ``main_speaker``'s words stay. Otherwise every speaker's
   words go in, and ``use_bos_eos`` prepends BOS to a main-speaker word that follows another
   speaker (or opens the file) and EOS to another speaker's word that follows the main speaker.
4. Words with ``end <= start`` are dropped (after the BOS/EOS step, so a BOS carried by such a
   word is dropped with it).
5. ``audio_delay`` (seconds, default 0) shifts every word ``audio_delay`` earlier and drops words
   ending at or before ``audio_delay``.

Frame placement, for frames ``t = 0 .. num_frames - 1`` with ``fps = frame_rate``:

- Every frame starts as PAD (id 3).
- At frame ``t`` the words with ``start * fps < t + 1`` that have not arrived yet arrive, in order:
  a word arrives at frame ``floor(start * fps)`` (frame 0 for negative starts). An arriving word
  replaces the queue of tokens still waiting to be written, so a word that has not finished
  writing its tokens when the next word arrives loses the rest, and of several words arriving at
  the same frame only the last is written. (``keep_and_shift=True`` appends to the queue instead,
  so no token is lost and late ones spill onto the following frames.)
- A frame with a queued token takes the next one: a word of ``n`` tokens fills ``n`` consecutive
  frames from its start frame, cut short by the next word's arrival or the end of the stream.
  If the frame before holds PAD (or the in-word padding), that frame becomes EPAD (id 0). So EPAD
  marks the frame before a word's first token, except at frame 0 and when the previous word's
  last token sits right before it.
- A frame with no queued token, up to and including frame ``int(end * fps)`` of the last arrived
  word, holds the in-word padding (``in_word_pad_id``, PAD by default, so by default nothing
  shows).
- Words starting at or after ``num_frames / fps`` never arrive.
- With ``audio_delay < 0``, the first ``int(fps * -audio_delay)`` frames become ``zero_id``.

No alignment at all (``words is None``) gives ``zero_id`` (-1, Moshi's ``zero_token_id``: no
input embedding, no loss) on every frame; an empty word list gives PAD on every frame.

Points where moshi-finetune's code surprised us, and what this module does about them:

- Its ``use_bos_eos`` only acts when ``keep_main_only`` is False (an ``elif``); with both set it
  is silently ignored. Here that combination raises ``ValueError``.
- Its ``proba`` ("probability of keeping the text") is stored but never used; it has no
  counterpart here.
- ``InterleavedTokenizer`` passes the chunk's audio frame count where ``prepare_item`` expects
  seconds, so the stream comes out ``ceil(frames * 12.5)`` frames long; a negative-width
  ``torch.nn.functional.pad`` then crops it to the window's frame count. That equals building over
  the window's frames (words in a window start before its end), with one visible effect: on a
  file's last, shorter chunk the frames past the audio's end keep PAD and word tokens while the
  audio codes there are -1. Callers reproduce it by passing the window's frame count
  (``ceil(window_seconds * fps)``) as ``num_frames``, not the chunk's.
- Two edge cases where their code fails and this module does not: a word with a newline when
  ``encode("\n")`` is empty (theirs raises ``IndexError``; here the lines are concatenated), and
  a negative ``audio_delay`` longer than the stream (their list slice assignment lengthens the
  stream; here it stays ``num_frames`` long, all ``zero_id``).
- Words that arrive in the same frame, or before the previous word has written all its tokens,
  lose tokens (see above). This module keeps that, so fine-tuning here sees the streams
  moshi-finetune gives.

Windows of a longer file are cut by :func:`crop_words`, as ``InterleavedTokenizer`` cuts them.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
from typing import Protocol, Sequence

import numpy as np

from audiolm_jax.text.alignment import MAIN_SPEAKER, Word

__all__ = [
    "text_stream",
    "crop_words",
    "word_tokens",
    "TEXT_PAD_ID",
    "TEXT_EPAD_ID",
    "ZERO_TOKEN_ID",
    "FRAME_RATE",
]

FRAME_RATE = 12.5  # Mimi's frame rate (Hz)
TEXT_PAD_ID = 3  # Moshi's existing_text_padding_id
TEXT_EPAD_ID = 0  # Moshi's existing_text_end_padding_id
ZERO_TOKEN_ID = -1  # Moshi's zero_token_id: no input, no loss


class SupportsEncode(Protocol):
    def encode(self, text: str) -> list[int]: ...


def crop_words(words: Sequence[Word], start: float, duration: float) -> list[Word]:
    """The words of the window ``[start, start + duration)``, with times relative to ``start``.

    A word belongs to the window when its start does (its end may lie past the window, and a word
    that started before the window is left out even if it runs into it), as in moshi-finetune's
    ``InterleavedTokenizer``. ``words`` must be sorted by start, as :func:`load_alignment` ensures.
    """
    starts = [w.start for w in words]
    lo = bisect.bisect_left(starts, start)
    hi = bisect.bisect_left(starts, start + duration)
    return [
        dataclasses.replace(w, start=w.start - start, end=w.end - start) for w in words[lo:hi]
    ]


def word_tokens(tokenizer: SupportsEncode, text: str) -> list[int]:
    """The ids of one aligned word: stripped, encoded line by line (see the module docstring)."""
    lines = text.strip().split("\n")
    if len(lines) == 1:
        return [int(i) for i in tokenizer.encode(lines[0])]
    newline = [int(i) for i in tokenizer.encode("\n")][-1:]
    out: list[int] = []
    for k, line in enumerate(lines):
        if k:
            out.extend(newline)
        out.extend(int(i) for i in tokenizer.encode(line))
    return out


def _special_id(tokenizer, name: str, given: int | None) -> int:
    if given is not None:
        return int(given)
    value = getattr(tokenizer, name, None)
    if callable(value):  # sentencepiece.SentencePieceProcessor has bos_id() / eos_id() methods
        value = value()
    if value is None or int(value) < 0:
        raise ValueError(f"use_bos_eos needs {name}: pass it, or use a tokenizer that has one")
    return int(value)


def text_stream(
    words: Sequence[Word] | None,
    num_frames: int,
    tokenizer: SupportsEncode,
    frame_rate: float = FRAME_RATE,
    main_speaker: str = MAIN_SPEAKER,
    pad_id: int = TEXT_PAD_ID,
    epad_id: int = TEXT_EPAD_ID,
    *,
    zero_id: int = ZERO_TOKEN_ID,
    in_word_pad_id: int | None = None,
    keep_main_only: bool = True,
    use_bos_eos: bool = False,
    bos_id: int | None = None,
    eos_id: int | None = None,
    keep_and_shift: bool = False,
    audio_delay: float = 0.0,
) -> np.ndarray:
    """The text stream of ``num_frames`` frames at ``frame_rate``: int32 ``[num_frames]``.

    ``words`` are the alignment's words with times in seconds from the stream's first frame (None:
    the file has no transcript). ``tokenizer`` is anything with ``encode(str) -> list[int]``;
    ``bos_id``/``eos_id`` default to the tokenizer's own when ``use_bos_eos`` needs them. The rules
    are in the module docstring.
    """
    num_frames = int(num_frames)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if not frame_rate > 0:
        raise ValueError(f"frame_rate must be > 0, got {frame_rate!r}")
    if keep_main_only and use_bos_eos:
        raise ValueError(
            "use_bos_eos needs keep_main_only=False (moshi-finetune ignores BOS/EOS when it keeps "
            "only the main speaker)"
        )
    if words is None:
        return np.full((num_frames,), zero_id, dtype=np.int32)
    in_word = pad_id if in_word_pad_id is None else int(in_word_pad_id)

    # (tokens, start, end, speaker), sorted by start; sorted() is stable.
    items = [
        (word_tokens(tokenizer, w.text), float(w.start), float(w.end), w.speaker)
        for w in sorted(words, key=lambda w: w.start)
    ]
    if keep_main_only:
        items = [it for it in items if it[3] == main_speaker]
    elif use_bos_eos:
        bos = _special_id(tokenizer, "bos_id", bos_id)
        eos = _special_id(tokenizer, "eos_id", eos_id)
        marked = []
        previous = None
        for toks, start, end, speaker in items:
            if speaker != previous:
                if speaker == main_speaker:
                    toks = [bos, *toks]
                elif previous == main_speaker:
                    toks = [eos, *toks]
            previous = speaker
            marked.append((toks, start, end, speaker))
        items = marked
    items = [it for it in items if it[1] < it[2]]
    if audio_delay != 0:
        items = [
            (toks, start - audio_delay, end - audio_delay, speaker)
            for toks, start, end, speaker in items
            if end > audio_delay
        ]

    out = [pad_id] * num_frames
    queue: collections.deque[int] = collections.deque()
    last_end_frame = -1
    i = 0
    for t in range(num_frames):
        while i < len(items) and items[i][1] * frame_rate < t + 1:
            toks, _, end, _ = items[i]
            last_end_frame = int(end * frame_rate)  # int(): truncation toward 0, as theirs
            if keep_and_shift:
                queue.extend(toks)
            else:
                queue = collections.deque(toks)
            i += 1
        if queue:
            if t > 0 and out[t - 1] in (pad_id, in_word):
                out[t - 1] = epad_id
            out[t] = queue.popleft()
        elif t <= last_end_frame:
            out[t] = in_word
    if audio_delay < 0:
        prefix = int(frame_rate * -audio_delay)
        out[:prefix] = [zero_id] * min(prefix, num_frames)
    return np.asarray(out, dtype=np.int32)
