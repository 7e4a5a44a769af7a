"""A built-in, word-aligned dialogue corpus that a small Moshi can learn to talk on (no download).

:class:`SyntheticAlignedDialogueCorpus` generates stereo two-speaker conversations in made-up words,
spoken by the formant synthesiser of :mod:`audiolm_jax.data.synthetic`, together with the word
alignment Moshi's text stream ("inner monologue") is built from. Item ``i`` is bit-identical for the
same ``(seed, split, i)`` in any process and in any order. :func:`write_aligned_dialogues` writes
items as moshi-finetune's training files.

**The lexicon.** :data:`LEXICON` is a fixed list of 46 made-up words, the same for every seed, so
every corpus shares one vocabulary (and one text tokenizer, trained on :func:`lexicon_words`). A
word is a fixed sequence of 1-3 syllables; a syllable is an onset and a vowel from the
synthesiser's tables, and the spelling *is* the syllable sequence:

=======  =======================================  ==================
letters  sound                                    synthesiser entry
=======  =======================================  ==================
(none)   vowel onset                              no consonant
``s``    s-like fricative (3.5-7.5 kHz noise)     ``FRICATIVES[0]``
``sh``   sh-like fricative (2-4.5 kHz noise)      ``FRICATIVES[1]``
``f``    f-like fricative (weak broadband noise)  ``FRICATIVES[2]``
``k``    plosive (closure, then a burst)          ``"plos"``
``a``    /a/                                      ``VOWELS[0]``
``i``    /i/                                      ``VOWELS[1]``
``u``    /u/                                      ``VOWELS[2]``
``e``    /e/                                      ``VOWELS[3]``
``o``    /o/                                      ``VOWELS[4]``
=======  =======================================  ==================

Every syllable ends in exactly one vowel letter, so a spelling splits into syllables one way only
(``"kasu"`` = ``ka`` + ``su``, ``"kei"`` = ``ke`` + ``i``), and distinct spellings are distinct
sounds. The five most distinct vowels of the table are used (the corner vowels and /e/, /o/), so
words stay tellable apart in a single noisy rendition. Each word also has a fixed stressed
syllable (its first), which carries a pitch accent. What varies per occurrence is what varies
between two people saying the same word: syllable durations (about +-25 %), pitch, formant
targets (+-5 %), level and noise; the syllable identities never change, so a word sounds like
itself every time (``tests/test_dialogue_corpus.py`` checks that a word's two renditions are
closer to each other than to other words).

**The conversation grammar.** A dialogue is a sequence of *exchanges*: the user (channel 1,
``SPEAKER_USER``) says a prompt, the model (channel 0, ``SPEAKER_MAIN``) answers after a short gap.
Answers are a function of the prompt and of a fixed "world" (every noun has one colour and one
place), so a model that understood the user's speech can predict its own words:

========  =====================================  =================================================
exchange  user says                              model answers
========  =====================================  =================================================
greet     ``sa`` (hello) or ``shoki`` (morning)  the same greeting, then ``kiko`` (friend)
colour    ``kishu N`` (what colour is N?)        ``N i C(N)`` (N is C(N))
where     ``fua N`` (where is N?)                ``N o P(N)`` (N in P(N))
check     ``N i C`` (N is C?)                    ``kafi`` (yes) if C = C(N), else ``fo C(N)`` (no)
count     ``eko n_k`` (count from n_k)           ``n_k+1 n_k+2 n_k+3``, the next three numbers
echo      ``sefo X Y`` (say X Y)                 ``X Y`` (X, Y: random nouns, colours or places)
story     ``ushi`` (tell me something)           a walk of 3-5 words along :data:`CHAIN`
bye       ``fe`` (bye)                           ``fe kiko``, and the dialogue falls silent
========  =====================================  =================================================

``N`` is one of the :data:`NOUNS`, ``C(N)`` = ``COLOURS[j % 6]`` and ``P(N)`` =
``PLACES[(3 * j + 1) % 6]`` for the ``j``-th noun, and ``n_k`` the ``k``-th of the
:data:`NUMBERS`. The story chain is a fixed bigram table: every content word (noun, colour,
place) has two possible successors, so a story costs one bit per word to predict once its first
word is heard. A dialogue opens with a greeting (probability 0.75), later prompts may start with
``osu`` (thanks, for the previous answer), ``bye`` ends the conversation (probability 0.08 per
exchange after the first), and exchanges continue until the next turn no longer fits.

**Timing.** Words inside a turn are 30-100 ms apart; the model answers 150-550 ms after the user
stops (10 % of the time it starts up to 150 ms early, a small overlap, as people do, but never
before the middle of the prompt, so turns alternate in start order); the next
prompt follows the answer after 300-900 ms. Turns never overlap within a channel; a channel is
exactly zero outside its own turns (plus 50 ms before and 100 ms after each turn, where the
synthesiser writes its faint room noise).

**The alignment format** is moshi-finetune's (read by :func:`audiolm_jax.text.alignment.
load_alignment`)::

    {"alignments": [["kishu", [0.213, 0.588], "SPEAKER_USER"], ["kasu", [0.651, 1.004],
      "SPEAKER_USER"], ["kasu", [1.39, 1.742], "SPEAKER_MAIN"], ...]}

Entries are sorted by start. A word's span runs from the onset of its first syllable (the start of
the fricative noise or of the plosive burst; the vowel start for a bare vowel) to the end of its
last vowel, taken from the synthesis plan (not measured from the audio) and rounded to 1 ms.
Items also carry ``'turns'``: ``(channel, start, end)`` in samples, from a turn's first word onset
to its last word's end.

Synthesis costs what :func:`audiolm_jax.data.synthetic.synthesize_utterance` costs for the voiced
time only (each turn is synthesised over its own length): about 5 ms per second of 24 kHz
dialogue on one CPU core, so items are generated on the fly and not cached.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from typing import Any, Sequence

import numpy as np

from audiolm_jax.data.synthetic import (FRICATIVES, SPLITS, VOWELS, SyntheticDialogueCorpus,
                                        Voice, describe_corpus, synthesize_utterance)

__all__ = [
    "LexWord",
    "LEXICON",
    "NOUNS",
    "COLOURS",
    "PLACES",
    "NUMBERS",
    "CHAIN",
    "MAIN_SPEAKER",
    "USER_SPEAKER",
    "lexicon_words",
    "lexicon_word",
    "colour_of",
    "place_of",
    "sample_exchange",
    "plan_words",
    "synthesize_words",
    "SyntheticAlignedDialogueCorpus",
    "write_aligned_dialogues",
]

MAIN_SPEAKER = "SPEAKER_MAIN"  # channel 0, the model's voice (moshi-finetune's label)
USER_SPEAKER = "SPEAKER_USER"  # channel 1

# Spelling -> synthesiser entry. Onsets: None, ("fric", band index) or ("plos", 0).
_ONSETS: dict[str, tuple[str, int] | None] = {
    "": None, "s": ("fric", 0), "sh": ("fric", 1), "f": ("fric", 2), "k": ("plos", 0)}
_VOWEL_LETTERS = {"a": 0, "i": 1, "u": 2, "e": 3, "o": 4}
_SYLLABLE = re.compile(r"(sh|s|f|k)?([aiueo])")
assert len(FRICATIVES) == 3 and len(VOWELS) >= 5  # the tables this spelling maps onto


@dataclasses.dataclass(frozen=True)
class LexWord:
    """One lexicon word: its spelling, role in the grammar, and fixed syllables.

    ``syllables`` is a tuple of ``(onset, vowel)``: ``onset`` None, ``("fric", band)`` or
    ``("plos", 0)``; ``vowel`` a row of the synthesiser's vowel table.
    """

    text: str
    role: str
    gloss: str
    syllables: tuple[tuple[tuple[str, int] | None, int], ...]


def _syllables(text: str) -> tuple[tuple[tuple[str, int] | None, int], ...]:
    parts = _SYLLABLE.findall(text)
    if "".join(c + v for c, v in parts) != text or not 1 <= len(parts) <= 3:
        raise ValueError(f"{text!r} is not 1-3 syllables of the lexicon's alphabet")
    return tuple((_ONSETS[c], _VOWEL_LETTERS[v]) for c, v in parts)


# (spelling, role, gloss). Fixed by hand, so every corpus and every seed shares it.
_ENTRIES: tuple[tuple[str, str, str], ...] = (
    # social
    ("sa", "greet", "hello"), ("shoki", "greet", "good morning"), ("kiko", "social", "friend"),
    ("fe", "bye", "bye"), ("osu", "social", "thanks"), ("kafi", "answer", "yes"),
    ("fo", "answer", "no"),
    # prompts and function words
    ("kishu", "prompt", "what colour"), ("fua", "prompt", "where"), ("eko", "prompt", "count from"),
    ("sefo", "prompt", "say"), ("ushi", "prompt", "tell me something"), ("i", "function", "is"),
    ("o", "function", "in"),
    # nouns
    ("kasu", "noun", "cat"), ("fiko", "noun", "dog"), ("shue", "noun", "bird"),
    ("oka", "noun", "fish"), ("sifa", "noun", "tree"), ("kuse", "noun", "cup"),
    ("fushi", "noun", "ball"), ("esa", "noun", "book"), ("kashi", "noun", "boat"),
    ("feku", "noun", "apple"),
    # colours
    ("shia", "colour", "red"), ("ku", "colour", "blue"), ("fosi", "colour", "green"),
    ("ake", "colour", "yellow"), ("sushi", "colour", "white"), ("kefo", "colour", "black"),
    # places
    ("shaku", "place", "house"), ("ifo", "place", "garden"), ("sake", "place", "river"),
    ("fuka", "place", "hill"), ("oshi", "place", "town"), ("kesa", "place", "forest"),
    # numbers, in counting order
    ("ki", "number", "one"), ("shu", "number", "two"), ("fa", "number", "three"),
    ("so", "number", "four"), ("ke", "number", "five"), ("fi", "number", "six"),
    ("su", "number", "seven"), ("ko", "number", "eight"), ("kei", "number", "nine"),
    ("shosa", "number", "ten"),
)

LEXICON: tuple[LexWord, ...] = tuple(LexWord(t, r, g, _syllables(t)) for t, r, g in _ENTRIES)
_BY_TEXT = {w.text: w for w in LEXICON}
if len(_BY_TEXT) != len(LEXICON):
    raise AssertionError("lexicon spellings must be distinct")


def _role(role: str) -> tuple[str, ...]:
    return tuple(w.text for w in LEXICON if w.role == role)


NOUNS = _role("noun")
COLOURS = _role("colour")
PLACES = _role("place")
NUMBERS = _role("number")
_CONTENT = NOUNS + COLOURS + PLACES


def _make_chain() -> dict[str, tuple[str, str]]:
    # Two fixed successors per content word, drawn once from a constant seed (not the corpus
    # seed): the same chain for every corpus, and no word follows itself.
    rng = np.random.default_rng(0xC4A1)
    chain = {}
    for w in _CONTENT:
        others = [x for x in _CONTENT if x != w]
        a, b = rng.choice(len(others), 2, replace=False)
        chain[w] = (others[int(a)], others[int(b)])
    return chain


CHAIN: dict[str, tuple[str, str]] = _make_chain()


def lexicon_words() -> list[str]:
    """Every lexicon spelling, in lexicon order (what a text tokenizer for this corpus needs)."""
    return [w.text for w in LEXICON]


def lexicon_word(text: str) -> LexWord:
    """The :class:`LexWord` spelled ``text`` (KeyError for words outside the lexicon)."""
    return _BY_TEXT[text]


def colour_of(noun: str) -> str:
    """The fixed colour of ``noun`` in the grammar's world."""
    return COLOURS[NOUNS.index(noun) % len(COLOURS)]


def place_of(noun: str) -> str:
    """The fixed place of ``noun`` in the grammar's world."""
    return PLACES[(3 * NOUNS.index(noun) + 1) % len(PLACES)]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_exchange(rng: np.random.Generator, kind: str | None = None,
                    first: bool = False) -> tuple[str, list[str], list[str]]:
    """One exchange of the grammar: ``(kind, user_words, main_words)``.

    ``kind`` is drawn when None (a greeting with probability 0.75 when ``first``, else uniformly
    among colour/where/check/count/echo/story, bye with probability 0.08).
    """
    if kind is None:
        if first and rng.random() < 0.75:
            kind = "greet"
        elif not first and rng.random() < 0.08:
            kind = "bye"
        else:
            kind = _pick(rng, ("colour", "where", "check", "count", "echo", "story"))
    if kind == "greet":
        g = _pick(rng, ("sa", "shoki"))
        return kind, [g], [g, "kiko"]
    if kind == "bye":
        return kind, ["fe"], ["fe", "kiko"]
    if kind == "colour":
        n = _pick(rng, NOUNS)
        return kind, ["kishu", n], [n, "i", colour_of(n)]
    if kind == "where":
        n = _pick(rng, NOUNS)
        return kind, ["fua", n], [n, "o", place_of(n)]
    if kind == "check":
        n = _pick(rng, NOUNS)
        # Half the time the stated colour is right, so "yes" and "no" are equally likely.
        c = colour_of(n) if rng.random() < 0.5 else _pick(
            rng, [c for c in COLOURS if c != colour_of(n)])
        return kind, [n, "i", c], ["kafi"] if c == colour_of(n) else ["fo", colour_of(n)]
    if kind == "count":
        k = int(rng.integers(len(NUMBERS) - 3))
        return kind, ["eko", NUMBERS[k]], list(NUMBERS[k + 1:k + 4])
    if kind == "echo":
        x, y = _pick(rng, _CONTENT), _pick(rng, _CONTENT)
        return kind, ["sefo", x, y], [x, y]
    if kind == "story":
        w = _pick(rng, _CONTENT)
        story = [w]
        for _ in range(int(rng.integers(2, 5))):
            w = CHAIN[w][int(rng.integers(2))]
            story.append(w)
        return kind, ["ushi"], story
    raise ValueError(f"unknown exchange kind {kind!r}")


def plan_words(rng: np.random.Generator, words: Sequence[str], start: float = 0.0,
               max_end: float = math.inf, tempo: float = 1.0
               ) -> tuple[list[dict], list[tuple[float, float]]]:
    """Syllable plan (``synthesize_utterance``'s ``plan``) for ``words`` spoken from ``start`` s.

    Returns ``(plan, spans)``: ``spans[j]`` is word ``j``'s ``(start_s, end_s)``, from its first
    syllable's onset (fricative start, plosive burst, or vowel start) to its last vowel's end.
    Words that would end after ``max_end`` are left out, with all words after them, so ``spans``
    may be shorter than ``words``. ``tempo`` > 1 speaks slower.
    """
    plan: list[dict] = []
    spans: list[tuple[float, float]] = []
    t = float(start)
    for j, text in enumerate(words):
        word = _BY_TEXT[text]
        if j:
            t += rng.uniform(0.03, 0.10)  # a short gap between words
        sylls, onset = [], None
        for k, (cons, vowel) in enumerate(word.syllables):
            dur = rng.uniform(0.13, 0.22) * tempo
            vstart, c = t, None
            if cons is not None and cons[0] == "fric":
                cdur = min(rng.uniform(0.05, 0.09), 0.45 * dur)
                c = ("fric", t, cdur, cons[1])
                vstart = t + 0.8 * cdur  # slight overlap into the vowel, as the babble plans do
                first = t
            elif cons is not None:  # plosive: silent closure, then a burst that opens the vowel
                closure = rng.uniform(0.02, 0.04)
                bdur = rng.uniform(0.010, 0.02)
                c = ("plos", t + closure, bdur, 0)
                vstart = t + closure + bdur
                first = t + closure
            else:
                first = t
            onset = first if onset is None else onset
            sylls.append(dict(vstart=vstart, vend=t + dur, vowel=vowel,
                              accent=k == 0,  # fixed lexical stress on the first syllable
                              slope=float(rng.normal(0.0, 0.04)),
                              level=float(rng.uniform(0.75, 1.0)), cons=c))
            t += dur
        if t > max_end:
            break
        plan.extend(sylls)
        spans.append((onset, t))
    return plan, spans


def synthesize_words(rng: np.random.Generator, voice: Voice, words: Sequence[str],
                     sample_rate: int, *, lead: float = 0.05, tail: float = 0.1,
                     max_seconds: float = math.inf
                     ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speak ``words`` (lexicon spellings) with ``voice``: ``(audio, spans)``.

    ``audio`` is float32 ``[samples]``: ``lead`` seconds of near-silence, the words, ``tail``
    seconds of near-silence. ``spans[j]`` is word ``j``'s ``(start_s, end_s)`` in that audio (see
    :func:`plan_words`); words that would not fit in ``max_seconds`` are left out (the audio is
    then empty when none fits: ``spans == []``).
    """
    tempo = rng.uniform(0.9, 1.1)  # per-turn speaking rate
    plan, spans = plan_words(rng, words, start=lead, max_end=max_seconds - tail, tempo=tempo)
    if not spans:
        return np.zeros(0, np.float32), []
    num_samples = int(math.ceil((spans[-1][1] + tail) * sample_rate))
    return synthesize_utterance(rng, voice, num_samples, sample_rate, plan=plan), spans


class SyntheticAlignedDialogueCorpus(SyntheticDialogueCorpus):
    """Deterministic word-aligned conversations in a made-up lexicon (a grain random-access source).

    Args:
        sample_rate: output sample rate in Hz (Mimi's is 24000).
        num_dialogues: number of items (``len``).
        seconds: length of every dialogue.
        seed: corpus seed; the same ``(seed, split, index)`` gives a bit-identical item.
        num_voices: number of speakers; item ``i`` pairs voices as ``SyntheticDialogueCorpus``
            does (the model speaks with voice ``i % num_voices``).
        split: ``'train'`` or ``'eval'`` (aliases as in ``SyntheticSpeechCorpus``); 'eval' draws
            other conversations with the same lexicon, grammar and voices.

    Items are ``{'audio': float32 [2, samples] (channel 0: SPEAKER_MAIN, the model; channel 1: the
    user), 'voices': (main, user), 'turns': [(channel, start, end), ...] in samples, 'alignments':
    [[word, [start_s, end_s], speaker], ...] sorted by start, 'index': int}``. See the module
    docstring for the lexicon, grammar and timing.
    """

    def __init__(self, sample_rate: int = 24000, num_dialogues: int = 256,
                 seconds: float = 10.0, seed: int = 0, num_voices: int = 8,
                 split: str = "train"):
        # The checks, voices and voice pairing are the plain dialogue corpus's; only the
        # defaults (Moshi's 24 kHz, 10 s) and the items differ.
        super().__init__(sample_rate=sample_rate, num_dialogues=num_dialogues, seconds=seconds,
                         seed=seed, num_voices=num_voices, split=split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.num_dialogues
        if not 0 <= index < self.num_dialogues:
            raise IndexError(f"index {index} out of range [0, {self.num_dialogues})")
        # A tag of its own, so this corpus never replays SyntheticDialogueCorpus's streams.
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, SPLITS[self.split], index, 0xA11D1A]))
        sr, n = self.sample_rate, self.num_samples
        duration = n / sr
        voices = self.voices_of(index)
        out = np.zeros((2, n), np.float32)
        turns: list[tuple[int, int, int]] = []
        alignments: list[list] = []
        lead = 0.05

        def speak(channel: int, at: float, words: list[str]) -> tuple[float, float] | None:
            """Say ``words`` on ``channel`` with the first onset at ``at`` s: the turn's (first
            onset, last end), or None when not every word fits (what fits is still written)."""
            seg_start = max(0.0, at - lead)
            audio, spans = synthesize_words(rng, self.voices[voices[channel]], words, sr,
                                            lead=at - seg_start, max_seconds=duration - seg_start)
            if not spans:
                return None
            a = int(round(seg_start * sr))
            m = min(audio.shape[0], n - a)
            out[channel, a:a + m] += audio[:m]
            speaker = MAIN_SPEAKER if channel == 0 else USER_SPEAKER
            for text, (s, e) in zip(words, spans):
                # Rounded to 1 ms once, here, so items and written JSON agree exactly.
                alignments.append([text, [round(seg_start + s, 3), round(seg_start + e, 3)],
                                   speaker])
            begin, last = seg_start + spans[0][0], seg_start + spans[-1][1]
            turns.append((channel, int(begin * sr), min(n, int(math.ceil(last * sr)))))
            return (begin, last) if len(spans) == len(words) else None  # a cut-off turn ends it

        t = rng.uniform(0.1, 0.5)
        first = True
        while t < duration:
            kind, user_words, main_words = sample_exchange(rng, first=first)
            if not first and kind != "bye" and rng.random() < 0.2:
                user_words = ["osu"] + user_words  # thanks (for the previous answer)
            first = False
            prompt = speak(1, t, user_words)
            if prompt is None:
                break
            # The answer: usually after a short pause, sometimes a little early (overlap), but
            # never before the prompt's middle, so the turns still alternate in start order.
            gap = rng.uniform(-0.15, 0.0) if rng.random() < 0.1 else rng.uniform(0.15, 0.55)
            answer = speak(0, max(prompt[1] + gap, 0.5 * (prompt[0] + prompt[1])), main_words)
            if answer is None or kind == "bye":
                break
            t = answer[1] + rng.uniform(0.3, 0.9)
        np.clip(out, -1.0, 1.0, out=out)
        alignments.sort(key=lambda w: w[1][0])  # stable: ties keep their spoken order
        return {"audio": out, "voices": voices, "turns": sorted(turns, key=lambda x: x[1]),
                "alignments": alignments, "index": index}

    def __repr__(self) -> str:
        return describe_corpus(self, num_dialogues=self.num_dialogues,
                         seconds=self.num_samples / self.sample_rate)


def _write_json_atomic(path: str, data: Any) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        os.replace(tmp, path)  # a reader sees the old file or the whole new one, never a part
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_aligned_dialogues(folder: str | os.PathLike, n: int, sample_rate: int = 24000,
                            seed: int = 0, seconds: float = 10.0, split: str = "train",
                            num_voices: int = 8) -> list[str]:
    """Write items ``0..n-1`` as moshi-finetune training files; returns the WAV paths.

    Each item becomes ``dialogue_{i:05d}.wav`` (stereo 16-bit; left = channel 0 = the model,
    right = the user) and ``dialogue_{i:05d}.json`` beside it, ``{"alignments": [[word, [start_s,
    end_s], speaker], ...]}``, written atomically.
    """
    from audiolm_jax.data.audio_io import save_wav  # pylint: disable=g-import-not-at-top

    corpus = SyntheticAlignedDialogueCorpus(sample_rate=sample_rate, num_dialogues=n,
                                            seconds=seconds, seed=seed, num_voices=num_voices,
                                            split=split)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(len(corpus)):
        item = corpus[i]
        path = os.path.join(folder, f"dialogue_{i:05d}.wav")
        save_wav(path, item["audio"].T, corpus.sample_rate)
        _write_json_atomic(os.path.splitext(path)[0] + ".json",
                           {"alignments": item["alignments"]})
        paths.append(path)
    return paths


TOKENIZER_FILE = "text_tokenizer.model"


def write_lexicon_tokenizer(folder: str | os.PathLike, vocab_size: int = 64) -> str:
    """Trains the SentencePiece text tokenizer of this corpus (every lexicon word, ids 0-3
    Moshi's specials) into ``folder/text_tokenizer.model``; returns its path. Deterministic:
    the same file every time."""
    from audiolm_jax.text.tokenizer import train_tokenizer  # pylint: disable=g-import-not-at-top

    path = os.path.join(os.fspath(folder), TOKENIZER_FILE)
    os.makedirs(os.fspath(folder), exist_ok=True)
    train_tokenizer(lexicon_words() * 4, path, vocab_size=vocab_size)
    return path
