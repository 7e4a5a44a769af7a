"""``converse``: a Moshi workdir (imported here from random Kyutai-layout weights, naming a
Mimi-like codec and a text tokenizer) answers a recorded user frame by frame through Mimi's
streaming encoder and decoder; the reply, its transcript with word times, and the CLI's
one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from audiolm_jax.moshi.converse import converse, words_from_text
from audiolm_jax.text import TextTokenizer


@pytest.fixture(scope="module")
def moshi_dir(tmp_path_factory):
    from helpers import tiny_moshi_workdir

    return tiny_moshi_workdir(tmp_path_factory.mktemp("converse"), user_seconds=2.3)


def test_converse_writes_the_reply_and_its_words(moshi_dir, tmp_path):
    workdir, user, _ = moshi_dir
    out, text = str(tmp_path / "reply.wav"), str(tmp_path / "reply.txt")
    r = converse(workdir, user, out, transcript=text, stereo=True, seed=3,
                 text_temperature=2.0, text_top_k=0)  # hot: random weights say many words
    assert r["streaming_codec"] and r["delay_frames"] == 1
    assert r["frames"] == 29  # ceil(2.3 s * 12.5)
    wav, sr = sf.read(out)
    assert sr == 16000 and wav.shape == (int(2.3 * 16000), 2)
    np.testing.assert_allclose(wav[:, 1], sf.read(user)[0], atol=1e-4)  # right: the user
    assert np.abs(wav[:, 0]).max() > 0  # left: the model's voice
    lines = open(text).read().splitlines()
    assert lines[0].split() == r["words"]
    times = [tuple(map(float, line.split("\t")[:2])) for line in lines[1:]]
    assert len(times) == len(r["words"]) > 0
    assert all(0 <= s < e <= 2.4 for s, e in times) and times == sorted(times)
    assert set(r["ms_per_frame"]) == {"encode", "lm", "decode", "total"}
    again = converse(workdir, user, str(tmp_path / "again.wav"), seed=3, text_temperature=2.0,
                     text_top_k=0)
    assert again["words"] == r["words"]
    np.testing.assert_array_equal(sf.read(out)[0][:, 0], sf.read(str(tmp_path / "again.wav"))[0])


def test_words_from_text_tokens(moshi_dir):
    """A word starts at the frame of its first piece and ends at the next PAD / EPAD / word."""
    spm = moshi_dir[2]
    tok = TextTokenizer.load(spm)
    kasu, fo = tok.encode("kasu"), tok.encode("fo")
    frames = [(0, 3), (1, 0)] + [(2 + i, t) for i, t in enumerate(kasu)]
    at = 2 + len(kasu)
    frames += [(at, 3), (at + 1, 0)] + [(at + 2 + i, t) for i, t in enumerate(fo)]
    words = words_from_text(frames, tok, frame_rate=10.0)
    assert [w for w, _, _ in words] == ["kasu", "fo"]
    assert words[0][1:] == pytest.approx((0.2, at / 10.0))
    assert words[1][1] == pytest.approx((at + 2) / 10.0)


def test_converse_cli_errors_are_one_line(moshi_dir, tmp_path):
    workdir, user, _ = moshi_dir
    cases = ((["--workdir=" + workdir, f"--out={tmp_path / 'o.wav'}"], "--input"),
             ([f"--workdir={tmp_path}", f"--input={user}", f"--out={tmp_path / 'o.wav'}"],
              "config.json"),
             ([f"--workdir={workdir}", f"--input={tmp_path / 'none.wav'}",
               f"--out={tmp_path / 'o.wav'}"], "none.wav"))
    # Each a real process, forked from one that imported the package (tests/cli_forks.py).
    proc = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "cli_forks.py"),
         json.dumps([["converse", *args] for args, _ in cases])],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    for result, (_, expect) in zip(json.loads(proc.stdout), cases):
        assert result["returncode"] == 2, result["stderr"][-1000:]
        last = result["stderr"].strip().splitlines()[-1]
        assert last.startswith("audiolm-jax converse: error:") and expect in last, last
