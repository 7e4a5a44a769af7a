"""Workdirs written before the architecture refactor (tests/data/legacy_v0, made by commit
448cf1e) still load, resume-compatibly, and give the outputs that code gave: a Mimi-like
codec's codes and decoded audio (its transformer's parameters were renamed since), its
safetensors export, and flat and depth LMs' evaluation losses and greedy continuations."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data", "legacy_v0")
OLD_ROOT = "/tmp/fixtures"


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "audiolm_jax.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("legacy") / "fixtures")
    shutil.copytree(DATA, root)
    for folder, _, files in os.walk(root):  # the JSON files name their folders absolutely
        for name in files:
            if name.endswith(".json"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    text = f.read()
                if OLD_ROOT in text:
                    with open(path, "w") as f:
                        f.write(text.replace(OLD_ROOT, root))
    return root


@pytest.mark.parametrize("codec", ["mimi_codec", "mimi_export"])
def test_legacy_mimi_codes_and_audio(legacy, codec, tmp_path):
    wav = os.path.join(legacy, "corpus", "synth_00000.wav")
    codes = str(tmp_path / "codes.npy")
    cli("encode", f"--workdir={os.path.join(legacy, codec)}", wav, codes)
    np.testing.assert_array_equal(np.load(codes), np.load(os.path.join(legacy, "mimi_codes.npy")))
    out = str(tmp_path / "decoded.wav")
    cli("decode", f"--workdir={os.path.join(legacy, codec)}",
        os.path.join(legacy, "mimi_codes.npy"), out)
    want, _ = sf.read(os.path.join(legacy, "mimi_decoded.wav"), dtype="float32")
    got, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_legacy_mimi_resumes(legacy, tmp_path):
    """Training continues from the old checkpoint (its optimizer state included)."""
    workdir = str(tmp_path / "mimi_codec")  # a copy: the other tests read the original
    shutil.copytree(os.path.join(legacy, "mimi_codec"), workdir)
    config = str(tmp_path / "resume_config.py")  # the run's own config, as a config file
    with open(config, "w") as f:
        f.write("import json, ml_collections\n"
                "def get_config():\n"
                f"    with open({os.path.join(workdir, 'config.json')!r}) as f:\n"
                "        return ml_collections.ConfigDict(json.load(f))\n")
    summary = cli("train-codec", f"--config={config}", f"--workdir={workdir}",
                  "--config.train.num_steps=3")
    assert summary["step"] == 3 and np.isfinite(summary["loss"])


@pytest.mark.parametrize("layout", ["flat", "depth"])
def test_legacy_lm_eval_and_greedy_generation(legacy, layout, tmp_path):
    workdir = os.path.join(legacy, f"lm_{layout}")
    got = cli("eval-lm", f"--workdir={workdir}", f"--tokens={os.path.join(legacy, 'tokens')}")
    with open(os.path.join(legacy, f"lm_{layout}_eval.json")) as f:
        want = json.load(f)
    assert got["num_tokens"] == want["num_tokens"]
    np.testing.assert_allclose(got["level_losses"], want["level_losses"], rtol=1e-5)
    out = str(tmp_path / "gen.wav")
    cli("generate", f"--workdir={workdir}", f"--prompt={os.path.join(legacy, 'corpus', 'synth_00000.wav')}",
        "--seconds=0.2", f"--out={out}", "--temperature=0")
    want_audio, _ = sf.read(os.path.join(legacy, f"lm_{layout}_gen.wav"), dtype="float32")
    got_audio, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(got_audio, want_audio, atol=1e-4)
