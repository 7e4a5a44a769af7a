"""The audiolm-jax command end to end on a tiny config, and its one-line errors on bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "codec", "tiny_cnn.py")


def cli(*args, check=True):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    proc = subprocess.run([sys.executable, "-m", "audiolm_jax.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def last_json(stdout):
    return json.loads([l for l in stdout.splitlines() if l.startswith("{")][-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    workdir = str(root / "codec")
    out = cli("train-codec", f"--config={TINY}", f"--workdir={workdir}",
              "--config.train.num_steps=6", "--config.train.checkpoint_every=3",
              "--config.train.sample_every=3")
    summary = last_json(out.stdout)
    assert summary["step"] == 6 and np.isfinite(summary["loss"])
    from audiolm_jax.data.synthetic import write_synthetic_wavs

    wavs = write_synthetic_wavs(str(root / "eval"), n=2, sample_rate=16000, seed=5, seconds=0.7)
    return root, workdir, wavs


def test_train_writes_checkpoints_metrics_and_samples(trained):
    _, workdir, _ = trained
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    sample_dir = os.path.join(workdir, "samples", "step_0000006")
    files = os.listdir(sample_dir)
    assert any(f.endswith("_reconstruction.wav") for f in files)
    assert any(f.endswith(".png") for f in files)


def test_eval_encode_decode_reconstruct(trained):
    root, workdir, wavs = trained
    with open(os.path.join(root / "eval", "junk.wav"), "wb") as f:
        f.write(b"not audio at all")
    codes_path, decoded, recon = (str(root / n) for n in ("codes.npy", "decoded.wav", "recon.wav"))
    outs = cli_all(("eval-codec", f"--workdir={workdir}", f"--audio={root / 'eval'}"),
                   ("encode", f"--workdir={workdir}", wavs[0], codes_path),
                   ("decode", f"--workdir={workdir}", codes_path, decoded),
                   ("reconstruct", f"--workdir={workdir}", wavs[0], recon))
    report = last_json(outs[0])
    for key in ("spectral_loss", "mel_distance", "si_snr_db", "bitrate_bps", "codebook_usage",
                "perplexity", "num_files", "skipped_files"):
        assert key in report
    assert report["num_files"] == 2 and len(report["skipped_files"]) == 1
    assert report["bitrate_bps"] == pytest.approx(125 * 4 * 6)  # 125 Hz x 4 levels x 6 bits
    assert len(report["codebook_usage"]) == 4

    codes = np.load(codes_path)
    assert codes.shape == (4, int(np.ceil(0.7 * 16000 / 128))) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 64
    import soundfile as sf

    a, sr = sf.read(decoded)
    b, _ = sf.read(recon)
    assert sr == 16000 and len(a) == codes.shape[1] * 128 and len(b) == int(0.7 * 16000)
    np.testing.assert_allclose(a[: len(b)], b, atol=2e-3)  # same codes -> same audio


BAD_INPUT = [
    (["train-codec", "--workdir=/tmp/x"], "--config is required"),
    (["train-codec", f"--config={TINY}", "--workdir=/tmp/x", "--config.train.num_stepz=3"],
     "num_stepz"),
    (["train-codec", f"--config={TINY}", "--workdir=/tmp/x", "--config.train.num_steps=-3"],
     "train.num_steps"),
    (["train-codec", f"--config={TINY}", "--workdir=/tmp/x", "--config.data.source=/no/such/dir"],
     "/no/such/dir"),
    (["reconstruct", "--workdir=/tmp/x", "/no/such.wav", "/tmp/out.wav"], "/no/such.wav"),
    (["eval-codec", "--workdir=/no/such/workdir", f"--audio={TINY}"], "no/such/workdir"),
    (["frobnicate"], "unknown command"),
]
FLAG_ERRORS = [
    (["train-codec", "--config=configs/codec/nope.py", "--workdir=/tmp/x"], "nope.py"),
    (["train-codec", f"--config={TINY}", "--workdir=/tmp/x", "--config.train.num_stepz=3"],
     "unknown config key"),
    (["train-codec", f"--config={TINY}", "--workdir=/tmp/x", "--config.train.num_steps=abc"],
     "num_steps"),
]


def cli_forks(argvs):
    """Each argument list run in order as its own audiolm-jax process, all forked from one
    process that imported the package once (tests/cli_forks.py) -> [{'returncode', 'stdout',
    'stderr'}]."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "cli_forks.py"),
                           json.dumps(argvs)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def cli_all(*argvs):
    """:func:`cli_forks`, each command required to succeed -> their stdouts."""
    results = cli_forks([list(a) for a in argvs])
    for argv, r in zip(argvs, results):
        assert r["returncode"] == 0, f"{argv} failed ({r['returncode']}):\n{r['stderr'][-3000:]}"
    return [r["stdout"] for r in results]


@pytest.fixture(scope="module")
def bad_runs():
    cases = [args for args, _ in BAD_INPUT + FLAG_ERRORS]
    return dict(zip(map(tuple, cases), cli_forks(cases)))


@pytest.mark.parametrize("args,needle", BAD_INPUT)
def test_bad_input_gives_one_clear_error(bad_runs, args, needle):
    proc = bad_runs[tuple(args)]
    assert proc["returncode"] != 0
    assert needle in proc["stderr"]


def test_changed_model_is_refused(trained):
    _, workdir, _ = trained
    proc = cli("train-codec", f"--config={TINY}", f"--workdir={workdir}",
               "--config.quantizer.codebook_size=32", check=False)
    assert proc.returncode != 0 and "quantizer.codebook_size" in proc.stderr


def test_train_from_folder_skips_and_reports_malformed_files(tmp_path):
    from audiolm_jax.data.synthetic import write_synthetic_wavs

    folder = tmp_path / "corpus"
    write_synthetic_wavs(str(folder / "a"), n=3, sample_rate=16000, seed=1, seconds=0.6)
    (folder / "b").mkdir()
    (folder / "b" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    out = cli("train-codec", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
              f"--config.data.source={folder}", f"--config.data.eval_source={folder}",
              # The fixture's step count and batch: its compiled programs serve this run too
              # (the step count is a constant of the step).
              "--config.train.num_steps=6", "--config.train.checkpoint_every=3")
    summary = last_json(out.stdout)
    assert summary["step"] == 6
    assert summary["skipped"]["count"] >= 1
    assert any("broken.wav" in name for name in summary["skipped"]["files"])
    assert "broken.wav" in out.stderr  # the warning names the file


def test_folder_without_readable_audio_is_a_clear_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.wav").write_bytes(b"nope")
    proc = cli("train-codec", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
               f"--config.data.source={folder}", check=False)
    assert proc.returncode != 0 and "no readable audio" in proc.stderr and str(folder) in proc.stderr


@pytest.mark.parametrize("args,needle", FLAG_ERRORS)
def test_flag_errors_are_one_line(bad_runs, args, needle):
    proc = bad_runs[tuple(args)]
    lines = [l for l in proc["stderr"].splitlines() if l.strip()]
    assert proc["returncode"] != 0 and needle in proc["stderr"]
    assert not any(l.startswith("Traceback") for l in lines), proc["stderr"]


def test_lm_pipeline_tokenize_train_eval_generate(trained):
    root, workdir, wavs = trained
    from audiolm_jax.data.synthetic import write_synthetic_wavs

    corpus = root / "lmcorpus"
    write_synthetic_wavs(str(corpus), n=6, sample_rate=16000, seed=2, seconds=1.0)
    tok, lm, cont = str(root / "tokens"), str(root / "lm"), str(root / "cont.wav")
    cfg = os.path.join(REPO, "configs", "lm", "tiny_flat.py")
    tokenize = ("tokenize", f"--codec-workdir={workdir}", f"--audio={corpus}", f"--out={tok}",
                "--files_per_shard=4")
    outs = cli_all(tokenize, tokenize,
                   ("train-lm", f"--config={cfg}", f"--workdir={lm}", f"--config.data.tokens={tok}",
                    "--config.train.num_steps=4", "--config.train.checkpoint_every=4",
                    "--config.model.context=64"),
                   ("eval-lm", f"--workdir={lm}", f"--tokens={tok}"),
                   ("generate", f"--workdir={lm}", f"--prompt={wavs[0]}", "--seconds=0.04",
                    f"--out={cont}", "--keep_semantic", "--top_k=5"))
    summary, again, out, ev, gen = map(last_json, outs)
    assert summary["num_files"] == 6 and summary["shards_written"] == [0, 1]
    assert again["shards_written"] == [] and again["shards_skipped"] == [0, 1]  # resumable
    assert out["step"] == 4 and np.isfinite(out["loss"])
    assert len(ev["level_losses"]) == 4 and ev["num_tokens"] > 0 and np.isfinite(ev["loss"])
    import soundfile as sf

    audio, sr = sf.read(cont)
    assert sr == 16000 and len(audio) == gen["frames"] * 128 and gen["keep_semantic"]


def test_mulaw_tokens_and_lm(tmp_path):
    from audiolm_jax.data.synthetic import write_synthetic_wavs

    write_synthetic_wavs(str(tmp_path / "wavs"), n=2, sample_rate=8000, seed=3, seconds=0.5)
    tok, lm, out = (str(tmp_path / n) for n in ("tok", "lm", "cont.wav"))
    cfg = os.path.join(REPO, "configs", "lm", "tiny_flat.py")
    outs = cli_all(("tokenize", "--tokenizer=mulaw", "--sample_rate=8000",
                    f"--audio={tmp_path / 'wavs'}", f"--out={tok}"),
                   ("train-lm", f"--config={cfg}", f"--workdir={lm}", f"--config.data.tokens={tok}",
                    "--config.train.num_steps=2", "--config.train.checkpoint_every=2"),
                   ("generate", f"--workdir={lm}",
                    f"--prompt={tmp_path / 'wavs' / 'synth_00000.wav'}", "--seconds=0.005",
                    f"--out={out}"))
    gen = last_json(outs[2])
    assert gen["levels"] == 1 and gen["generated_seconds"] == pytest.approx(0.005)
