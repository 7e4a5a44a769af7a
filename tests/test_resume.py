"""Preemption and resume: SIGKILL mid-run or mid-save, SIGTERM, and shape-changing resumes.

A killed and restarted run must log the same per-step losses and batch fingerprints as an
uninterrupted one (bit for bit on CPU): nothing skipped, nothing repeated.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import mulaw_token_dir

from audiolm_jax.train.step_log import read_step_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "resume_worker.py")
TINY_LM = os.path.join(REPO, "configs", "lm", "tiny_flat.py")
STEPS = 8
COMMON = [f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=3",
          "--config.train.log_every=1", "--config.train.progress=False"]
# The codec run uses a smaller model than tiny_cnn: compilation is most of its time.
SMALL_CODEC = {"model.res_blocks": 1, "model.channels": 8, "quantizer.num_levels": 2,
               "quantizer.kmeans_iters": 3}


def small_codec_config():
    from audiolm_jax.codec.config import tiny_cnn_config

    c = tiny_cnn_config()
    for key, value in SMALL_CODEC.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    return c


def _start(args, kill_at_save=0):
    env = dict(os.environ)  # 8 fake devices and the compile cache, as this process has
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, WORKER, str(kill_at_save), *args], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc, timeout=300):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def _logged_steps(workdir):
    try:
        return read_step_log(workdir)
    except FileNotFoundError:
        return []


def _records(history):
    return [(h["step"], h["loss"], h["batch"]) for h in history]


def _checkpoints(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    return mulaw_token_dir(tmp_path_factory.mktemp("resume_tokens"), seed=3)


def test_killed_inside_a_save_resumes_exactly(tmp_path, tokens_dir):
    """SIGKILL inside the commit (rename) of checkpoint 6, every file of it written: the
    worst moment. The half-committed step is not a checkpoint; the restart resumes from 3 and
    logs what an uninterrupted run logs. (The codec's exact resume, its EMA statistics and
    discriminator included, is the SIGTERM test below; the LM runs here as a real process.)"""
    from audiolm_jax.lm.config import tiny_lm_config
    from audiolm_jax.lm.run import train_lm

    workdir = str(tmp_path / "killed")
    args = ["train-lm", f"--config={TINY_LM}", f"--workdir={workdir}",
            f"--config.data.tokens={tokens_dir}", "--config.model.context=128", *COMMON]
    code, out = _finish(_start(args, kill_at_save=6))
    assert code == -signal.SIGKILL, f"run was not killed in the save ({code}):\n{out[-3000:]}"
    assert _checkpoints(workdir) == [3]  # the half-committed step 6 is not a checkpoint
    assert any(".orbax-checkpoint-tmp" in d for d in os.listdir(os.path.join(workdir, "checkpoints")))
    # Steps 4-6 (and with the save in the background, later ones) ran and were logged: the
    # restart reruns them.
    assert len(_logged_steps(workdir)) >= 6
    # The restarted run and the uninterrupted one (in this process) run side by side: both
    # find their programs in the compilation cache that the killed run filled.
    resumed = _start(args)
    config = tiny_lm_config()
    config.model.context = 128
    config.data.tokens = tokens_dir
    config.train.update(num_steps=STEPS, checkpoint_every=3, log_every=1, progress=False)
    try:
        train_lm(config, str(tmp_path / "uninterrupted"))
    finally:
        code, out = _finish(resumed)
    assert code == 0, out[-3000:]
    assert _checkpoints(workdir)[-1] == STEPS
    resumed = _records(read_step_log(workdir))
    assert [r[0] for r in resumed] == list(range(1, STEPS + 1))
    assert resumed == _records(read_step_log(str(tmp_path / "uninterrupted")))


class _SigtermAt:
    """Batches of a list; asks the OS to SIGTERM this process while handing out batch ``at``."""

    def __init__(self, batches, at=None):
        self.batches, self.pos, self.at = batches, 0, at

    def __next__(self):
        if self.pos == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.pos += 1
        return self.batches[self.pos - 1]

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        self.pos = state["pos"]


def test_sigterm_checkpoints_the_current_step_and_resumes(tmp_path):
    from audiolm_jax.codec.task import CodecTask
    from audiolm_jax.train.checkpoint import Checkpointer
    from audiolm_jax.train.loop import Preempted, train_loop

    rng = np.random.default_rng(0)
    batches = [{"audio": (0.1 * rng.standard_normal((8, 4096))).astype(np.float32)}
               for _ in range(STEPS)]
    c = small_codec_config()
    # num_steps=STEPS, as in the runs above: the learning-rate schedule is compiled into the
    # step, so these are the programs the persistent compilation cache already holds.
    c.train.update(num_steps=STEPS, checkpoint_every=4, log_every=1, progress=False)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    _, full = train_loop(CodecTask(c), c, str(tmp_path / "a"), _SigtermAt(batches))
    # SIGTERM arrives while step 2's batch is fetched: step 2 finishes, is saved, then we stop.
    with pytest.raises(Preempted) as info:
        train_loop(CodecTask(c), c, str(tmp_path / "b"), _SigtermAt(batches, at=1))
    assert info.value.step == 2  # the in-flight step completed and was checkpointed
    assert Checkpointer(str(tmp_path / "b" / "checkpoints")).all_steps() == [2]
    it = _SigtermAt(batches)
    _, rest = train_loop(CodecTask(c), c, str(tmp_path / "b"), it)
    assert [h["step"] for h in rest] == list(range(3, STEPS + 1)) and it.pos == STEPS
    assert _records(read_step_log(str(tmp_path / "b"))) == _records(full)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed afterwards


def test_resume_with_other_shapes_is_refused_naming_the_keys(tmp_path):
    from audiolm_jax.codec.config import tiny_cnn_config
    from audiolm_jax.codec.task import CodecTask
    from audiolm_jax.config_check import ConfigError
    from audiolm_jax.train.checkpoint import Checkpointer
    from audiolm_jax.train.loop import check_checkpoint_shapes, abstract_state
    from audiolm_jax.train import mesh as mesh_lib
    import jax
    import ml_collections

    c = tiny_cnn_config()
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              jax.devices()[:1])
    abstract, _ = abstract_state(CodecTask(c), mesh, jax.random.PRNGKey(0))
    state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(1, state)
    check_checkpoint_shapes(ckpt, 1, abstract)  # same config: fine
    c.quantizer.codebook_size = 128
    other, _ = abstract_state(CodecTask(c), mesh, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match=r"codebook.*\(64, 16\) -> \(128, 16\)"):
        check_checkpoint_shapes(ckpt, 1, other)
