"""Tests for audiolm_jax.data: synthetic corpus, audio I/O, sources, grain pipeline."""

import json
import logging
import os
import pickle
import sys
import time

import librosa
import numpy as np
import pytest
import soundfile as sf

from audiolm_jax.data import (AUDIO_EXTENSIONS, AudioDecodeError, FolderSource, SkipStats,
                              SyntheticSpeechCorpus, VOICES, ensure_readable, find_audio_files,
                              iter_eval_batches, load_audio, make_audio_iterator, make_source,
                              save_wav, write_synthetic_wavs)

SR = 16000


@pytest.fixture(scope="module")
def corpus():
    return SyntheticSpeechCorpus(sample_rate=SR, num_utterances=32, utterance_seconds=3.0, seed=0)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_items_and_determinism(corpus):
    item = corpus[3]
    assert set(item) == {"audio", "voice", "index"}
    assert item["audio"].dtype == np.float32 and item["audio"].shape == (3 * SR,)
    assert item["index"] == 3 and 0 <= item["voice"] < 8
    assert np.abs(item["audio"]).max() <= 1.0 and np.abs(item["audio"]).max() > 0.1
    # Same seed -> identical, regardless of instance or access order.
    other = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=32, utterance_seconds=3.0, seed=0)
    for i in (5, 3, 0, 31):
        np.testing.assert_array_equal(other[i]["audio"], corpus[i]["audio"])
    np.testing.assert_array_equal(corpus[-1]["audio"], corpus[31]["audio"])
    # Different seed / split / index -> different audio.
    seed1 = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=32, utterance_seconds=3.0, seed=1)
    held = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=32, utterance_seconds=3.0, seed=0,
                                 split="eval")
    assert not np.allclose(seed1[3]["audio"], item["audio"])
    assert not np.allclose(held[3]["audio"], item["audio"])
    assert not np.allclose(corpus[4]["audio"], item["audio"])
    assert len(corpus) == 32 and len({corpus[i]["voice"] for i in range(8)}) == 8
    with pytest.raises(IndexError):
        corpus[32]
    assert SyntheticSpeechCorpus(sample_rate=24000, utterance_seconds=1.5)[0]["audio"].shape == (
        36000,)
    # Items are kept for later epochs, read-only and equal to freshly synthesised ones; worker
    # processes (pickled copies) start empty; a full cache stops keeping.
    uncached = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=32, utterance_seconds=3.0,
                                     seed=0, cache_bytes=0)
    assert corpus[3]["audio"] is item["audio"] and not item["audio"].flags.writeable
    np.testing.assert_array_equal(uncached[3]["audio"], item["audio"])
    assert uncached[3]["audio"] is not uncached[3]["audio"] and not uncached._cache
    assert not pickle.loads(pickle.dumps(corpus))._cache and corpus._cache
    small = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=4, utterance_seconds=1.0,
                                  cache_bytes=4 * SR * 2)
    for i in range(4):
        small[i]
    assert sorted(small._cache) == [0, 1] and small._cached_bytes == 2 * SR * 4


def _frame_rms(audio, frame=320):
    n = len(audio) // frame
    return np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))


def test_synthetic_is_speech_like(corpus):
    medians = {}
    for i in range(8):
        item = corpus[i]
        audio, voice = item["audio"], VOICES[item["voice"]]
        # Most energy in the speech band.
        power = np.abs(np.fft.rfft(audio)) ** 2
        freqs = np.fft.rfftfreq(len(audio), 1.0 / SR)
        band = power[(freqs >= 80) & (freqs <= 4000)].sum() / power.sum()
        assert band > 0.8, (i, band)
        # Silence gaps (pauses, closures) and voiced stretches both exist.
        rms = _frame_rms(audio)  # 20 ms frames
        silent = rms < 0.01 * rms.max()
        assert 0.05 < silent.mean() < 0.7, (i, silent.mean())
        # f0 of the loud (voiced) frames lies in the voice's range.
        f0 = librosa.yin(audio, fmin=60, fmax=500, sr=SR, frame_length=1024, hop_length=320)
        loud = _frame_rms(np.pad(audio, (512, 512)), 320)[: len(f0)] > 0.3 * rms.max()
        assert loud.sum() > 10
        med = float(np.median(f0[loud]))
        assert voice.f0_min * 0.85 < med < voice.f0_max * 1.15, (i, med, voice)
        medians[item["voice"]] = med
    # Voices are distinct: low male well below child.
    assert medians[0] * 1.8 < medians[6]


def test_synthetic_generation_speed():
    corpus = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=4, utterance_seconds=4.0)
    corpus[0]  # warm-up (filter design caches)
    best = min(_timed(lambda: corpus[1]) for _ in range(3))
    assert best / 4.0 < 0.05, f"{best / 4.0 * 1000:.1f} ms per second of audio"


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_write_synthetic_wavs(tmp_path):
    paths = write_synthetic_wavs(tmp_path / "wavs", n=3, sample_rate=SR, seed=2, seconds=1.0)
    assert [os.path.basename(p) for p in paths] == ["synth_00000.wav", "synth_00001.wav",
                                                     "synth_00002.wav"]
    ref = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=3, utterance_seconds=1.0, seed=2)
    for i, p in enumerate(paths):
        assert sf.info(p).subtype == "PCM_16" and sf.info(p).samplerate == SR
        np.testing.assert_allclose(load_audio(p, SR), ref[i]["audio"], atol=1.0 / 32768 + 1e-6)


# --------------------------------------------------------------------------- audio I/O


def _tone(sr, seconds=0.5, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_audio_resamples_like_librosa(tmp_path):
    path = str(tmp_path / "low.wav")
    sf.write(path, _tone(8000), 8000, subtype="FLOAT")
    got = load_audio(path, 16000)
    raw, sr = sf.read(path, dtype="float32")
    want = librosa.resample(raw, orig_sr=sr, target_sr=16000)
    assert got.dtype == np.float32 and got.shape == want.shape == (8000,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(load_audio(path, None), raw)


def test_load_audio_stereo_to_mono(tmp_path):
    left, right = _tone(SR, freq=300.0), _tone(SR, freq=500.0) * 0.5
    path = str(tmp_path / "stereo.wav")
    sf.write(path, np.stack([left, right], 1), SR, subtype="FLOAT")
    got = load_audio(path, SR)
    assert got.ndim == 1
    np.testing.assert_allclose(got, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("name,subtype,fmt,tol", [
    ("u8.wav", "PCM_U8", "WAV", 1.5 / 128),
    ("s24.wav", "PCM_24", "WAV", 1e-6),
    ("s16.flac", "PCM_16", "FLAC", 1.0 / 32768 + 1e-6),
    ("float.wav", "FLOAT", "WAV", 0.0),
])
def test_load_audio_formats(tmp_path, name, subtype, fmt, tol):
    x = _tone(SR)
    path = str(tmp_path / name)
    sf.write(path, x, SR, subtype=subtype, format=fmt)
    got = load_audio(path, SR)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, x, atol=tol)


@pytest.mark.parametrize("name,fmt,subtype", [("a.ogg", "OGG", "VORBIS"),
                                               ("a.mp3", "MP3", "MPEG_LAYER_III")])
def test_load_audio_lossy(tmp_path, name, fmt, subtype):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile cannot write {fmt}")
    x = _tone(SR, seconds=1.0)
    path = str(tmp_path / name)
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    got = load_audio(path, SR)
    assert got.dtype == np.float32 and abs(len(got) - len(x)) < 0.1 * SR
    assert 0.2 < np.abs(got).max() <= 1.0


def _bad_files(folder):
    """Writes one of each kind of broken file; returns {kind: path}."""
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, f"bad_{k}.wav") for k in ("empty", "random", "truncated",
                                                                "nan", "header")}
    open(paths["empty"], "wb").close()
    with open(paths["random"], "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    good = os.path.join(folder, "tmp_good.wav.part")
    sf.write(good, _tone(SR), SR, subtype="PCM_16", format="WAV")
    data = open(good, "rb").read()
    os.remove(good)
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    with open(paths["header"], "wb") as f:
        f.write(data[:30])
    x = _tone(SR)
    x[100] = np.nan
    sf.write(paths["nan"], x, SR, subtype="FLOAT")
    return paths


def test_load_audio_errors_name_the_file(tmp_path):
    bad = _bad_files(str(tmp_path))
    bad["missing"] = str(tmp_path / "does_not_exist.wav")
    for kind, path in bad.items():
        with pytest.raises(AudioDecodeError) as info:
            load_audio(path, SR)
        assert isinstance(info.value, ValueError)
        assert os.path.basename(path) in str(info.value), (kind, str(info.value))
        assert info.value.path == path
    with pytest.raises(AudioDecodeError, match="NaN"):
        load_audio(bad["nan"], SR)
    with pytest.raises(AudioDecodeError, match="truncated"):
        load_audio(bad["truncated"], SR)


def test_save_wav_clips(tmp_path):
    path = str(tmp_path / "sub" / "clip.wav")
    save_wav(path, np.array([0.0, 2.0, -3.0, 0.5, np.nan], np.float32), SR)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == SR
    got = load_audio(path, SR)
    np.testing.assert_allclose(got, [0.0, 1.0, -1.0, 0.5, 0.0], atol=1e-4)


# --------------------------------------------------------------------------- sources


def _write_tree(root):
    x = _tone(SR, seconds=0.25)
    files = ["b/2.wav", "a/1.flac", "a/z/0.WAV", "c.ogg", "a/10.wav"]
    for rel in files:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fmt = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[rel.rsplit(".", 1)[1].lower()]
        sf.write(path, x, SR, format=fmt)
    open(os.path.join(root, "notes.txt"), "w").close()
    open(os.path.join(root, ".hidden.wav"), "w").close()
    return ["a/1.flac", "a/10.wav", "a/z/0.WAV", "b/2.wav", "c.ogg"]


def test_folder_source_recursive_sorted(tmp_path):
    expected = _write_tree(str(tmp_path))
    src = make_source(str(tmp_path), SR)
    assert isinstance(src, FolderSource) and len(src) == 5
    assert [os.path.relpath(p, tmp_path) for p in src.paths] == expected
    assert find_audio_files(tmp_path) == src.paths
    item = src[2]
    assert set(item) == {"audio", "index", "path"} and item["index"] == 2
    assert item["audio"].dtype == np.float32 and len(item["audio"]) == SR // 4
    assert ensure_readable(src) == {"probed": 5, "ok": 5, "bad": 0, "bad_files": []}
    assert set(AUDIO_EXTENSIONS) == {".wav", ".flac", ".ogg", ".mp3"}


def test_folder_split_subdirs(tmp_path):
    for split, n in (("train", 3), ("eval", 2)):
        write_synthetic_wavs(tmp_path / split, n=n, sample_rate=SR, seconds=0.2)
    assert len(make_source(str(tmp_path), SR, split="train")) == 3
    assert len(make_source(str(tmp_path), SR, split="eval")) == 2


def test_folder_errors(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="nope"):
        make_source(missing, SR)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="contains no audio files") as info:
        make_source(str(empty), SR)
    assert str(empty) in str(info.value)
    only_bad = str(tmp_path / "only_bad")
    _bad_files(only_bad)
    src = make_source(only_bad, SR)
    with pytest.raises(ValueError, match="no readable audio in") as info:
        ensure_readable(src)
    assert only_bad in str(info.value)
    with pytest.raises(ValueError, match="split"):
        make_source("synthetic", SR, split="bogus")


def test_malformed_files_skipped_counted_and_named(tmp_path, caplog):
    folder = str(tmp_path / "mixed")
    write_synthetic_wavs(folder, n=6, sample_rate=SR, seconds=0.5)
    bad = _bad_files(folder)
    src = make_source(folder, SR)
    assert len(src) == 11
    item = src[src.paths.index(bad["random"])]
    assert item["audio"].shape == (0,) and "bad_random.wav" in item["error"]

    report = ensure_readable(src, max_probe=None)
    assert report["ok"] == 6 and report["bad"] == 5
    assert sorted(report["bad_files"]) == sorted(bad.values())

    fresh = make_source(folder, SR)
    with caplog.at_level(logging.WARNING):
        it = make_audio_iterator(fresh, crop_length=4000, batch_size=1, seed=0, num_epochs=1,
                                 drop_remainder=False, shard_index=0, shard_count=1)
        batches = list(it)
    assert len(batches) == 6
    assert it.skipped.count == 5
    assert sorted(it.skipped.files) == sorted(bad.values())
    assert it.get_state()["skipped"]["count"] == 5
    logged = " ".join(r.getMessage() for r in caplog.records)
    for path in bad.values():
        assert os.path.basename(path) in logged
    assert fresh.bad_files.keys() == set(bad.values())


# --------------------------------------------------------------------------- pipeline


class _IndexSource:
    """Item i is ``i + 1`` repeated; ``length`` samples; some items broken."""

    def __init__(self, n, length=100, bad=()):
        self.n, self.length, self.bad = n, length, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            return {"audio": np.zeros(0, np.float32), "index": i, "error": f"broken {i}"}
        return {"audio": np.full(self.length, i + 1, np.float32), "index": i}


def _ids(batches):
    return [int(v) - 1 for b in batches for v in b["audio"][:, 0]]


def test_pipeline_deterministic_by_seed(corpus):
    def take(seed, k=3):
        it = make_audio_iterator(corpus, crop_length=4000, batch_size=4, seed=seed)
        return [next(it)["audio"] for _ in range(k)]

    a, b, c = take(0), take(0), take(1)
    assert a[0].shape == (4, 4000) and a[0].dtype == np.float32
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_pipeline_shards_disjoint_and_cover():
    src = _IndexSource(20)
    kwargs = dict(crop_length=10, batch_size=2, seed=3, num_epochs=1, drop_remainder=False)
    shards = [_ids(make_audio_iterator(src, shard_index=s, shard_count=2, **kwargs))
              for s in range(2)]
    assert len(shards[0]) == len(shards[1]) == 10
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(20))
    # Shuffled, and reshuffled in the next epoch while still covering everything.
    two = _ids(make_audio_iterator(src, crop_length=10, batch_size=4, seed=3, num_epochs=2,
                                   shard_index=0, shard_count=1))
    assert sorted(two[:20]) == sorted(two[20:]) == list(range(20))
    assert two[:20] != list(range(20)) and two[:20] != two[20:]
    # Uneven: 21 items, 2 shards -> 10 each, disjoint.
    odd = [set(_ids(make_audio_iterator(_IndexSource(21), shard_index=s, shard_count=2,
                                        **kwargs))) for s in range(2)]
    assert len(odd[0]) == len(odd[1]) == 10 and not odd[0] & odd[1]
    with pytest.raises(ValueError):
        make_audio_iterator(src, shard_index=2, shard_count=2, **kwargs)


def test_pipeline_resume_exactly():
    corpus = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=32, utterance_seconds=0.5)
    kwargs = dict(crop_length=2000, batch_size=3, seed=7, shard_index=0, shard_count=1)
    ref = make_audio_iterator(corpus, **kwargs)
    expected = [next(ref)["audio"] for _ in range(16)]  # 48 items: crosses an epoch (32)

    it = make_audio_iterator(corpus, **kwargs)
    for _ in range(6):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must be JSON-serialisable
    for _ in range(3):
        next(it)  # progress past the checkpoint that must be undone

    resumed = make_audio_iterator(corpus, **kwargs)
    resumed.set_state(state)
    for k in range(6, 16):
        np.testing.assert_array_equal(next(resumed)["audio"], expected[k])
    it.set_state(state)  # rewinding the same iterator works too
    np.testing.assert_array_equal(next(it)["audio"], expected[6])


def test_pipeline_worker_processes_same_batches_any_count_and_resume():
    """grain worker processes give the threads' batches; a state saved under one worker count
    resumes exactly under another (the pipeline restarts at the saved position)."""
    corpus = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=16, utterance_seconds=0.5)
    kwargs = dict(crop_length=2000, batch_size=3, seed=7, shard_index=0, shard_count=1)
    threads = make_audio_iterator(corpus, **kwargs)
    expected = [next(threads)["audio"] for _ in range(9)]  # 27 items: crosses an epoch (16)
    thread_state = json.loads(json.dumps(threads.get_state()))

    two = make_audio_iterator(corpus, worker_processes=2, **kwargs)
    try:
        for k in range(4):
            np.testing.assert_array_equal(next(two)["audio"], expected[k])
        state = json.loads(json.dumps(two.get_state()))
        assert state["worker_processes"] == 2 and state["position"] == 12
        next(two)  # progress past the checkpoint that must be undone
        two.set_state(state)
        for k in range(4, 7):
            np.testing.assert_array_equal(next(two)["audio"], expected[k])
    finally:
        two.close()
    for workers, saved, first in ((0, state, 4), (1, thread_state, 9)):
        resumed = make_audio_iterator(corpus, worker_processes=workers, **kwargs)
        try:
            resumed.set_state(saved)
            got = next(resumed)["audio"]
            if first < len(expected):
                np.testing.assert_array_equal(got, expected[first])
            else:  # from the threads' end: compare with the threads' next batch
                np.testing.assert_array_equal(got, next(threads)["audio"])
            assert resumed.get_state()["position"] == 3 * (first + 1)
        finally:
            resumed.close()
    with pytest.raises(ValueError, match="worker_processes"):
        make_audio_iterator(corpus, worker_processes=-1, **kwargs)


def test_pipeline_counts_skips_made_in_worker_processes():
    src = _IndexSource(10, length=5, bad=(2, 7))
    it = make_audio_iterator(src, crop_length=8, batch_size=4, seed=0, num_epochs=1,
                             shard_index=0, shard_count=1, worker_processes=1)
    batches = list(it)
    it.close()
    assert len(batches) == 2 and it.skipped.count == 2
    assert set(it.skipped.files) == {"item 2", "item 7"}
    assert not {2, 7} & set(_ids(batches))


def test_pipeline_crops_pads_and_filters():
    src = _IndexSource(10, length=5, bad=(2, 7))
    stats = SkipStats()
    it = make_audio_iterator(src, crop_length=8, batch_size=4, seed=0, num_epochs=1,
                             drop_remainder=True, shard_index=0, shard_count=1, skipped=stats)
    batches = list(it)
    assert len(batches) == 2 and it.skipped is stats and stats.count == 2
    assert set(stats.files) == {"item 2", "item 7"}
    audio = np.concatenate([b["audio"] for b in batches])
    assert (audio[:, 5:] == 0).all() and (audio[:, :5] > 0).all()  # zero-padded at the end
    assert not {2, 7} & set(_ids(batches))
    # Long items: crops are windows of the original at varying offsets.
    ramp = [{"audio": np.arange(1000, dtype=np.float32), "index": 0}]
    it = make_audio_iterator(ramp, crop_length=100, batch_size=1, seed=0, num_epochs=8,
                             shard_index=0, shard_count=1)
    starts = [int(b["audio"][0, 0]) for b in it]
    assert len(set(starts)) > 1
    for s, b in zip(starts, make_audio_iterator(ramp, crop_length=100, batch_size=1, seed=0,
                                                 num_epochs=8, shard_index=0, shard_count=1)):
        np.testing.assert_array_equal(b["audio"][0], np.arange(s, s + 100))


def test_pipeline_all_bad_raises_instead_of_spinning():
    it = make_audio_iterator(_IndexSource(5, bad=range(5)), crop_length=10, batch_size=2, seed=0,
                             shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="no readable audio"):
        next(it)
    # One readable item among many bad ones is enough to keep going.
    it = make_audio_iterator(_IndexSource(7, bad=(0, 1, 2, 4, 5, 6)), crop_length=10,
                             batch_size=4, seed=0, shard_index=0, shard_count=1)
    for _ in range(5):
        assert set(_ids([next(it)])) == {3}


def test_iter_eval_batches():
    src = _IndexSource(11, length=20, bad=(4,))
    stats = SkipStats()
    batches = list(iter_eval_batches(src, crop_length=10, batch_size=4, max_items=9,
                                     skipped=stats))
    assert [b["audio"].shape for b in batches] == [(4, 10), (4, 10)]
    assert batches[1]["mask"].tolist() == [True] * 4
    ids = [int(v) - 1 for b in batches for v, m in zip(b["audio"][:, 0], b["mask"]) if m]
    assert ids == [0, 1, 2, 3, 5, 6, 7, 8] and stats.count == 1
    batches = list(iter_eval_batches(src, crop_length=30, batch_size=4))
    assert len(batches) == 3 and batches[-1]["mask"].tolist() == [True, True, False, False]
    assert batches[0]["length"].tolist() == [20] * 4 and (batches[-1]["audio"][2:] == 0).all()
    small = list(iter_eval_batches(src, crop_length=30, batch_size=4, pad_final_batch=False))
    assert small[-1]["audio"].shape == (2, 30)
    ramp = [{"audio": np.arange(100, dtype=np.float32), "index": 0}]
    center = next(iter_eval_batches(ramp, crop_length=10, batch_size=1))["audio"][0]
    first = next(iter_eval_batches(ramp, crop_length=10, batch_size=1, crop="first"))["audio"][0]
    np.testing.assert_array_equal(center, np.arange(45, 55))
    np.testing.assert_array_equal(first, np.arange(10))


def test_pipeline_on_folder_matches_files(tmp_path):
    folder = str(tmp_path / "wavs")
    write_synthetic_wavs(folder, n=4, sample_rate=SR, seconds=0.5)
    src = make_source(folder, SR)
    first = next(iter_eval_batches(src, crop_length=SR // 2, batch_size=4, crop="first"))
    ref = SyntheticSpeechCorpus(sample_rate=SR, num_utterances=4, utterance_seconds=0.5)
    for i in range(4):
        np.testing.assert_allclose(first["audio"][i], ref[i]["audio"], atol=1.0 / 32768 + 1e-6)
    it = make_audio_iterator(src, crop_length=1000, batch_size=2, seed=0)  # default sharding
    assert next(it)["audio"].shape == (2, 1000)


# --------------------------------------------------------------------------- TFDS


def test_tfds_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install audiolm_jax\[tfds\]"):
        make_source("tfds:librispeech", SR)


def test_tfds_librispeech_mock():
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        src = make_source("tfds:librispeech", SR)
        assert len(src) == 6 and src.audio_key == "speech" and src.source_rate == 16000
        assert src.split == "train_clean100+train_clean360+train_other500"
        for i in range(len(src)):
            audio = src[i]["audio"]
            assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0
            assert np.abs(audio).max() <= 1.0
        assert make_source("tfds:librispeech:dev_other", SR).split == "dev_other"
        assert make_source("tfds:librispeech", SR, split="eval").split == "dev_clean"
        src24 = make_source("tfds:librispeech", 24000)
        assert src24[0]["audio"].size == pytest.approx(src[0]["audio"].size * 1.5, abs=2)
        batch = next(make_audio_iterator(src, crop_length=64, batch_size=2, seed=0))
        assert batch["audio"].shape == (2, 64) and batch["audio"].dtype == np.float32
