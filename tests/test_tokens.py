"""Tests for audiolm_jax.lm.tokens: token directories and window iterators."""

import json
import math
import os

import librosa
import numpy as np
import pytest

from audiolm_jax.data.audio_io import load_audio, save_wav
from audiolm_jax.data.synthetic import write_synthetic_wavs
from audiolm_jax.lm import tokens as tk

SR = 16000


class FakeCodec:
    """Deterministic stand-in for LoadedCodec: codes derived from frame energies."""

    sample_rate = SR
    hop_length = 160
    frame_rate = SR / 160
    num_levels = 3
    codebook_size = 1024
    step = 7
    config = {"quantizer": {"num_levels": 3, "codebook_size": 1024}}
    workdir = "/fake/codec"

    def encode(self, audio):
        audio = np.asarray(audio, np.float32)
        frames = math.ceil(len(audio) / self.hop_length)
        padded = np.zeros(frames * self.hop_length, np.float32)
        padded[:len(audio)] = audio
        x = padded.reshape(frames, self.hop_length)
        base = np.floor((x.mean(axis=1) + 1.0) * 5000.0 + np.abs(x).sum(axis=1) * 100).astype(np.int64)
        return np.stack([(base + 97 * l) % self.codebook_size
                         for l in range(self.num_levels)]).astype(np.int32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    paths = write_synthetic_wavs(folder, 5, sample_rate=SR, seconds=0.4)
    junk = os.path.join(folder, "junk.wav")
    with open(junk, "wb") as f:
        f.write(b"this is not audio" * 10)
    return paths, junk


def test_codec_tokens_metadata_and_contents(corpus, tmp_path):
    paths, junk = corpus
    out = str(tmp_path / "tok")
    with pytest.warns(UserWarning, match="junk.wav"):
        summary = tk.tokenize_corpus(paths + [junk], out, codec=FakeCodec(), files_per_shard=2)
    assert summary["num_files"] == 6
    assert summary["skipped_files"] == [junk]
    assert summary["shards_written"] == [0, 1, 2] and summary["shards_skipped"] == []
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["tokenizer"] == "codec" and meta["num_levels"] == 3
    assert meta["codebook_size"] == 1024 and meta["num_streams"] == 1
    assert meta["frame_rate"] == 100.0 and meta["sample_rate"] == SR
    assert meta["codec"] == {"workdir": "/fake/codec", "checkpoint_step": 7,
                             "config": FakeCodec.config}
    assert meta["shard_files"] == [f"shard_{i:05d}-of-00003.npz" for i in range(3)]

    td = tk.load_token_dir(out)
    assert (td.num_levels, td.num_streams, td.codebook_size) == (3, 1, 1024)
    codec = FakeCodec()
    ordered = sorted(paths + [junk])  # junk.wav sorts first: shard 0 = [junk, synth0]
    expected = [codec.encode(load_audio(p, SR)) for p in ordered if p != junk]
    got_names, got = [], []
    for shard in td.shards:
        z = np.load(shard.path)
        assert z["tokens"].dtype == np.int16
        starts = list(z["starts"]) + [z["tokens"].shape[2]]
        for u, name in enumerate(z["names"]):
            got_names.append(str(name))
            got.append(np.asarray(shard.tokens[0, :, starts[u]:starts[u + 1]]))
    assert got_names == [os.path.basename(p) for p in ordered if p != junk]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert str(np.load(td.shards[0].path)["skipped"][0]) == "junk.wav"
    assert td.total_frames == sum(e.shape[1] for e in expected)
    assert isinstance(td.shards[1].tokens, np.memmap)


def test_resume_rewrites_only_missing_shard(corpus, tmp_path):
    paths, _ = corpus
    out = str(tmp_path / "tok")
    tk.tokenize_corpus(paths, out, codec=FakeCodec(), files_per_shard=2)
    files = [os.path.join(out, f"shard_{i:05d}-of-00003.npz") for i in range(3)]
    before = {f: open(f, "rb").read() for f in files}
    for f in files:
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    os.remove(files[1])
    summary = tk.tokenize_corpus(paths, out, codec=FakeCodec(), files_per_shard=2)
    assert summary["shards_written"] == [1] and summary["shards_skipped"] == [0, 2]
    for i, f in enumerate(files):
        assert open(f, "rb").read() == before[f]
        assert (os.stat(f).st_mtime_ns == 1_000_000_000) == (i != 1)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_metadata_mismatch_refused(corpus, tmp_path):
    paths, _ = corpus
    out = str(tmp_path / "tok")
    tk.tokenize_corpus(paths[:2], out, codec=FakeCodec(), files_per_shard=2)
    with pytest.raises(ValueError, match="different tokenization"):
        tk.tokenize_corpus(paths[:2], out, tokenizer="mulaw", files_per_shard=2)
    other = FakeCodec()
    other.step = 8
    with pytest.raises(ValueError, match="checkpoint_step"):
        tk.tokenize_corpus(paths[:2], out, codec=other, files_per_shard=2)


def test_process_split_matches_single_process(corpus, tmp_path):
    paths, _ = corpus
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    tk.tokenize_corpus(paths, one, codec=FakeCodec(), files_per_shard=2)
    s1 = tk.tokenize_corpus(paths, two, codec=FakeCodec(), files_per_shard=2,
                            process_index=1, process_count=2)
    assert s1["shards_written"] == [1]
    s0 = tk.tokenize_corpus(paths, two, codec=FakeCodec(), files_per_shard=2,
                            process_index=0, process_count=2)
    assert s0["shards_written"] == [0, 2]
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    for name in os.listdir(one):
        if name.endswith(".npz"):
            a, b = np.load(os.path.join(one, name)), np.load(os.path.join(two, name))
            for k in ("tokens", "starts", "names"):
                np.testing.assert_array_equal(a[k], b[k])
    assert json.load(open(os.path.join(one, "metadata.json"))) == json.load(
        open(os.path.join(two, "metadata.json")))


def test_mulaw_tokens(corpus, tmp_path):
    paths, _ = corpus
    out = str(tmp_path / "mu")
    tk.tokenize_corpus(paths[:2], out, tokenizer="mulaw", sample_rate=8000, files_per_shard=4)
    td = tk.load_token_dir(out)
    assert td.metadata["frame_rate"] == 8000 and td.codebook_size == 256 and td.num_levels == 1
    assert td.metadata["codec"] is None
    ref = [librosa.mu_compress(load_audio(p, 8000), mu=255) + 128 for p in paths[:2]]
    np.testing.assert_array_equal(np.asarray(td.shards[0].tokens[0, 0]), np.concatenate(ref))


def test_stereo_streams(corpus, tmp_path):
    paths, _ = corpus
    left, right = load_audio(paths[0], SR), load_audio(paths[1], SR)
    n = min(len(left), len(right))
    folder = tmp_path / "st"
    stereo = str(folder / "conv.wav")
    save_wav(stereo, np.stack([left[:n], right[:n]], axis=1), SR)
    mono_l, mono_r = str(folder / "l.wav"), str(folder / "r.wav")
    save_wav(mono_l, left[:n], SR)
    save_wav(mono_r, right[:n], SR)
    tk.tokenize_corpus([stereo], str(tmp_path / "s"), codec=FakeCodec(), stereo_streams=True)
    td = tk.load_token_dir(str(tmp_path / "s"))
    assert td.num_streams == 2 and td.shards[0].tokens.shape[:2] == (2, 3)
    for stream, mono in enumerate([mono_l, mono_r]):
        out = str(tmp_path / f"m{stream}")
        tk.tokenize_corpus([mono], out, codec=FakeCodec())
        np.testing.assert_array_equal(td.shards[0].tokens[stream],
                                      tk.load_token_dir(out).shards[0].tokens[0])
    with pytest.raises(ValueError, match="l.wav"):
        tk.tokenize_corpus([mono_l], str(tmp_path / "bad"), codec=FakeCodec(), stereo_streams=True)


@pytest.fixture(scope="module")
def token_dir(corpus, tmp_path_factory):
    paths, _ = corpus
    out = str(tmp_path_factory.mktemp("tokdir"))
    tk.tokenize_corpus(paths, out, codec=FakeCodec(), files_per_shard=2)
    return tk.load_token_dir(out)


def _contains(td, window):
    """True if window [S, K, F] occurs in some shard."""
    F = window.shape[-1]
    for shard in td.shards:
        t = np.asarray(shard.tokens)
        for s in range(t.shape[2] - F + 1):
            if np.array_equal(t[:, :, s:s + F], window):
                return True
    return False


def test_window_iterator(token_dir):
    it = tk.make_window_iterator(token_dir, frames=16, batch_size=4, seed=3)
    batches = [next(it) for _ in range(5)]
    assert batches[0]["codes"].shape == (4, 1, 3, 16) and batches[0]["codes"].dtype == np.int32
    assert all(_contains(token_dir, w) for w in batches[0]["codes"])
    again = tk.make_window_iterator(token_dir, frames=16, batch_size=4, seed=3)
    for b in batches:
        np.testing.assert_array_equal(next(again)["codes"], b["codes"])
    # Resume from a JSON round-tripped state.
    it2 = tk.make_window_iterator(token_dir, frames=16, batch_size=4, seed=3)
    next(it2), next(it2)
    state = json.loads(json.dumps(it2.get_state()))
    resumed = tk.make_window_iterator(token_dir, frames=16, batch_size=4, seed=3)
    resumed.set_state(state)
    for b in batches[2:]:
        np.testing.assert_array_equal(next(resumed)["codes"], b["codes"])
    other = tk.make_window_iterator(token_dir, frames=16, batch_size=4, seed=4)
    assert not np.array_equal(next(other)["codes"], batches[0]["codes"])


def test_window_iterator_processes_split_the_global_batch(token_dir):
    """Two processes' batches, in process order, are the one-process batch of twice the size."""
    one = tk.make_window_iterator(token_dir, frames=8, batch_size=16, seed=0)
    two = [tk.make_window_iterator(token_dir, frames=8, batch_size=8, seed=0,
                                   shard_index=p, shard_count=2) for p in range(2)]
    for _ in range(5):
        whole = next(one)["codes"]
        halves = [next(it)["codes"] for it in two]
        np.testing.assert_array_equal(np.concatenate(halves), whole)
        assert not np.array_equal(halves[0], halves[1])


def test_eval_split_and_eval_windows(token_dir):
    it = tk.make_window_iterator(token_dir, frames=8, batch_size=2, seed=0, split="eval",
                                 eval_fraction=0.5)
    assert next(it)["codes"].shape == (2, 1, 3, 8)
    batches = list(tk.iter_eval_windows(token_dir, 8, 3, max_batches=2))
    assert len(batches) == 2
    flat = np.concatenate([b["codes"] for b in batches])
    t0 = np.asarray(token_dir.shards[0].tokens)
    for w in range(6):
        np.testing.assert_array_equal(flat[w], t0[:, :, 8 * w:8 * w + 8])
    again = list(tk.iter_eval_windows(token_dir, 8, 3, max_batches=2))
    np.testing.assert_array_equal(again[1]["codes"], batches[1]["codes"])


def test_missing_dir_and_shard_errors(tmp_path, corpus):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tk.load_token_dir(missing)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="empty"):
        tk.load_token_dir(str(tmp_path / "empty"))
    paths, _ = corpus
    out = str(tmp_path / "partial")
    tk.tokenize_corpus(paths, out, codec=FakeCodec(), files_per_shard=2)
    os.remove(os.path.join(out, "shard_00002-of-00003.npz"))
    with pytest.raises(FileNotFoundError, match="partial"):
        tk.load_token_dir(out)


def test_text_stream_rows_beside_the_audio_tokens(corpus, tmp_path):
    """--text_tokenizer: each file's aligned text stream (audiolm_jax/text) is stored frame by
    frame beside its tokens and windowed with them; no JSON -> -1 rows, counted; a malformed
    JSON -> the file is left out with the JSON named."""
    from audiolm_jax.text import load_alignment, text_stream, train_tokenizer

    paths, _ = corpus
    words = ["hello", "there", "model", "speaks", "user", "talks"]
    spm = str(tmp_path / "spm.model")
    tok = train_tokenizer(words * 20, spm, vocab_size=40)
    folder = tmp_path / "dialogues"
    folder.mkdir()
    stereo = []
    for i in range(3):  # the first three 0.4 s files, each stereo with itself reversed
        audio = load_audio(paths[i], SR)
        path = str(folder / f"d{i}.wav")
        save_wav(path, np.stack([audio, audio[::-1]], axis=1), SR)
        stereo.append(path)
    aligned = {"alignments": [["hello", [0.05, 0.12], "SPEAKER_MAIN"],
                              ["user", [0.1, 0.2], "SPEAKER_USER"],
                              ["speaks", [0.21, 0.3], "SPEAKER_MAIN"]]}
    (folder / "d0.json").write_text(json.dumps(aligned))
    # d1 has no JSON; d2's words run backwards in time.
    (folder / "d2.json").write_text(json.dumps({"alignments": [
        ["there", [0.3, 0.35], "SPEAKER_MAIN"], ["model", [0.1, 0.2], "SPEAKER_MAIN"]]}))
    out = str(tmp_path / "tok")
    with pytest.warns(UserWarning, match="d2.json"):
        summary = tk.tokenize_corpus(stereo, out, codec=FakeCodec(), stereo_streams=True,
                                     text_tokenizer=spm)
    assert summary["skipped_files"] == [stereo[2]] and "alignment" in summary["skip_reasons"][stereo[2]]
    assert summary["no_transcript"] == [stereo[1]]
    td = tk.load_token_dir(out)
    meta = td.metadata
    assert meta["text"]["no_transcript"] == ["d1.wav"] and meta["text"]["vocab_size"] == tok.vocab_size
    assert meta["skipped"]["count"] == 1
    shard = td.shards[0]
    frames = td.shard_frames[0]
    starts = list(shard.starts) + [frames]
    assert shard.text.shape == (frames,) and shard.text.dtype == np.int32
    first = shard.text[starts[0]:starts[1]]
    expected = text_stream(load_alignment(folder / "d0.json", 0.4), starts[1], tok,
                           frame_rate=FakeCodec.frame_rate)
    np.testing.assert_array_equal(first, expected)
    hello = tok.encode("hello")
    assert list(first[5:5 + len(hello)]) == hello and first[4] == 0  # EPAD before the word
    assert (first[10:20] == 3).all()  # the user's word (0.1-0.2 s) is not in the stream
    assert (shard.text[starts[1]:] == -1).all()  # d1: no transcript
    # Windows carry the text rows of the same frames.
    batch = next(tk.make_window_iterator(td, frames=8, batch_size=4, seed=0))
    assert batch["text"].shape == (4, 8) and batch["codes"].shape == (4, 2, 3, 8)
    for codes, text in zip(batch["codes"], batch["text"]):
        hits = [s for s in range(frames - 7)
                if np.array_equal(shard.tokens[:, :, s:s + 8], codes)]
        assert any(np.array_equal(shard.text[s:s + 8], text) for s in hits)
    # A resumed run must use the same text tokenizer.
    other = str(tmp_path / "other.model")
    train_tokenizer(words[:3] * 20, other, vocab_size=30)
    with pytest.raises(ValueError, match="text_tokenizer"):
        tk.tokenize_corpus(stereo, out, codec=FakeCodec(), stereo_streams=True,
                           text_tokenizer=other)
