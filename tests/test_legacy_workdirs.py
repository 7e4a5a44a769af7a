"""Workdirs written before the architecture refactor (tests/data/legacy_v0, made by commit
448cf1e) still load, resume-compatibly, and give the outputs that code gave: a Mimi-like
codec's codes and decoded audio (its transformer's parameters were renamed since), its
safetensors export, and flat and depth LMs' evaluation losses and greedy continuations.

Loading and inference run in this process, through the functions the ``encode``, ``decode``,
``eval-lm`` and ``generate`` commands call (they place everything on one device, as the
one-device CLI does); resuming training runs the real ``train-codec`` command (its config's
batch of 2 needs a one-device process), started in the background when the module starts."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data", "legacy_v0")
OLD_ROOT = "/tmp/fixtures"


def cli_start(*args):
    """Starts ``audiolm-jax ARGS`` in a one-device process; :func:`cli_result` waits for it.
    Its output goes to files: a pipe nobody reads while it runs could fill and stall it."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "audiolm_jax.cli", *args], stdout=out,
                            stderr=err, text=True, cwd=REPO,
                            env={**os.environ,
                                 "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    return proc, args, out, err


def cli_result(proc, args, out, err):
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with out, err:
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return json.loads([l for l in stdout.splitlines() if l.startswith("{")][-1])


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


@pytest.fixture(scope="module")
def loaded_codecs(legacy):
    """Each Mimi workdir loaded once (as ``encode`` and ``decode`` load it), shared by both."""
    from audiolm_jax.codec.inference import load_codec
    from audiolm_jax.workdir import check_workdir_holds

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_codec(check_workdir_holds(os.path.join(legacy, name), "codec"))
        return cache[name]

    return get


@pytest.mark.parametrize("codec", ["mimi_codec", "mimi_export"])
def test_legacy_mimi_codes_and_audio(legacy, loaded_codecs, codec, tmp_path):
    from audiolm_jax.cli import _load_codes
    from audiolm_jax.data.audio_io import load_audio, save_wav

    model = loaded_codecs(codec)
    wav = os.path.join(legacy, "corpus", "synth_00000.wav")
    codes = str(tmp_path / "codes.npy")  # what `encode` does
    np.save(codes, model.encode(load_audio(wav, model.sample_rate)))
    np.testing.assert_array_equal(np.load(codes), np.load(os.path.join(legacy, "mimi_codes.npy")))
    out = str(tmp_path / "decoded.wav")  # what `decode` does
    save_wav(out, model.decode(_load_codes(os.path.join(legacy, "mimi_codes.npy"))),
             model.sample_rate)
    want, _ = sf.read(os.path.join(legacy, "mimi_decoded.wav"), dtype="float32")
    got, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.fixture(scope="module", autouse=True)
def mimi_resume_run(request, legacy, tmp_path_factory):
    """test_legacy_mimi_resumes's training run, started when this module starts: the one-device
    process (mostly XLA compiling the Mimi step, on one core) runs beside the in-process tests
    below instead of after them. Not started when that test is not selected."""
    if not any(item.name == "test_legacy_mimi_resumes" for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("legacy_resume")
    workdir = str(tmp / "mimi_codec")  # a copy: the other tests read the original
    shutil.copytree(os.path.join(legacy, "mimi_codec"), workdir)
    config = str(tmp / "resume_config.py")  # the run's own config, as a config file
    with open(config, "w") as f:
        f.write("import json, ml_collections\n"
                "def get_config():\n"
                f"    with open({os.path.join(workdir, 'config.json')!r}) as f:\n"
                "        return ml_collections.ConfigDict(json.load(f))\n")
    run = cli_start("train-codec", f"--config={config}", f"--workdir={workdir}",
                    "--config.train.num_steps=3")
    yield run
    proc, _, out, err = run
    if proc.poll() is None:  # the test did not run (or failed before waiting)
        proc.kill()
        proc.wait()
    out.close()
    err.close()


def test_legacy_mimi_resumes(mimi_resume_run):
    """Training continues from the old checkpoint (its optimizer state included)."""
    summary = cli_result(*mimi_resume_run)
    assert summary["step"] == 3 and np.isfinite(summary["loss"])


@pytest.mark.parametrize("layout", ["flat", "depth"])
def test_legacy_lm_eval_and_greedy_generation(legacy, loaded_codecs, layout, tmp_path,
                                              monkeypatch):
    from audiolm_jax.lm import run
    from audiolm_jax.lm.run import evaluate_lm, generate_audio
    from audiolm_jax.workdir import check_workdir_holds

    # The LMs' tokens are mimi_codec's: generate loads that workdir (load_codec(path)) as the
    # codec tests did; it gets their loaded codec, whose programs are already compiled.
    load_codec = run.load_codec
    monkeypatch.setattr(run, "load_codec", lambda path, *a: (
        loaded_codecs("mimi_codec") if path == os.path.join(legacy, "mimi_codec") and not a
        else load_codec(path, *a)))
    workdir = check_workdir_holds(os.path.join(legacy, f"lm_{layout}"), "lm")
    # `eval-lm` prints this dict as JSON: a round trip keeps the floats exactly
    got = json.loads(json.dumps(evaluate_lm(workdir, os.path.join(legacy, "tokens"))))
    with open(os.path.join(legacy, f"lm_{layout}_eval.json")) as f:
        want = json.load(f)
    assert got["num_tokens"] == want["num_tokens"]
    np.testing.assert_allclose(got["level_losses"], want["level_losses"], rtol=1e-5)
    out = str(tmp_path / "gen.wav")
    # `generate --seconds=0.2 --temperature=0` with the command's other defaults
    generate_audio(workdir, os.path.join(legacy, "corpus", "synth_00000.wav"), 0.2, out,
                   temperature=0.0, top_k=0, top_p=1.0, seed=0, keep_semantic=False,
                   input_stream=None)
    want_audio, _ = sf.read(os.path.join(legacy, f"lm_{layout}_gen.wav"), dtype="float32")
    got_audio, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(got_audio, want_audio, atol=1e-4)
