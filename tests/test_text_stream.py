"""The text stream package: alignment files, the SentencePiece tokenizer, the per-frame stream.

The expected streams are written out by hand from moshi-finetune's rules
(``finetune/data/interleaver.py``, ``Interleaver.build_token_stream``), which
``audiolm_jax/text/stream.py`` describes. Frames are 0.08 s (12.5 Hz); a word arrives at frame
``floor(start * 12.5)``. P is PAD (3), E is EPAD (0).
"""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest

from audiolm_jax.text import (
    AlignmentError,
    TextTokenizer,
    Word,
    alignment_path,
    crop_words,
    load_alignment,
    text_stream,
    train_tokenizer,
)

P, E, Z = 3, 0, -1
MAIN, USER = "SPEAKER_MAIN", "SPEAKER_USER"


class DictTokenizer:
    """word -> ids; an unknown word is a test bug, so it raises."""

    vocab = {
        "hello": [10],
        "world": [11, 12],
        "moshi": [13, 14, 15],
        "hi": [16],
        "ok": [17],
        "yes": [18],
        "\n": [9],
    }
    bos_id = 1
    eos_id = 2

    def encode(self, text):
        return list(self.vocab[text])


TOK = DictTokenizer()


def stream(words, num_frames, **kw):
    out = text_stream(words, num_frames, TOK, **kw)
    assert out.dtype == np.int32 and out.shape == (num_frames,)
    return out.tolist()


def w(text, start, end, speaker=MAIN):
    return Word(text, start, end, speaker)


# --- the stream --------------------------------------------------------------------------------

def test_two_words():
    # hello at 0.44 s -> frame 5 (5.5); world at 1.0 s -> frame 12 (12.5), two tokens.
    words = [w("hello", 0.44, 0.6), w("world", 1.0, 1.3)]
    assert stream(words, 16) == [P, P, P, P, E, 10, P, P, P, P, P, E, 11, 12, P, P]


def test_exact_frame_boundary_starts_on_that_frame():
    # 0.4 s * 12.5 = 5.0 exactly: frame 5 (start * fps < t + 1 first holds at t = 5).
    assert stream([w("hello", 0.4, 0.5)], 8) == [P, P, P, P, E, 10, P, P]


def test_word_at_frame_zero_has_no_epad_and_multi_token_word_spans_frames():
    words = [w("moshi", 0.0, 0.3), w("hi", 0.5, 0.6)]  # hi: 6.25 -> frame 6
    assert stream(words, 8) == [13, 14, 15, P, P, E, 16, P]


def test_next_word_right_after_last_token_gets_no_epad():
    words = [w("hello", 0.0, 0.08), w("hi", 0.1, 0.2)]  # hi: 1.25 -> frame 1
    assert stream(words, 4) == [10, 16, P, P]


def test_word_arriving_mid_word_cuts_the_previous_one():
    # moshi (3 tokens) at frame 0, hello at frame 1: moshi's last two tokens are lost.
    words = [w("moshi", 0.0, 0.3), w("hello", 0.1, 0.2)]
    assert stream(words, 5) == [13, 10, P, P, P]
    # keep_and_shift keeps them and pushes hello later.
    assert stream(words, 5, keep_and_shift=True) == [13, 14, 15, 10, P]


def test_two_words_in_one_frame_keep_only_the_last():
    words = [w("hello", 0.0, 0.04), w("hi", 0.05, 0.07)]  # 0.0 and 0.625: both frame 0
    assert stream(words, 3) == [16, P, P]


def test_user_words_are_ignored():
    words = [w("ok", 0.25, 0.3, USER), w("hello", 0.5, 0.6)]  # ok: frame 3, hello: frame 6
    assert stream(words, 8) == [P, P, P, P, P, E, 10, P]
    # With every speaker kept, ok comes in too.
    assert stream(words, 8, keep_main_only=False) == [P, P, E, 17, P, E, 10, P]


def test_main_speaker_is_configurable():
    words = [w("ok", 0.25, 0.3, "A"), w("hello", 0.5, 0.6, "B")]
    assert stream(words, 8, main_speaker="A") == [P, P, E, 17, P, P, P, P]


def test_words_past_the_last_frame():
    # 0.7 s -> frame 8 of an 8-frame stream: never arrives.
    assert stream([w("hello", 0.7, 0.8)], 8) == [P] * 8
    # moshi at frame 7 (7.5): only its first token fits.
    assert stream([w("moshi", 0.6, 0.9)], 8) == [P, P, P, P, P, P, E, 13]


def test_no_transcript_is_zero_tokens_and_empty_transcript_is_padding():
    assert stream(None, 5) == [Z] * 5
    assert stream([], 5) == [P] * 5
    assert stream(None, 0) == []


def test_zero_duration_words_are_dropped():
    assert stream([w("hello", 0.5, 0.5)], 8) == [P] * 8


def test_unsorted_words_are_sorted_by_start():
    words = [w("hi", 0.5, 0.6), w("hello", 0.0, 0.1)]
    assert stream(words, 8) == [10, P, P, P, P, E, 16, P]


def test_words_are_stripped_and_newlines_use_the_newline_piece():
    assert stream([w(" hello ", 0.0, 0.1)], 2) == [10, P]
    assert stream([w("hello\nhi", 0.0, 0.3)], 4) == [10, 9, 16, P]


def test_in_word_padding_fills_to_the_word_end_and_turns_into_epad():
    # hello [0, 0.5]: int(0.5 * 12.5) = 6, so frames 1..6 hold the in-word padding (5).
    # hi [1.0, 1.1]: frame 12 (12.5), padded up to frame int(1.1 * 12.5) = 13.
    words = [w("hello", 0.0, 0.5), w("hi", 1.0, 1.1)]
    assert stream(words, 15, in_word_pad_id=5) == [10, 5, 5, 5, 5, 5, 5, P, P, P, P, E, 16, 5, P]
    # A word arriving inside the previous word's span replaces its in-word padding with EPAD.
    words = [w("hello", 0.0, 0.5), w("hi", 0.3, 0.4)]  # hi: 3.75 -> frame 3, ends frame 5
    assert stream(words, 8, in_word_pad_id=5) == [10, 5, E, 16, 5, 5, P, P]


def test_bos_eos_at_turn_changes():
    words = [w("ok", 0.0, 0.1, USER), w("hello", 0.44, 0.6), w("yes", 0.84, 0.9, USER)]
    # ok: frame 0, first speaker and not main: no mark. hello (frame 5) follows the user: BOS.
    # yes (frame 10) follows the main speaker: EOS.
    expected = [17, P, P, P, E, 1, 10, P, P, E, 2, 18, P]
    assert stream(words, 13, keep_main_only=False, use_bos_eos=True) == expected
    assert stream(words, 13, keep_main_only=False, use_bos_eos=True, bos_id=7, eos_id=8) == [
        17, P, P, P, E, 7, 10, P, P, E, 8, 18, P]
    # The main speaker opening the file also gets BOS.
    assert stream([w("hello", 0.0, 0.2)], 3, keep_main_only=False, use_bos_eos=True) == [1, 10, P]
    with pytest.raises(ValueError, match="keep_main_only"):
        text_stream(words, 13, TOK, use_bos_eos=True)


def test_audio_delay():
    # A positive delay moves words earlier: hello 0.44 -> 0.28 s (frame 3); ok ends before it.
    words = [w("ok", 0.0, 0.1), w("hello", 0.44, 0.6)]
    assert stream(words, 6, audio_delay=0.16) == [P, P, E, 10, P, P]
    # A negative delay moves words later and blanks the first int(12.5 * 0.16) = 2 frames.
    assert stream([w("hello", 0.0, 0.1)], 5, audio_delay=-0.16) == [Z, Z, 10, P, P]


def test_crop_words_selects_by_start_and_shifts():
    words = [w("a", 0.5, 1.2), w("b", 1.0, 1.5), w("c", 2.0, 3.5), w("d", 3.0, 3.2)]
    assert crop_words(words, 1.0, 2.0) == [w("b", 0.0, 0.5), w("c", 1.0, 2.5)]
    assert crop_words(words, 10.0, 2.0) == []


# --- alignment files ---------------------------------------------------------------------------

def write_json(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_alignment_path_and_load(tmp_path):
    assert alignment_path(tmp_path / "a.wav") == tmp_path / "a.json"
    path = write_json(tmp_path / "a.json", {
        "alignments": [[" Hello", [0.5, 0.8], MAIN], ["hi", [1, 1.2], USER],
                       ["x", [1.2, 1.2], MAIN]],
        "text_conditions": {"k": "v"},
    })
    assert load_alignment(path, duration=2.0) == [
        Word(" Hello", 0.5, 0.8, MAIN), Word("hi", 1.0, 1.2, USER), Word("x", 1.2, 1.2, MAIN)]


def test_missing_alignment_is_none(tmp_path):
    assert load_alignment(tmp_path / "absent.json", duration=1.0) is None


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not JSON"),
    ([["a", [0, 1], MAIN]], "JSON object"),
    ({"words": []}, "missing key 'alignments'"),
    ({"alignments": {"a": 1}}, "must be a list"),
    ({"alignments": [["a", [0, 1]]]}, r"alignments\[0\]: expected \[word"),
    ({"alignments": [[3, [0, 1], MAIN]]}, "word must be a string"),
    ({"alignments": [["a", [0, 1, 2], MAIN]]}, r"expected \[start, end\]"),
    ({"alignments": [["a", ["0", 1], MAIN]]}, "finite numbers"),
    ('{"alignments": [["a", [NaN, 1], "SPEAKER_MAIN"]]}', "finite numbers"),
    ({"alignments": [["a", [0, 1], 7]]}, "speaker must be a string"),
    ({"alignments": [["a", [0.5, 0.4], MAIN]]}, "before its start"),
    ({"alignments": [["a", [1.0, 1.2], MAIN], ["b", [0.5, 0.6], MAIN]]}, "out of order"),
    ({"alignments": [["a", [2.5, 3.0], MAIN]]}, "past the audio"),
    ({"alignments": [["a", [-0.5, 0.1], MAIN]]}, "before the audio"),
    ({"alignments": [["a", [0, 1], "SPEAKER_2"]]}, "unknown speaker 'SPEAKER_2'"),
])
def test_malformed_alignments_name_the_file(tmp_path, content, reason):
    path = write_json(tmp_path / "bad.json", content)
    with pytest.raises(AlignmentError, match=reason) as info:
        load_alignment(path, duration=2.0)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert isinstance(info.value, ValueError) and info.value.path == str(path)
    # It survives pickling (data-loader workers send errors across processes).
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_alignment_tolerance_and_speakers(tmp_path):
    path = write_json(tmp_path / "a.json", {"alignments": [["a", [1.9, 2.05], "A"]]})
    # 0.05 s past a 2 s file is within the default one-frame tolerance.
    assert load_alignment(path, duration=2.0, speakers={"A"}) == [Word("a", 1.9, 2.05, "A")]
    assert load_alignment(path, duration=2.0, speakers=None)[0].speaker == "A"
    with pytest.raises(AlignmentError, match="past the audio"):
        load_alignment(path, duration=2.0, speakers={"A"}, tolerance=0.0)
    with pytest.raises(AlignmentError, match="unknown speaker"):
        load_alignment(path, duration=2.0)


# --- the SentencePiece tokenizer ---------------------------------------------------------------

WORDS = ("hello world the quick brown fox jumps over the lazy dog moshi speaks while listening "
         "audio text frame stream padding token words are aligned").split()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "text.model"
    return path, train_tokenizer(WORDS * 3, path, vocab_size=80)


def test_trained_tokenizer_id_layout(trained):
    path, tok = trained
    assert [tok.id_to_piece(i) for i in range(5)] == ["<epad>", "<s>", "</s>", "<pad>", "<unk>"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, 3, 4)
    assert 0 in tok.control_ids and 3 in tok.control_ids
    assert 5 < tok.vocab_size <= 80


def test_trained_tokenizer_round_trip_and_reserved_ids(trained):
    path, tok = trained
    loaded = TextTokenizer.load(path)
    assert loaded.model_bytes == path.read_bytes()
    for word in WORDS:
        ids = loaded.encode(word)
        assert ids and min(ids) >= 5, (word, ids)
        assert loaded.decode(ids) == word
    assert loaded.decode(loaded.encode("the lazy dog")) == "the lazy dog"
    # Unseen characters and the special pieces' spellings never give 0 or 3.
    for text in ["zebra ÿ 漢字", "<epad> <pad> <s>"]:
        ids = loaded.encode(text)
        assert 0 not in ids and 3 not in ids, (text, ids)
    assert 4 in loaded.encode("漢")
    assert loaded.decode([0, 3] + loaded.encode("hello")) == "hello"
    assert pickle.loads(pickle.dumps(loaded)).encode("moshi") == loaded.encode("moshi")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        loaded.decode([loaded.vocab_size])


def test_training_is_deterministic_and_atomic(trained, tmp_path):
    path, tok = trained
    again = train_tokenizer(WORDS * 3, tmp_path / "again.model", vocab_size=80)
    assert (tmp_path / "again.model").read_bytes() == path.read_bytes()
    assert again.encode("quick brown fox") == tok.encode("quick brown fox")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.model"]


def test_training_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", "  "], tmp_path / "x.model", vocab_size=50)
    with pytest.raises(ValueError) as info:
        train_tokenizer(["abcdefghijklmnopqrstuvwxyz"], tmp_path / "x.model", vocab_size=10,
                        hard_vocab_limit=True)
    assert str(tmp_path / "x.model") in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x.model").exists()


@pytest.mark.parametrize("content", [None, b"", b"this is not a sentencepiece model" * 4,
                                     bytes(range(256)) * 2])
def test_missing_or_corrupt_model_is_one_line(tmp_path, content):
    path = tmp_path / "tokenizer_spm_32k_3.model"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        TextTokenizer.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_without_sentencepiece_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        TextTokenizer.load(tmp_path / "x.model")


def test_stream_with_a_trained_tokenizer(trained, tmp_path):
    _, tok = trained
    path = write_json(tmp_path / "talk.json", {"alignments": [
        [" hello", [0.5, 0.9], MAIN],
        [" listening", [1.0, 1.4], USER],
        [" moshi", [2.1, 2.5], MAIN],
    ]})
    words = crop_words(load_alignment(path, duration=3.0), 0.0, 2.4)
    out = text_stream(words, 30, tok)  # ceil(2.4 * 12.5) = 30 frames
    hello, moshi = tok.encode("hello"), tok.encode("moshi")
    expected = [P] * 30
    expected[5] = E  # hello: 6.25 -> frame 6
    expected[6:6 + len(hello)] = hello
    expected[25] = E  # moshi: 26.25 -> frame 26
    for k, token in enumerate(moshi[:4]):  # frames 26..29: what fits before the window ends
        expected[26 + k] = token
    assert out.tolist() == expected
