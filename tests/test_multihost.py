"""Multi-process training: two local processes x 4 CPU devices equal one process x 8 devices.

Also the pieces that make that true: each process's slice of the codec and LM batches, and the
choice of jax.distributed settings from flags and environment.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import mulaw_token_dir

from audiolm_jax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")


def test_codec_pipeline_processes_split_the_global_batch():
    from audiolm_jax.data import make_audio_iterator
    from audiolm_jax.data.synthetic import SyntheticSpeechCorpus

    corpus = SyntheticSpeechCorpus(sample_rate=16000, num_utterances=12, utterance_seconds=0.3)
    kwargs = dict(crop_length=1000, seed=5, num_threads=2)
    one = make_audio_iterator(corpus, batch_size=6, shard_index=0, shard_count=1, **kwargs)
    two = [make_audio_iterator(corpus, batch_size=3, shard_index=p, shard_count=2, **kwargs)
           for p in range(2)]
    for _ in range(5):  # 30 items: crosses epoch boundaries (reshuffle, new crops)
        whole = next(one)["audio"]
        np.testing.assert_array_equal(np.concatenate([next(it)["audio"] for it in two]), whole)


def test_distributed_settings_from_flags_env_and_clusters():
    env = {"AUDIOLM_JAX_COORDINATOR": "10.0.0.1:1234", "AUDIOLM_JAX_NUM_PROCESSES": "4",
           "AUDIOLM_JAX_PROCESS_ID": "3"}
    assert distributed.resolve(env={}) is None
    assert distributed.resolve(env=env) == {"coordinator_address": "10.0.0.1:1234",
                                            "num_processes": 4, "process_id": 3}
    # Flags win over the environment.
    assert distributed.resolve("h:1", 2, 0, env=env)["coordinator_address"] == "h:1"
    assert distributed.resolve("h:1", 1, 0, env={}) is None  # one process: nothing to join
    with pytest.raises(ValueError, match="--num_processes"):
        distributed.resolve("h:1", env={})
    with pytest.raises(ValueError, match="process_id"):
        distributed.resolve("h:1", 2, 2, env={})
    # Clusters JAX detects by itself: initialize() without arguments.
    assert distributed.resolve(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == {}
    assert distributed.resolve(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.resolve(env={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}
    assert distributed.resolve(env={"TPU_WORKER_HOSTNAMES": "a"}) is None
    assert distributed.resolve(env={"AUDIOLM_JAX_DISTRIBUTED": "auto"}) == {}
    assert distributed.resolve(env={"AUDIOLM_JAX_DISTRIBUTED": "off", "SLURM_JOB_ID": "7",
                                     "SLURM_NTASKS": "4"}) is None


def _child_env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("AUDIOLM_JAX_COORDINATOR", "AUDIOLM_JAX_NUM_PROCESSES", "AUDIOLM_JAX_PROCESS_ID"):
        env.pop(key, None)
    if devices < 8:
        # Two processes: no persistent compilation cache. Runs that loaded these programs from
        # the cache failed at the first metrics fetch (BUILD_NOTES.md); compiling is reliable.
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env  # the one-process reference shares conftest.py's compilation cache


def _run(cmd, env, timeout=420):
    """Runs cmd in its own process group, killing the whole group on timeout or failure."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def _losses(workdir):
    from audiolm_jax.train.step_log import read_step_log

    return [(r["step"], r["loss"]) for r in read_step_log(workdir)]


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    return mulaw_token_dir(tmp_path_factory.mktemp("mh_tokens"), seed=2)


def test_two_processes_equal_one(tmp_path, tokens_dir):
    worker = [os.path.join(REPO, "tests", "multihost_worker.py")]
    _run([sys.executable, *worker, str(tmp_path / "one"), tokens_dir], _child_env(8))
    _run([LAUNCH, "2", sys.executable, *worker, str(tmp_path / "two"), tokens_dir],
         _child_env(4))
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/report_*.json"))]
    assert sorted((r["process"], r["processes"], r["devices"]) for r in reports) == [
        (0, 1, 8), (0, 2, 8), (1, 2, 8)]
    single, multi = _losses(tmp_path / "one" / "lm"), _losses(tmp_path / "two" / "lm")
    assert [s for s, _ in single] == [s for s, _ in multi] == [1, 2, 3]
    # Same global batches, same program; only the cross-process reduction order may differ.
    np.testing.assert_allclose([l for _, l in multi], [l for _, l in single], rtol=1e-6)
    # Written collectively: one checkpoint, readable by a single process.
    assert sorted(os.listdir(tmp_path / "two" / "lm" / "checkpoints")) == ["3"]
    # Metrics are written by process 0 only: one record per step, one TensorBoard file.
    assert len(os.listdir(tmp_path / "two" / "lm" / "tensorboard")) == 1
