"""The built-in word-aligned dialogue corpus (audiolm_jax/data/lexicon.py): a fixed lexicon, the
conversation grammar, deterministic items whose alignments sit on the audio, moshi-finetune files.
"""
import json
import math
import os
import re

import librosa
import numpy as np
import pytest
import soundfile as sf

from audiolm_jax.data import lexicon
from audiolm_jax.data.lexicon import (LEXICON, MAIN_SPEAKER, NOUNS, NUMBERS, USER_SPEAKER,
                                      SyntheticAlignedDialogueCorpus, colour_of, lexicon_words,
                                      place_of, sample_exchange, synthesize_words,
                                      write_aligned_dialogues)
from audiolm_jax.data.synthetic import (VOICES, SyntheticDialogueCorpus, SyntheticSpeechCorpus,
                                        synthesize_utterance)
from audiolm_jax.text.alignment import Word, load_alignment
from audiolm_jax.text.stream import FRAME_RATE, text_stream
from audiolm_jax.text.tokenizer import train_tokenizer

SR = 24000


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


@pytest.fixture(scope="module")
def corpus():
    return SyntheticAlignedDialogueCorpus(sample_rate=SR, num_dialogues=6, seconds=8.0, seed=1)


@pytest.fixture(scope="module")
def items(corpus):
    return [corpus[i] for i in range(len(corpus))]


def _segment_rms(a: np.ndarray, parts: int = 8) -> list[float]:
    return [_rms(s) for s in np.array_split(np.asarray(a, np.float64).reshape(-1), parts)]


def test_babble_corpora_unchanged_by_the_plan_argument():
    # Recorded with synthetic.py as it was before synthesize_utterance took `plan`: the default
    # path must draw from the rng exactly as before. A changed draw moves every segment's
    # loudness; the tolerance only absorbs the last-bit differences of numpy's SIMD kernels
    # between hosts (exact hashes differed between an AVX2 and an AVX-512 host).
    def same(audio, expected):
        np.testing.assert_allclose(_segment_rms(audio), expected, rtol=1e-4, atol=1e-6)

    same(SyntheticSpeechCorpus(16000, 4, 1.0)[0]["audio"],
         [0.0546905, 0.1179841, 0.1377997, 0.1644004, 0.0961379, 0.0787008, 1.11e-05, 1.11e-05])
    same(SyntheticSpeechCorpus(24000, 8, 1.5, seed=3, split="eval")[3]["audio"],
         [1.54e-05, 0.1035362, 0.0293044, 0.1111196, 0.1803866, 0.1429766, 0.0057491, 1.53e-05])
    same(SyntheticDialogueCorpus(16000, 4, 3.0)[1]["audio"],
         [0.0, 0.0332963, 0.1127867, 0.0626664, 0.0906328, 0.1065365, 0.0, 0.1085013])
    rng = np.random.default_rng(123)
    same(synthesize_utterance(rng, VOICES[4], 12000, 24000),
         [1.15e-05, 1.18e-05, 1.18e-05, 0.0265063, 0.1293298, 0.1189278, 1.19e-05, 1.18e-05])
    assert rng.random() == 0.033357476453364066  # and left the rng where it used to


def test_lexicon_is_fixed_and_well_formed():
    words = lexicon_words()
    assert 40 <= len(words) <= 64
    assert len(set(words)) == len(words)
    assert words[:4] == ["sa", "shoki", "kiko", "fe"]  # fixed, not drawn from any seed
    for w in LEXICON:
        assert re.fullmatch(r"[a-z]+", w.text) and w.text.isascii()
        assert 1 <= len(w.syllables) <= 3
        for onset, vowel in w.syllables:
            assert onset is None or onset[0] in ("fric", "plos")
            assert 0 <= vowel < 5
    # The spelling is the syllable sequence: same letters, same syllables.
    assert lexicon.lexicon_word("kasu").syllables == ((("plos", 0), 0), (("fric", 0), 2))
    assert lexicon.lexicon_word("shia").syllables == ((("fric", 1), 1), (None, 0))
    # The story chain stays inside the lexicon and never repeats a word.
    for w, nxt in lexicon.CHAIN.items():
        assert len(nxt) == 2 and w not in nxt and set(nxt) <= set(words)


def test_grammar_answers_follow_from_the_prompt():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(400):
        kind, user, main = sample_exchange(rng)
        kinds.add(kind)
        assert set(user + main) <= set(lexicon_words())
        if kind == "colour":
            assert user[0] == "kishu" and main == [user[1], "i", colour_of(user[1])]
        elif kind == "where":
            assert user[0] == "fua" and main == [user[1], "o", place_of(user[1])]
        elif kind == "check":
            n, c = user[0], user[2]
            assert n in NOUNS and main == (["kafi"] if c == colour_of(n) else ["fo", colour_of(n)])
        elif kind == "count":
            k = NUMBERS.index(user[1])
            assert main == list(NUMBERS[k + 1:k + 4])
        elif kind == "echo":
            assert user[0] == "sefo" and main == user[1:]
        elif kind == "story":
            assert user == ["ushi"] and 3 <= len(main) <= 5
            assert all(b in lexicon.CHAIN[a] for a, b in zip(main, main[1:]))
        elif kind == "bye":
            assert user == ["fe"] and main == ["fe", "kiko"]
    assert kinds == {"colour", "where", "check", "count", "echo", "story", "bye"}
    kind, user, main = sample_exchange(rng, "greet")
    assert user[0] in ("sa", "shoki") and main == [user[0], "kiko"]


def test_items_are_deterministic(corpus, items):
    again = SyntheticAlignedDialogueCorpus(sample_rate=SR, num_dialogues=6, seconds=8.0, seed=1)
    for i in (4, 0):  # another object, another order
        item = again[i]
        assert np.array_equal(item["audio"], items[i]["audio"])
        assert item["alignments"] == items[i]["alignments"]
        assert item["turns"] == items[i]["turns"]
    other_seed = SyntheticAlignedDialogueCorpus(sample_rate=SR, num_dialogues=6, seconds=8.0,
                                                seed=2)[0]
    other_split = SyntheticAlignedDialogueCorpus(sample_rate=SR, num_dialogues=6, seconds=8.0,
                                                 seed=1, split="eval")[0]
    for other in (other_seed, other_split):
        assert not np.array_equal(other["audio"], items[0]["audio"])
        assert other["alignments"] != items[0]["alignments"]
    assert corpus[-1]["index"] == 5
    with pytest.raises(IndexError):
        corpus[6]


def test_item_layout(corpus, items):
    for i, item in enumerate(items):
        assert set(item) == {"audio", "voices", "turns", "alignments", "index"}
        assert item["index"] == i
        assert item["audio"].dtype == np.float32 and item["audio"].shape == (2, 8 * SR)
        assert np.abs(item["audio"]).max() <= 1.0
        assert item["voices"] == corpus.voices_of(i) and item["voices"][0] != item["voices"][1]
        speakers = {w[2] for w in item["alignments"]}
        assert speakers == {MAIN_SPEAKER, USER_SPEAKER}
        # Both channels speak, and turns alternate, the user first.
        channels = [c for c, _, _ in item["turns"]]
        assert channels[0] == 1 and all(a != b for a, b in zip(channels, channels[1:]))
        assert len(item["alignments"]) >= 8


def test_alignments_sit_on_the_speakers_voice(items):
    vocab = set(lexicon_words())
    for item in items:
        audio, words = item["audio"], item["alignments"]
        n = audio.shape[1]
        starts = [w[1][0] for w in words]
        assert starts == sorted(starts)
        silence = []
        for ch, speaker in ((0, MAIN_SPEAKER), (1, USER_SPEAKER)):
            mask = np.ones(n, bool)  # this channel away from its own words
            for text, (s, e), spk in words:
                assert isinstance(text, str) and text in vocab
                assert 0 <= s < e <= n / SR
                if spk == speaker:
                    mask[max(0, int((s - 0.15) * SR)):int((e + 0.15) * SR)] = False
            silence.append(_rms(audio[ch][mask]))
        for text, (s, e), spk in words:
            x = audio[0 if spk == MAIN_SPEAKER else 1]
            inside = _rms(x[int(s * SR):int(e * SR)])
            # Voiced on its speaker's channel, far above that channel's silence between turns,
            # and the span's edges are the word's edges: 20 ms either side is near-silent.
            assert inside > 0.01
            assert inside > 100 * silence[0 if spk == MAIN_SPEAKER else 1]
            assert _rms(x[max(0, int((s - 0.02) * SR)):int((s - 0.002) * SR)]) < 0.05 * inside
            assert _rms(x[int((e + 0.005) * SR):int((e + 0.025) * SR)]) < 0.05 * inside


def test_a_word_sounds_like_itself():
    # Two renditions of a word by one voice are nearer (DTW over MFCCs) than any other word's.
    words = ["kasu", "fiko", "shue", "oka", "kishu", "shia", "kei", "fua"]

    def mfcc(voice, word, rep):
        rng = np.random.default_rng([voice, words.index(word), rep])
        audio, spans = synthesize_words(rng, VOICES[voice], [word], SR, lead=0.0, tail=0.0)
        assert len(spans) == 1 and abs(spans[0][1] * SR - len(audio)) <= 1
        return librosa.feature.mfcc(y=audio, sr=SR, n_mfcc=13, n_fft=512, hop_length=120,
                                    n_mels=40)[1:]  # without c0 (loudness)

    def dist(x, y):
        cost, path = librosa.sequence.dtw(X=x, Y=y, metric="euclidean")
        return cost[-1, -1] / len(path)

    for voice in (0, 5):
        reps = {w: (mfcc(voice, w, 0), mfcc(voice, w, 1)) for w in words}
        for w in words:
            same = dist(reps[w][0], reps[w][1])
            nearest_other = min(dist(reps[w][0], reps[u][1]) for u in words if u != w)
            assert same < nearest_other, (voice, w, same, nearest_other)


def test_written_files_are_moshi_finetune_data(tmp_path, corpus):
    paths = write_aligned_dialogues(tmp_path, 2, sample_rate=SR, seed=1, seconds=8.0)
    assert [os.path.basename(p) for p in paths] == ["dialogue_00000.wav", "dialogue_00001.wav"]
    assert sorted(os.listdir(tmp_path)) == ["dialogue_00000.json", "dialogue_00000.wav",
                                            "dialogue_00001.json", "dialogue_00001.wav"]
    for i, path in enumerate(paths):
        item = corpus[i]  # same (seed, split, index, seconds) as the written files
        audio, sr = sf.read(path, dtype="float32")
        assert sr == SR and audio.shape == (8 * SR, 2)  # [samples, (left = main, right = user)]
        assert np.abs(audio - item["audio"].T).max() < 1e-4  # 16-bit quantisation
        json_path = path[:-4] + ".json"
        with open(json_path, encoding="utf-8") as f:
            raw = json.load(f)
        assert list(raw) == ["alignments"] and raw["alignments"] == item["alignments"]
        words = load_alignment(json_path, audio.shape[0] / sr)
        assert [[w.text, [w.start, w.end], w.speaker] for w in words] == item["alignments"]


def test_tokenizer_covers_the_lexicon(tmp_path, items):
    tok = train_tokenizer(lexicon_words(), tmp_path / "lexicon.model", vocab_size=64)
    assert tok.unk_id == 4
    for word in lexicon_words():
        ids = tok.encode(word)
        assert ids and 4 not in ids, word
    transcript = " ".join(w[0] for w in items[0]["alignments"])
    assert 4 not in tok.encode(transcript)
    # Moshi's text stream of each item keeps every word the model says: words are long enough
    # (>= 2 frames at 12.5 Hz) to write their tokens before the next word arrives.
    for item in items:
        words = [Word(text, s, e, spk) for text, (s, e), spk in item["alignments"]]
        stream = text_stream(words, math.ceil(8.0 * FRAME_RATE), tok)
        said = [w[0] for w in item["alignments"] if w[2] == MAIN_SPEAKER]
        assert tok.decode([int(i) for i in stream if i >= 4]).split() == said


def test_make_corpus_files_tokenize_with_their_text_stream(tmp_path):
    """`make-corpus --kind=aligned_dialogue`'s files (WAV + alignment JSON + the lexicon's
    tokenizer) tokenize with the text stream: the model's words come back from it in order."""
    from audiolm_jax.data.lexicon import write_aligned_dialogues, write_lexicon_tokenizer
    from audiolm_jax.lm import tokens as tk
    from audiolm_jax.text import TextTokenizer

    folder = tmp_path / "corpus"
    paths = write_aligned_dialogues(folder, 2, sample_rate=8000, seconds=4.0, seed=3)
    spm = write_lexicon_tokenizer(folder)
    assert open(spm, "rb").read() == open(write_lexicon_tokenizer(tmp_path / "again"), "rb").read()
    out = str(tmp_path / "tok")
    tk.tokenize_corpus(paths, out, tokenizer="mulaw", sample_rate=8000, stereo_streams=True,
                       text_tokenizer=spm)
    td = tk.load_token_dir(out)
    tok = TextTokenizer.load(spm)
    shard = td.shards[0]
    bounds = list(shard.starts) + [td.shard_frames[0]]
    for k, path in enumerate(paths):
        words = [w for w, _, speaker in json.load(open(path[:-4] + ".json"))["alignments"]
                 if speaker == "SPEAKER_MAIN"]
        row = shard.text[bounds[k]:bounds[k + 1]]
        ids = [int(i) for i in row if i > 3]
        assert tok.decode(ids).split() == words
