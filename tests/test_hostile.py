"""Hostile inputs: a corpus of malformed audio must not stop training or tokenization, and the
CLI answers bad input with a one-line error before anything compiles (issue 5, section 5).

Policy (BUILD_NOTES.md, "Hostile inputs"): undecodable, truncated, empty, non-finite and wildly
out-of-range files are skipped and reported with their reason; odd formats (8-bit, stereo,
6 channels, 8/96 kHz) are converted (mono mix, resampling); a 1-sample file is kept and
zero-padded like any short file; an hour-long file is read as 60 s segments.
"""

import json
import os
import struct
import subprocess
import sys

import jax
import librosa
import numpy as np
import pytest
import soundfile as sf

from audiolm_jax.data import (AudioDecodeError, FolderSource, ensure_readable, load_audio,
                              make_audio_iterator, make_source)
from audiolm_jax.lm import tokens as tk

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CODEC = os.path.join(REPO, "configs", "codec", "tiny_cnn.py")
TINY_LM = os.path.join(REPO, "configs", "lm", "tiny_flat.py")
HOUR_SEGMENTS = 60  # 3600 s in segments of at most 60 s


def _sine(freq, rate, seconds=0.5, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav_header(frames, rate, channels=1, bits=16):
    data = frames * channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * bits // 8,
                          channels * bits // 8, bits)
            + b"data" + struct.pack("<I", data))


# Independent references for the files that must load: what the test wrote, converted by hand
# (channel mean, or the analytic sine at the target rate), and a tolerance for the encoding.
def _write_good(folder):
    def p(name):
        return os.path.join(folder, name)

    stereo = np.stack([_sine(440, SR), _sine(880, SR)], 1)
    six = np.stack([_sine(200 * (c + 1), SR, amp=0.3) for c in range(6)], 1)
    sf.write(p("good_a.wav"), _sine(440, SR), SR, subtype="PCM_16")
    sf.write(p("good_b.flac"), _sine(300, SR), SR)
    sf.write(p("pcm8.wav"), _sine(500, SR), SR, subtype="PCM_U8")
    sf.write(p("stereo.wav"), stereo, SR, subtype="PCM_16")
    sf.write(p("six_channel.wav"), six, SR, subtype="PCM_16")
    sf.write(p("rate8k.wav"), _sine(1000, 8000), 8000, subtype="FLOAT")
    sf.write(p("rate96k.wav"), _sine(3000, 96000), 96000, subtype="FLOAT")
    sf.write(p("one_sample.wav"), np.array([0.25], np.float32), SR, subtype="PCM_16")
    return {  # name -> (expected mono audio at SR, tolerance)
        "good_a.wav": (_sine(440, SR), 1e-4),
        "good_b.flac": (_sine(300, SR), 1e-4),
        "pcm8.wav": (_sine(500, SR), 1.5 / 128),
        "stereo.wav": (stereo.mean(1), 1e-4),
        "six_channel.wav": (six.mean(1), 1e-4),
        "rate8k.wav": (_sine(1000, SR), 0.01),  # resampler ripple; edges: see _EDGE
        "rate96k.wav": (_sine(3000, SR), 0.01),
        "one_sample.wav": (np.array([0.25], np.float32), 1e-4),
    }


# Resampling filters ring at the file's first and last few samples; compare inside them.
_EDGE = 16


def _inner(name, x):
    return x[..., _EDGE:x.shape[-1] - _EDGE] if name.startswith("rate") else x


def _write_bad(folder):
    """name -> a word the skip reason must contain."""
    def p(name):
        return os.path.join(folder, name)

    whole = open(p("good_a.wav"), "rb").read()
    open(p("empty.wav"), "wb").close()
    open(p("truncated_data.wav"), "wb").write(whole[: len(whole) // 2])  # header promises more
    open(p("truncated_header.wav"), "wb").write(whole[:30])  # cut inside the fmt chunk
    open(p("garbage_fmt.wav"), "wb").write(
        b"RIFF" + struct.pack("<I", 100) + b"WAVEfmt " + struct.pack("<I", 16)
        + bytes(range(7, 23)) + b"data" + struct.pack("<I", 64) + bytes(64))
    rng = np.random.default_rng(0)
    open(p("random.wav"), "wb").write(rng.bytes(4096))
    open(p("random.flac"), "wb").write(rng.bytes(4096))
    open(p("readme.wav"), "w").write("This is a text file, not audio.\n" * 20)
    for name, index, value in (("nan.wav", 100, np.nan), ("inf.wav", 200, -np.inf),
                               ("huge.wav", 300, 3e4)):
        x = _sine(440, SR)
        x[index] = value
        sf.write(p(name), x, SR, subtype="FLOAT")
    return {"empty.wav": "empty", "truncated_data.wav": "truncated",
            "truncated_header.wav": "not a readable", "garbage_fmt.wav": "not a readable",
            "random.wav": "not a readable", "random.flac": "not a readable",
            "readme.wav": "not a readable", "nan.wav": "non-finite", "inf.wav": "non-finite",
            "huge.wav": "outside [-1, 1]"}


def _write_hour(path):
    """One hour of 16 kHz 16-bit silence, instantly: a header and a sparse (hole) data chunk."""
    frames = 3600 * SR
    with open(path, "wb") as f:
        f.write(_wav_header(frames, SR))
        f.truncate(44 + 2 * frames)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(folder with everything, folder without the hour file, good refs, bad reasons)."""
    root = tmp_path_factory.mktemp("hostile")
    small = str(root / "small")
    os.makedirs(small)
    good = _write_good(small)
    bad = _write_bad(small)
    full = str(root / "full")
    os.makedirs(full)
    for name in os.listdir(small):
        os.link(os.path.join(small, name), os.path.join(full, name))
    _write_hour(os.path.join(full, "hour.wav"))
    return full, small, good, bad


# ----------------------------------------------------------------------------- decoding


def test_each_hostile_file_is_converted_or_refused_by_name(hostile):
    _, small, good, bad = hostile
    for name, (expected, tol) in good.items():
        audio = load_audio(os.path.join(small, name), SR)
        assert audio.dtype == np.float32 and audio.shape == expected.shape, name
        assert np.all(np.isfinite(audio))
        np.testing.assert_allclose(_inner(name, audio), _inner(name, expected), atol=tol,
                                   err_msg=name)
    for name, tone in (("rate8k.wav", 1000), ("rate96k.wav", 3000)):  # resampled, same pitch
        audio = load_audio(os.path.join(small, name), SR)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        assert np.fft.rfftfreq(len(audio), 1 / SR)[np.argmax(spectrum)] == pytest.approx(tone, abs=2)
        raw, rate = sf.read(os.path.join(small, name), dtype="float32")
        np.testing.assert_allclose(audio, librosa.resample(raw, orig_sr=rate, target_sr=SR),
                                   atol=1e-6)
    for name, word in bad.items():
        with pytest.raises(AudioDecodeError) as info:
            load_audio(os.path.join(small, name), SR)
        assert name in str(info.value) and word in info.value.reason, (name, str(info.value))


def test_hour_long_file_is_read_in_segments(hostile):
    full, _, _, _ = hostile
    source = FolderSource(full, SR)
    hour = os.path.join(full, "hour.wav")
    segments = [s for s in source.segments if s[0] == hour]
    assert len(segments) == HOUR_SEGMENTS
    firsts = [s[1] for s in segments]
    assert firsts[0] == 0 and all(f == s[1] + s[2] for f, s in zip(firsts[1:], segments))
    assert segments[-1][1] + segments[-1][2] == 3600 * SR
    index = source.segments.index(segments[7])
    item = source[index]
    assert item["segment"] == (7 * 60 * SR, 60 * SR) and item["audio"].shape == (60 * SR,)
    assert len(source) == len(source.paths) - 1 + HOUR_SEGMENTS
    assert len(FolderSource(full, SR, segment_seconds=None)) == len(source.paths)


# ----------------------------------------------------------------------------- training data


def test_training_epoch_over_hostile_corpus(hostile):
    full, _, good, bad = hostile
    source = make_source(full, SR)
    report = ensure_readable(source, max_probe=None)
    assert sorted(os.path.basename(p) for p in report["bad_files"]) == sorted(bad)
    crop = 8192  # longer than every short file: rows are whole files, zero-padded
    it = make_audio_iterator(source, crop_length=crop, batch_size=8, seed=0, num_epochs=1,
                             drop_remainder=False, shard_index=0, shard_count=1)
    rows = np.concatenate([b["audio"] for b in it])
    assert np.all(np.isfinite(rows)) and rows.shape == (len(good) + HOUR_SEGMENTS, crop)
    assert {os.path.basename(p) for p in it.skipped.files} == set(bad)
    assert it.skipped.count == len(bad)
    for path, reason in it.skipped.files.items():
        assert bad[os.path.basename(path)] in reason
    assert sum(not r.any() for r in rows) == HOUR_SEGMENTS  # the hour is silence
    for name, (expected, tol) in good.items():
        part = _inner(name, rows[:, :len(expected)])
        matches = np.max(np.abs(part - _inner(name, expected)), axis=1) <= tol
        matches &= ~rows[:, len(expected):].any(axis=1)  # zero padding after the file
        assert matches.sum() == 1, name


def test_codec_train_iterator_over_hostile_folder(hostile):
    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.codec.data import make_train_iterator

    _, small, _, bad = hostile
    config = tiny_cnn_config()
    config.data.source = small
    it = make_train_iterator(config)
    for _ in range(6):  # a few epochs' worth of the 8 readable files
        batch = next(it)
        assert batch["audio"].shape == (8, config.data.crop_length)
        assert np.all(np.isfinite(batch["audio"]))
    assert {os.path.basename(p) for p in it.skipped.files} <= set(bad)
    assert it.skipped.count >= len(bad)  # every bad file was met at least once


# ----------------------------------------------------------------------------- tokenization


def _shard_utterances(out):
    """{file base name: tokens [S, K, frames]} and the skipped names, over all shards."""
    td = tk.load_token_dir(out)
    found, skipped = {}, []
    for shard in td.shards:
        z = np.load(shard.path)
        ends = list(z["starts"][1:]) + [z["tokens"].shape[2]]
        for name, lo, hi in zip(z["names"], z["starts"], ends):
            found[str(name)] = z["tokens"][:, :, lo:hi]
        skipped += [str(n) for n in z["skipped"]]
    return td, found, skipped


def _check_skips(summary, out, bad):
    assert sorted(os.path.basename(p) for p in summary["skipped_files"]) == sorted(bad)
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["skipped"]["count"] == len(bad)
    for path, reason in meta["skipped"]["files"].items():
        assert bad[os.path.basename(path)] in reason, (path, reason)
    assert {os.path.basename(p) for p in meta["skipped"]["files"]} == set(bad)


def test_mulaw_tokenization_of_hostile_corpus(hostile, tmp_path):
    _, small, good, bad = hostile
    paths = sorted(os.path.join(small, n) for n in os.listdir(small))
    out = str(tmp_path / "mulaw")
    with pytest.warns(UserWarning, match="readme.wav"):
        summary = tk.tokenize_corpus(paths, out, tokenizer="mulaw", sample_rate=SR,
                                     files_per_shard=5)
    _check_skips(summary, out, bad)
    _, found, skipped = _shard_utterances(out)
    assert sorted(skipped) == sorted(bad) and set(found) == set(good)
    for name in good:  # librosa's μ-law of the converted audio (checked in the first test)
        ref = librosa.mu_compress(load_audio(os.path.join(small, name), SR), mu=255) + 128
        np.testing.assert_array_equal(found[name][0, 0], ref, err_msg=name)


def test_codec_tokenization_of_hostile_corpus(hostile, tmp_path):
    from helpers import fast_params

    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.codec.inference import LoadedCodec
    from audiolm_jax.codec.model import build_codec

    _, small, good, bad = hostile
    config = tiny_cnn_config()  # random weights: the codes only need to be the codec's own
    variables = fast_params(build_codec(config), np.zeros((1, 4096), np.float32))
    codec = LoadedCodec(config, variables["params"], variables["vq_stats"], step=0)
    paths = sorted(os.path.join(small, n) for n in os.listdir(small))
    out = str(tmp_path / "codec")
    with pytest.warns(UserWarning, match="nan.wav"):
        summary = tk.tokenize_corpus(paths, out, codec=codec, files_per_shard=6)
    _check_skips(summary, out, bad)
    td, found, skipped = _shard_utterances(out)
    assert sorted(skipped) == sorted(bad) and set(found) == set(good)
    assert td.num_levels == 4 and td.codebook_size == 64
    for name in good:
        codes = found[name][0]
        np.testing.assert_array_equal(codes, codec.encode(load_audio(os.path.join(small, name), SR)))
    assert found["one_sample.wav"].shape[-1] == 1  # kept: one (zero-padded) frame


# ----------------------------------------------------------------------------- the CLI


class _CompileWatch:
    """Records every JAX tracing/compilation event while active."""

    def __init__(self):
        self.events = []

    def _event(self, name, *args, **kwargs):
        if name.startswith(("/jax/core/compile", "/jax/compilation_cache")):
            self.events.append(name)

    def __enter__(self):
        jax.monitoring.register_event_listener(self._event)
        jax.monitoring.register_event_duration_secs_listener(self._event)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_listener(self._event)
        jax.monitoring.unregister_event_duration_listener(self._event)


def test_compile_watch_sees_a_compilation():
    """The 'no compilation' checks below are only as good as this detector."""
    with _CompileWatch() as watch:
        jax.block_until_ready(jax.jit(lambda x: x * 3 + 1)(np.arange(5, dtype=np.float32)))
    assert watch.events


def run_cli_in_process(capsys, *args):
    """(exit code, stderr, compile events) of ``audiolm-jax ARGS`` run in this process."""
    from absl import flags

    from audiolm_jax import cli

    def reset_flags():
        # config_flags defines one flag per override ('config.train.num_steps') as it parses;
        # drop them so the next in-process run can define its own.
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()

    reset_flags()
    saved = sys.argv
    sys.argv = ["audiolm-jax", *args]
    capsys.readouterr()
    try:
        with _CompileWatch() as watch, pytest.raises(SystemExit) as info:
            cli.run()
    finally:
        sys.argv = saved
        reset_flags()
    return info.value.code, capsys.readouterr().err, watch.events


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """A codec workdir and an LM workdir holding only their config.json (all a bad-input
    check may read), an empty token folder and a real input WAV."""
    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.lm.config import tiny_lm_config
    from audiolm_jax.workdir import save_config

    root = tmp_path_factory.mktemp("workdirs")
    codec, lm, tokens = str(root / "codec"), str(root / "lm"), str(root / "tokens")
    save_config(tiny_cnn_config(), codec)
    save_config(tiny_lm_config(), lm)
    os.makedirs(tokens)
    wav = str(root / "in.wav")
    sf.write(wav, _sine(440, SR), SR)
    garbage, pickled = str(root / "garbage.npy"), str(root / "pickled.npy")
    with open(garbage, "wb") as f:
        f.write(np.random.default_rng(0).bytes(300))
    np.save(pickled, np.array([{"codes": [1, 2]}, None], dtype=object), allow_pickle=True)
    return {"codec": codec, "lm": lm, "tokens": tokens, "wav": wav, "root": str(root),
            "garbage": garbage, "pickled": pickled}


BAD_INPUTS = {
    # missing paths
    "missing --audio": (["tokenize", "--tokenizer=mulaw", "--audio=/no/such/audio",
                         "--out={root}/t"], "/no/such/audio"),
    "missing --workdir": (["encode", "--workdir=/no/such/workdir", "{wav}", "{root}/c.npy"],
                          "/no/such/workdir"),
    "missing --codec-workdir": (["tokenize", "--codec-workdir=/no/such/codec", "--audio={wav}",
                                 "--out={root}/t"], "/no/such/codec"),
    "missing --prompt": (["generate", "--workdir={lm}", "--prompt=/no/such/prompt.wav",
                          "--out={root}/o.wav"], "/no/such/prompt.wav"),
    "missing --config": (["train-codec", "--config=/no/such/config.py", "--workdir={root}/w"],
                         "/no/such/config.py"),
    "missing data.tokens": (["train-lm", f"--config={TINY_LM}", "--workdir={root}/w",
                             "--config.data.tokens=/no/such/tokens"], "/no/such/tokens"),
    # an input that is not what the command reads
    "decode: random bytes": (["decode", "--workdir={codec}", "{garbage}", "{root}/o.wav"],
                             "{garbage} is not a code array (.npy of integers)"),
    "decode: pickled objects": (["decode", "--workdir={codec}", "{pickled}", "{root}/o.wav"],
                                "{pickled} is not a code array (.npy of integers)"),
    # unknown key, wrong type, out of range
    "unknown key": (["train-codec", f"--config={TINY_CODEC}", "--workdir={root}/w",
                     "--config.train.num_stepz=3"], "num_stepz"),
    "type: sample_rate=abc": (["train-codec", f"--config={TINY_CODEC}", "--workdir={root}/w",
                               "--config.data.sample_rate=abc"], "sample_rate"),
    "range: batch_size=-3": (["train-codec", f"--config={TINY_CODEC}", "--workdir={root}/w",
                              "--config.train.batch_size=-3"], "train.batch_size"),
    "range: num_levels=0": (["train-codec", f"--config={TINY_CODEC}", "--workdir={root}/w",
                             "--config.quantizer.num_levels=0"], "quantizer.num_levels"),
    "choice: layout=bogus": (["train-lm", f"--config={TINY_LM}", "--workdir={root}/w",
                              "--config.data.tokens={tokens}", "--config.model.layout=bogus"],
                             "model.layout"),
    "lm: width % heads": (["train-lm", f"--config={TINY_LM}", "--workdir={root}/w",
                           "--config.data.tokens={tokens}", "--config.model.width=66"],
                          "model.width"),
    # a workdir holding another model
    "LM workdir to encode": (["encode", "--workdir={lm}", "{wav}", "{root}/c.npy"],
                             "holds a language model, not a codec"),
    "LM workdir to tokenize": (["tokenize", "--codec-workdir={lm}", "--audio={wav}",
                                "--out={root}/t"], "holds a language model"),
    "codec workdir to generate": (["generate", "--workdir={codec}", "--prompt={wav}",
                                   "--out={root}/o.wav"], "holds a codec, not a language model"),
    "codec workdir to eval-lm": (["eval-lm", "--workdir={codec}", "--tokens={tokens}"],
                                 "holds a codec"),
    "LM workdir to train-codec": (["train-codec", f"--config={TINY_CODEC}", "--workdir={lm}"],
                                  "holds a language model"),
    "codec of another shape": (["train-codec", f"--config={TINY_CODEC}", "--workdir={codec}",
                                "--config.model.channels=8"], "model.channels"),
    "LM of another shape": (["train-lm", f"--config={TINY_LM}", "--workdir={lm}",
                             "--config.data.tokens={tokens}", "--config.model.num_layers=3"],
                            "model.num_layers"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_bad_input_is_one_line_before_any_compilation(case, workdirs, capsys):
    args, needle = BAD_INPUTS[case]
    args = [a.format(**workdirs) for a in args]
    needle = needle.format(**workdirs)
    code, err, compiles = run_cli_in_process(capsys, *args)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("audiolm-jax ") and needle in lines[0], err
    assert compiles == [], (case, sorted(set(compiles)))


def test_decode_never_unpickles_its_input(workdirs, capsys, tmp_path):
    """A .npy of pickled objects can run code when loaded: decode refuses it unread."""
    marker = tmp_path / "unpickled"

    class Touch:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = str(tmp_path / "evil.npy")
    np.save(evil, np.array([Touch()], dtype=object), allow_pickle=True)
    code, err, _ = run_cli_in_process(capsys, "decode", f"--workdir={workdirs['codec']}", evil,
                                      str(tmp_path / "o.wav"))
    assert code == 2 and f"{evil} is not a code array" in err, err
    assert not marker.exists()


def test_cli_bad_input_in_a_real_process(workdirs):
    """The real entry point in its own process: exit status 2 and one stderr line (one case;
    tests/test_cli.py runs more in subprocesses)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args, needle = BAD_INPUTS["LM workdir to encode"]
    args = [a.format(**workdirs) for a in args]
    proc = subprocess.run([sys.executable, "-m", "audiolm_jax.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
