"""A built-in, deterministic, speech-like synthetic corpus.

No download is needed: every utterance is generated on the fly from
``(seed, split, index)``, so item ``i`` is bit-identical every time it is
requested with the same seed, in any process and in any order.

Synthesis model (a small source-filter / formant synthesiser):

* **Voices.** A table of 8 voice prototypes (low/mid/high male, female,
    child, breathy) with distinct f0 ranges, formant scalings (vocal-tract
    length), breathiness and glottal open quotients. More voices (``num_voices
    > 8``) are drawn deterministically from a fixed voice seed.
* **Rhythm.** An utterance is a sequence of "words" of 1-3 syllables
    separated by short gaps or longer pauses, with leading/trailing silence.
    A syllable lasts ~100-300 ms: an optional consonant onset (fricative noise
    or a plosive closure + burst) followed by a vowel nucleus.
* **Pitch.** f0 = per-utterance base within the voice range, times a
    declination line, plus per-syllable intonation (slope, pitch accents, an
    occasional final question rise), plus smoothed jitter.
* **Source.** A differentiated Rosenberg glottal pulse driven by the f0
    phase, plus breath (aspiration) noise, under raised-cosine syllable
    amplitude envelopes.
* **Filter.** Four cascaded second-order resonators (F1-F4) whose centre
    frequencies follow vowel targets interpolated between syllable nuclei,
    updated every 5 ms (run as one 8th-order ``lfilter`` with carried state).
* **Consonants.** Band-pass fricative noise ('s', 'sh', 'f'-like bands) and
    short plosive bursts.

Everything is vectorised numpy; generating 1 s of 16 kHz audio takes about 5 ms on one
core. That is more than a small codec's training step consumes when it crops 0.5 s out of
each item, so the speech corpus keeps what it synthesised (up to ``cache_bytes``) for the
following epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
import scipy.signal

__all__ = [
        "Voice",
        "VOICES",
        "SyntheticSpeechCorpus",
        "SyntheticDialogueCorpus",
        "synthesize_utterance",
        "write_synthetic_wavs",
        "write_synthetic_dialogues",
]

SPLITS = {"train": 0, "eval": 1}
SPLIT_ALIASES = {
        "train": "train",
        "eval": "eval",
        "held_out": "eval",
        "validation": "eval",
        "valid": "eval",
        "test": "eval",
}


@dataclasses.dataclass(frozen=True)
class Voice:
    """Parameters of one synthetic speaker."""

    f0_min: float  # Hz, lower end of the speaking range
    f0_max: float  # Hz, upper end of the speaking range
    formant_scale: float  # multiplies the (adult male) vowel formant targets
    breathiness: float  # aspiration-noise level relative to the glottal source
    open_quotient: float  # fraction of a glottal cycle the glottis is open


# Eight prototypes with clearly distinct ranges / timbres.
VOICES: tuple[Voice, ...] = (
        Voice(85.0, 130.0, 1.00, 0.03, 0.55),  # low male
        Voice(100.0, 155.0, 0.96, 0.08, 0.60),  # male
        Voice(115.0, 175.0, 1.05, 0.05, 0.55),  # high male
        Voice(165.0, 235.0, 1.15, 0.12, 0.65),  # low female
        Voice(185.0, 265.0, 1.18, 0.18, 0.70),  # female
        Voice(200.0, 300.0, 1.12, 0.10, 0.65),  # high female
        Voice(240.0, 340.0, 1.28, 0.15, 0.70),  # child
        Voice(140.0, 200.0, 1.08, 0.25, 0.70),  # breathy
)

# Vowel formant targets F1..F4 in Hz (adult male, Peterson & Barney-like).
VOWELS = np.array(
        [
                [730, 1090, 2440, 3400],  # /a/
                [270, 2290, 3010, 3600],  # /i/
                [300, 870, 2240, 3300],  # /u/
                [530, 1840, 2480, 3500],  # /e/
                [570, 840, 2410, 3300],  # /o/
                [660, 1720, 2410, 3400],  # /ae/
                [490, 1350, 1690, 3300],  # /er/
                [440, 1020, 2240, 3300],  # /U/
                [390, 1990, 2550, 3500],  # /I/
                [640, 1190, 2390, 3400],  # /^/
        ],
        dtype=np.float64,
)
_BANDWIDTHS = np.array([80.0, 100.0, 150.0, 220.0])

# Fricative noise bands (lo, hi) in Hz and relative level.
FRICATIVES = (
        (3500.0, 7500.0, 0.10),  # s-like
        (2000.0, 4500.0, 0.14),  # sh-like
        (1000.0, 7000.0, 0.05),  # f-like (weak, broadband)
)


def get_voice(voice_id: int, num_voices: int = len(VOICES)) -> Voice:
    """Voice ``voice_id``; ids >= 8 are drawn from a fixed voice seed."""
    if voice_id < 0 or voice_id >= num_voices:
        raise ValueError(f"voice_id {voice_id} out of range [0, {num_voices})")
    if voice_id < len(VOICES):
        return VOICES[voice_id]
    rng = np.random.default_rng([7919, voice_id])
    lo = float(rng.uniform(80.0, 250.0))
    scale = 0.9 + (lo - 80.0) / 170.0 * 0.35 + rng.normal(0, 0.03)
    return Voice(
        f0_min=lo,
        f0_max=lo * float(rng.uniform(1.35, 1.6)),
        formant_scale=float(np.clip(scale, 0.85, 1.35)),
        breathiness=float(rng.uniform(0.02, 0.25)),
        open_quotient=float(rng.uniform(0.5, 0.72)),
    )


@functools.lru_cache(maxsize=64)
def _fricative_sos(kind: int, sample_rate: int) -> np.ndarray:
    lo, hi, _ = FRICATIVES[kind]
    nyq = sample_rate / 2.0
    hi = min(hi, 0.9 * nyq)
    lo = min(lo, 0.6 * hi)
    return scipy.signal.butter(2, [lo / nyq, hi / nyq], btype="bandpass", output="sos")


def _raised_cosine_env(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack = min(attack, n // 2)
    release = min(release, n - attack)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release > 0:
        env[n - release:] = 0.5 + 0.5 * np.cos(
                np.pi * (np.arange(release) + 0.5) / release)
    return env


def _plan_utterance(rng: np.random.Generator, duration: float):
    """Timeline of syllables: list of dicts with times in seconds."""
    syllables = []
    t = rng.uniform(0.05, 0.3)
    end = duration - rng.uniform(0.1, 0.3)
    while True:
        n_syll = int(rng.integers(1, 4))
        word = []
        for _ in range(n_syll):
            dur = rng.uniform(0.10, 0.30)
            if t + dur > end:
                break
            cons = None
            vstart = t
            r = rng.random()
            if r < 0.35:  # fricative onset
                cdur = min(rng.uniform(0.04, 0.10), 0.45 * dur)
                cons = ("fric", t, cdur, int(rng.integers(len(FRICATIVES))))
                vstart = t + cdur * 0.8  # slight overlap into the vowel
            elif r < 0.6:  # plosive: closure (silence) + burst
                closure = rng.uniform(0.02, 0.05)
                bdur = rng.uniform(0.008, 0.02)
                cons = ("plos", t + closure, bdur, 0)
                vstart = t + closure + bdur
            word.append(dict(
                    vstart=vstart,
                    vend=t + dur,
                    vowel=int(rng.integers(len(VOWELS))),
                    accent=bool(rng.random() < 0.3),
                    slope=float(rng.normal(0.0, 0.04)),
                    level=float(rng.uniform(0.6, 1.0)),
                    cons=cons,
            ))
            t += dur
        syllables.extend(word)
        if t + 0.1 >= end or not word:
            break
        # Inter-word gap: usually short, sometimes a real pause.
        t += rng.uniform(0.12, 0.45) if rng.random() < 0.4 else rng.uniform(
                0.02, 0.06)
    return syllables


def synthesize_utterance(rng: np.random.Generator, voice: Voice, num_samples: int,
                         sample_rate: int, plan: list[dict] | None = None) -> np.ndarray:
    """Synthesise one speech-like utterance as float32 in [-1, 1].

    ``plan`` is the syllable timeline to speak, in the format ``_plan_utterance`` returns: a list
    of dicts with ``vstart``/``vend`` (vowel nucleus, seconds), ``vowel`` (row of ``VOWELS``),
    ``accent`` (bool), ``slope``, ``level`` and ``cons`` (None, ``("fric", start, dur, band)`` or
    ``("plos", burst_start, burst_dur, 0)``), in time order. None (the default) draws a random
    babble plan from ``rng`` first, exactly as before the argument existed, so the same ``rng``
    gives the same audio. :mod:`audiolm_jax.data.lexicon` passes plans of fixed words.
    """
    sr = float(sample_rate)
    duration = num_samples / sr
    hop = max(1, int(round(sample_rate * 0.005)))  # 5 ms control rate
    num_frames = -(-num_samples // hop) + 1
    frame_t = np.arange(num_frames) * hop / sr

    sylls = _plan_utterance(rng, duration) if plan is None else list(plan)

    # ---- pitch contour (frame rate) ----
    span = voice.f0_max - voice.f0_min
    base = voice.f0_min + span * rng.uniform(0.25, 0.5)
    decl = rng.uniform(0.08, 0.2)
    f0 = base * (1.0 + decl * (0.5 - frame_t / max(duration, 1e-3)))
    for k, s in enumerate(sylls):
        a, b = s["vstart"], s["vend"]
        mid, width = 0.5 * (a + b), max(b - a, 1e-3)
        sel = slice(int(a * sr / hop), int(b * sr / hop) + 1)
        tt = frame_t[sel]
        f0[sel] *= 1.0 + s["slope"] * (tt - mid) / width
        if s["accent"]:
            bump = rng.uniform(0.08, 0.25)
            f0 *= 1.0 + bump * np.exp(-0.5 * ((frame_t - mid) / (0.35 * width)) ** 2)
        if k == len(sylls) - 1 and rng.random() < 0.2:  # question rise
            f0[sel] *= 1.0 + 0.3 * np.clip((tt - a) / width, 0, 1) ** 2
    jitter = np.cumsum(rng.normal(0.0, 1.0, num_frames))
    jitter = np.convolve(jitter - jitter.mean(), np.ones(8) / 8.0, mode="same")
    jitter *= 0.015 / (np.std(jitter) + 1e-9)
    f0 *= 1.0 + jitter
    f0 = np.clip(f0, voice.f0_min * 0.9, voice.f0_max * 1.1)

    # ---- formant contours (frame rate) ----
    scale = voice.formant_scale * rng.uniform(0.97, 1.03)
    if sylls:
        centers = np.array([0.5 * (s["vstart"] + s["vend"]) for s in sylls])
        targets = VOWELS[[s["vowel"] for s in sylls]] * rng.uniform(
                0.95, 1.05, (len(sylls), 4))
        formants = np.stack(
                [np.interp(frame_t, centers, targets[:, j]) for j in range(4)], -1)
    else:
        formants = np.broadcast_to(VOWELS[0], (num_frames, 4)).copy()
    formants *= scale
    formants = np.minimum(formants, 0.45 * sr)
    bws = _BANDWIDTHS * (0.9 + 0.2 * voice.breathiness / 0.25)

    # ---- voiced amplitude envelope (sample rate) ----
    env = np.zeros(num_samples)
    for s in sylls:
        a = int(s["vstart"] * sr)
        b = min(int(s["vend"] * sr), num_samples)
        if b - a < 4:
            continue
        env[a:b] = s["level"] * _raised_cosine_env(
                b - a, int(rng.uniform(0.012, 0.025) * sr),
                int(rng.uniform(0.03, 0.06) * sr))

    # ---- glottal source ----
    f0_s = np.interp(np.arange(num_samples) / sr, frame_t, f0)
    phase = np.cumsum(f0_s / sr) + rng.random()
    p = phase - np.floor(phase)
    oq = voice.open_quotient
    tp, tn = 0.6 * oq, 0.4 * oq
    flow = np.where(
            p < tp, 0.5 - 0.5 * np.cos(np.pi * p / tp),
            np.where(p < tp + tn, np.cos(0.5 * np.pi * (p - tp) / tn), 0.0))
    source = np.diff(flow, prepend=flow[0]) * (sr / (np.mean(f0_s) * 4.0))
    open_mask = (p < oq).astype(np.float64)
    breath = rng.standard_normal(num_samples) * (0.4 + 0.6 * open_mask)
    excitation = (source + voice.breathiness * breath) * env

    # ---- time-varying formant filter (cascade of 4 resonators) ----
    r = np.exp(-np.pi * bws / sr)  # [4]
    theta = 2.0 * np.pi * formants / sr  # [F, 4]
    a1 = -2.0 * r * np.cos(theta)
    a2 = np.broadcast_to(r * r, a1.shape)
    # The cascade is run as one 8th-order direct-form filter per 5 ms frame
    # (one lfilter call per frame; the state carries across frames).
    den = np.ones((num_frames, 1))
    for j in range(4):
        nxt = np.zeros((num_frames, den.shape[1] + 2))
        nxt[:, :-2] += den
        nxt[:, 1:-1] += den * a1[:, j:j + 1]
        nxt[:, 2:] += den * a2[:, j:j + 1]
        den = nxt
    gain = np.prod(1.0 + a1 + a2, axis=1)  # unity gain at DC
    voiced = np.empty(num_samples)
    zi = np.zeros(8)
    for fi in range(-(-num_samples // hop)):
        lo = fi * hop
        hi = min(lo + hop, num_samples)
        voiced[lo:hi], zi = scipy.signal.lfilter(gain[fi:fi + 1], den[fi], excitation[lo:hi],
                                                 zi=zi)
    voiced /= np.max(np.abs(voiced)) + 1e-9

    # ---- consonants ----
    out = voiced
    for s in sylls:
        if s["cons"] is None:
            continue
        kind, start, dur, fidx = s["cons"]
        a = int(start * sr)
        n = min(int(dur * sr), num_samples - a)
        if n < 8:
            continue
        noise = rng.standard_normal(n)
        if kind == "fric":
            noise = scipy.signal.sosfilt(_fricative_sos(fidx, sample_rate), noise)
            level = FRICATIVES[fidx][2] * rng.uniform(0.7, 1.3)
            shape = _raised_cosine_env(n, n // 3, n // 3)
        else:
            level = rng.uniform(0.08, 0.2)
            shape = np.exp(-np.arange(n) / (0.3 * n))
        noise *= level * shape / (np.std(noise) + 1e-9)
        out[a:a + n] += noise

    out += rng.standard_normal(num_samples) * 3e-5  # faint room noise
    out *= rng.uniform(0.3, 0.9) / (np.max(np.abs(out)) + 1e-9)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def describe_corpus(corpus: Any, **sizes: Any) -> str:
    """A corpus's repr: its class, its sizes, then the settings every corpus has."""
    settings = dict(sample_rate=corpus.sample_rate, **sizes, seed=corpus.seed,
                    num_voices=corpus.num_voices, split=corpus.split)
    return f"{type(corpus).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"


class SyntheticSpeechCorpus:
    """Deterministic speech-like corpus (a grain ``RandomAccessDataSource``).

    Args:
        sample_rate: output sample rate in Hz.
        num_utterances: number of items (``len``).
        utterance_seconds: length of every utterance in seconds.
        seed: corpus seed; the same seed gives identical items.
        num_voices: number of speakers; item ``i`` uses voice ``i % num_voices``.
        split: ``'train'`` or ``'eval'`` (aliases: 'held_out', 'validation',
            'test'); 'eval' uses a different random stream (held-out utterances
            from the same voices).

        cache_bytes: synthesised audio kept in memory for later requests of the same item
            (per process; read-only arrays); 0 turns it off.

    Items are ``{'audio': float32 [samples], 'voice': int, 'index': int}``.
    """

    def __init__(self, sample_rate: int = 16000, num_utterances: int = 512,
                 utterance_seconds: float = 4.0, seed: int = 0,
                 num_voices: int = 8, split: str = "train", cache_bytes: int = 1 << 30):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if num_utterances <= 0:
            raise ValueError("num_utterances must be positive")
        if num_voices <= 0:
            raise ValueError("num_voices must be positive")
        if sample_rate < 4000:
            raise ValueError(f"sample_rate too low: {sample_rate}")
        self.sample_rate = int(sample_rate)
        self.num_utterances = int(num_utterances)
        self.utterance_seconds = float(utterance_seconds)
        self.num_samples = int(round(self.utterance_seconds * self.sample_rate))
        if self.num_samples <= 0:
            raise ValueError("utterance_seconds must be positive")
        self.seed = int(seed)
        self.num_voices = int(num_voices)
        self.split = SPLIT_ALIASES[split]
        self.voices = tuple(get_voice(v, self.num_voices)
                for v in range(self.num_voices))
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __getstate__(self):  # worker processes start with an empty cache
        state = dict(self.__dict__)
        state.update(_cache={}, _cached_bytes=0)
        return state

    def __len__(self) -> int:
        return self.num_utterances

    def voice_of(self, index: int) -> int:
        return int(index) % self.num_voices

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.num_utterances
        if not 0 <= index < self.num_utterances:
            raise IndexError(f"index {index} out of range [0, {self.num_utterances})")
        voice = self.voice_of(index)
        audio = self._cache.get(index)
        if audio is None:
            rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, SPLITS[self.split], index, 0x5EEC4]))
            audio = synthesize_utterance(rng, self.voices[voice], self.num_samples,
                                         self.sample_rate)
            if self._cached_bytes + audio.nbytes <= self.cache_bytes:
                audio.flags.writeable = False  # shared by every later request
                self._cache[index] = audio
                self._cached_bytes += audio.nbytes
        return {"audio": audio, "voice": voice, "index": index}

    def __repr__(self) -> str:
        return describe_corpus(self, num_utterances=self.num_utterances,
                         utterance_seconds=self.utterance_seconds)


def write_synthetic_wavs(folder: str | os.PathLike, n: int, sample_rate: int = 16000,
                         seed: int = 0, seconds: float = 4.0, split: str = "train",
                         num_voices: int = 8) -> list[str]:
    """Write ``n`` synthetic utterances as 16-bit WAVs; returns their paths.

    Files are named ``synth_{i:05d}.wav`` (item ``i`` of the corpus with the
    given seed/split), so they sort in corpus order.
    """
    corpus = SyntheticSpeechCorpus(sample_rate=sample_rate, num_utterances=n,
                                   utterance_seconds=seconds, seed=seed,
                                   num_voices=num_voices, split=split)
    return _write_items(folder, corpus, "synth", lambda item: item["audio"])


class SyntheticDialogueCorpus:
    """Deterministic two-speaker conversations for full-duplex (two-stream) modelling.

    Each item is a stereo conversation, one speaker per channel (channel 0 = speaker A, the
    stream a duplex LM generates; channel 1 = speaker B, the "user"). Speakers take turns of
    0.6-2.2 s; the gap between turns is drawn from [-0.25, 0.6] s, so turns sometimes overlap
    (interruptions), and the listener sometimes drops a short backchannel ("mm-hm", 0.15-0.35 s)
    into the other's turn -- the events a full-duplex model must learn that a turn-based one
    cannot. Item ``i`` is bit-identical for the same ``(seed, split, i)``.

    Items are ``{'audio': float32 [2, samples], 'voices': (a, b), 'turns': [(channel, start,
    end), ...] in samples, 'index': int}``.
    """

    def __init__(self, sample_rate: int = 16000, num_dialogues: int = 128,
                 seconds: float = 8.0, seed: int = 0, num_voices: int = 8,
                 split: str = "train"):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if num_dialogues <= 0:
            raise ValueError("num_dialogues must be positive")
        if num_voices < 2:
            raise ValueError("a dialogue needs num_voices >= 2")
        if sample_rate < 4000:
            raise ValueError(f"sample_rate too low: {sample_rate}")
        self.sample_rate = int(sample_rate)
        self.num_dialogues = int(num_dialogues)
        self.num_samples = int(round(float(seconds) * self.sample_rate))
        if self.num_samples <= 0:
            raise ValueError("seconds must be positive")
        self.seed, self.num_voices = int(seed), int(num_voices)
        self.split = SPLIT_ALIASES[split]
        self.voices = tuple(get_voice(v, self.num_voices) for v in range(self.num_voices))

    def __len__(self) -> int:
        return self.num_dialogues

    def voices_of(self, index: int) -> tuple[int, int]:
        a = int(index) % self.num_voices
        b = (a + 1 + (int(index) // self.num_voices) % (self.num_voices - 1)) % self.num_voices
        return a, b

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.num_dialogues
        if not 0 <= index < self.num_dialogues:
            raise IndexError(f"index {index} out of range [0, {self.num_dialogues})")
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, SPLITS[self.split], index, 0xD1A10]))
        sr, n = self.sample_rate, self.num_samples
        voices = self.voices_of(index)
        out = np.zeros((2, n), np.float32)
        turns = []

        def place(channel: int, start: int, length: int) -> None:
            length = min(length, n - start)
            if length < int(0.05 * sr):
                return
            audio = synthesize_utterance(rng, self.voices[voices[channel]], length, sr)
            out[channel, start:start + length] += audio
            turns.append((channel, start, start + length))

        speaker = int(rng.integers(2))
        t = int(rng.uniform(0.0, 0.3) * sr)
        while t < n:
            length = int(rng.uniform(0.6, 2.2) * sr)
            place(speaker, t, length)
            if rng.random() < 0.3 and length > int(0.8 * sr):  # the listener's backchannel
                at = t + int(rng.uniform(0.3, 0.7) * length)
                if at < n:
                    place(1 - speaker, at, int(rng.uniform(0.15, 0.35) * sr))
            t = max(0, t + length + int(rng.uniform(-0.25, 0.6) * sr))
            speaker = 1 - speaker
        np.clip(out, -1.0, 1.0, out=out)
        return {"audio": out, "voices": voices, "turns": sorted(turns, key=lambda x: x[1]),
                "index": index}

    def __repr__(self) -> str:
        return describe_corpus(self, num_dialogues=self.num_dialogues,
                         seconds=self.num_samples / self.sample_rate)


def write_synthetic_dialogues(folder: str | os.PathLike, n: int, sample_rate: int = 16000,
                              seed: int = 0, seconds: float = 8.0, split: str = "train",
                              num_voices: int = 8) -> list[str]:
    """Write ``n`` synthetic conversations as stereo 16-bit WAVs (``dialogue_{i:05d}.wav``,
    channel 0 = speaker A, channel 1 = speaker B); returns their paths. Tokenize them with
    ``audiolm-jax tokenize --stereo_streams`` for a duplex LM."""

    corpus = SyntheticDialogueCorpus(sample_rate=sample_rate, num_dialogues=n, seconds=seconds,
                                     seed=seed, num_voices=num_voices, split=split)
    return _write_items(folder, corpus, "dialogue", lambda item: item["audio"].T)


def _write_items(folder, corpus, prefix: str, samples) -> list[str]:
    """Every item of ``corpus`` as ``{prefix}_{i:05d}.wav`` (16-bit) in ``folder``."""
    from audiolm_jax.data.audio_io import save_wav  # pylint: disable=g-import-not-at-top

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(len(corpus)):
        path = os.path.join(os.fspath(folder), f"{prefix}_{i:05d}.wav")
        save_wav(path, samples(corpus[i]), corpus.sample_rate)
        paths.append(path)
    return paths
