"""Launch scripts: their dry-run commands, and local_multiprocess.sh's failure handling."""

import os
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")


def _run(args, env=None, timeout=60):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=REPO,
                          timeout=timeout)


def test_tpu_pod_dry_run_creates_installs_runs_everywhere_and_deletes():
    env = {"TPU_NAME": "ss-pod", "ZONE": "us-central2-b", "ACCELERATOR_TYPE": "v4-32",
           "PROJECT": "my-proj"}
    out = _run([os.path.join(LAUNCH, "tpu_pod.sh"), "--dry-run", "all", "train-codec",
                "--config=configs/codec/soundstream.py", "--workdir=gs://bucket/ss"], env)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if l.startswith("+ gcloud")]
    assert [l.split()[5] for l in lines] == ["create", "scp", "ssh", "ssh", "delete"]
    create, _, install, run, delete = lines
    assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
    assert "--project=my-proj" in create
    for line in lines[1:4]:
        assert "--worker=all" in line
    assert "pip" in install
    assert "AUDIOLM_JAX_DISTRIBUTED=auto" in run and "train-codec" in run
    assert "gs://bucket/ss" in run
    assert "ss-pod" in delete and "--quiet" in delete
    # DRY_RUN=1 is the same as --dry-run; a local workdir cannot be shared by the workers.
    out = _run([os.path.join(LAUNCH, "tpu_pod.sh"), "run", "train-codec", "--workdir=/tmp/x"],
               dict(env, DRY_RUN="1"))
    assert out.returncode == 2 and "gs://" in out.stderr
    assert _run([os.path.join(LAUNCH, "tpu_pod.sh"), "--dry-run", "run"], env).returncode == 2


def test_slurm_dry_run_prints_srun():
    out = _run(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "train-lm",
                "--config=configs/lm/tiny_flat.py", "--workdir=/shared/lm"], {"DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("+ srun")]
    assert line.split()[-3:] == ["train-lm", "--config=configs/lm/tiny_flat.py",
                                 "--workdir=/shared/lm"]
    assert "audiolm-jax" in line and "--kill-on-bad-exit=1" in line
    with open(os.path.join(LAUNCH, "slurm_gpu.sbatch")) as f:
        header = f.read()
    for directive in ("--ntasks-per-node", "--gpus-per-node", "--signal=TERM", "--requeue"):
        assert f"#SBATCH {directive}" in header
    # Outside SLURM, without a dry run, it refuses to start.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    out = subprocess.run(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "train-lm"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "sbatch" in out.stderr


def test_local_multiprocess_dry_run_wires_one_coordinator():
    out = _run([os.path.join(LAUNCH, "local_multiprocess.sh"), "--dry-run", "3", "audiolm-jax",
                "train-codec", "--workdir=runs/a b"])
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if l.startswith("AUDIOLM_JAX_COORDINATOR=")]
    assert len(lines) == 3
    coordinators = {l.split()[0] for l in lines}
    assert len(coordinators) == 1 and coordinators.pop().startswith(
        "AUDIOLM_JAX_COORDINATOR=127.0.0.1:")
    for i, line in enumerate(lines):
        assert f"AUDIOLM_JAX_NUM_PROCESSES=3 AUDIOLM_JAX_PROCESS_ID={i} " in line
        assert line.endswith("audiolm-jax train-codec --workdir=runs/a\\ b &")


def test_local_multiprocess_runs_all_and_stops_the_rest_when_one_fails(tmp_path):
    script = os.path.join(LAUNCH, "local_multiprocess.sh")
    out = _run([script, "3", "bash", "-c",
                f'echo "$AUDIOLM_JAX_COORDINATOR $AUDIOLM_JAX_NUM_PROCESSES" '
                f'> {tmp_path}/$AUDIOLM_JAX_PROCESS_ID'])
    assert out.returncode == 0, out.stderr
    seen = {f: open(tmp_path / f).read().split() for f in os.listdir(tmp_path)}
    assert sorted(seen) == ["0", "1", "2"]
    assert len({v[0] for v in seen.values()}) == 1 and {v[1] for v in seen.values()} == {"3"}

    start = time.time()
    out = _run([script, "3", "bash", "-c",
                '[ "$AUDIOLM_JAX_PROCESS_ID" = 1 ] && exit 7; exec sleep 60'],
               {"KILL_GRACE": "2"})
    assert out.returncode == 7 and "stopping the others" in out.stderr
    assert time.time() - start < 30  # the sleeping processes were stopped, not waited for
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([script, "x", "true"], check=True, capture_output=True, timeout=30)
