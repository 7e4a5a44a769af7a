"""Inference exports: weights + config only, loaded back by the same commands, same outputs."""

import json
import os

import jax
import numpy as np
import pytest

from audiolm_jax.codec.config import tiny_cnn_config
from audiolm_jax.codec.inference import load_codec
from audiolm_jax.export import export as export_with
from audiolm_jax.export import is_export
from audiolm_jax.lm.config import tiny_lm_config
from audiolm_jax.tasks import TASKS
from audiolm_jax.train.checkpoint import Checkpointer
from audiolm_jax.train.loop import strip_boxes
from audiolm_jax.workdir import save_config


def export(workdir, out, fmt="orbax", step=None):
    """The export as the command runs it: every kind of model known by name."""
    return export_with(workdir, out, fmt, step, tasks=TASKS)


def _random_checkpoint(task, workdir, step, seed):
    """A checkpoint with the task's state shapes and random values (no compiled init/training
    needed: export only moves arrays around)."""
    rng = np.random.default_rng(seed)
    abstract = strip_boxes(jax.eval_shape(task.init_state, jax.random.PRNGKey(0)))

    def fill(leaf):
        if leaf.dtype == bool:
            return np.ones(leaf.shape, bool)
        if np.issubdtype(leaf.dtype, np.integer):
            return np.full(leaf.shape, step, leaf.dtype)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    state = jax.tree.map(fill, abstract)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    checkpointer.save(step, state)
    checkpointer.close()
    return state


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    from audiolm_jax.codec.task import CodecTask
    from audiolm_jax.lm.task import LMTask

    root = tmp_path_factory.mktemp("export")
    codec_dir = str(root / "codec")
    config = tiny_cnn_config()
    save_config(config, codec_dir)
    _random_checkpoint(CodecTask(config), codec_dir, step=7, seed=0)

    lm_dir = str(root / "lm")
    lm_config = tiny_lm_config()
    lm_config.tokens.update(num_levels=4, codebook_size=64, num_streams=1)
    save_config(lm_config, lm_dir)
    with open(os.path.join(lm_dir, "tokens.json"), "w") as f:
        json.dump({"format": 1, "tokenizer": "codec", "sample_rate": 16000, "frame_rate": 125.0,
                   "num_levels": 4, "codebook_size": 64, "num_streams": 1,
                   "codec": {"workdir": os.path.abspath(codec_dir), "checkpoint_step": 7,
                             "config": None}}, f)
    _random_checkpoint(LMTask(lm_config), lm_dir, step=5, seed=1)
    return root, codec_dir, lm_dir


def _audio(seconds=0.6, seed=3):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.shape)).astype(
        np.float32)


@pytest.mark.parametrize("fmt", ["orbax", "safetensors"])
def test_codec_export_round_trip(workdirs, fmt):
    root, codec_dir, _ = workdirs
    out = str(root / f"codec_{fmt}")
    summary = export(codec_dir, out, fmt=fmt)
    assert summary["kind"] == "codec" and summary["step"] == 7 and is_export(out)
    files = sorted(os.listdir(out))
    assert "checkpoints" not in files and "config.json" in files
    original, exported = load_codec(codec_dir), load_codec(out)
    # Only inference weights: params and the EMA codebooks, bit for bit; no optimizer state.
    for name in ("params", "vq_stats"):
        a, b = getattr(original, name), getattr(exported, name)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert summary["num_weights"] == sum(
        int(np.size(x)) for x in jax.tree.leaves((original.params, original.vq_stats)))
    audio = _audio()
    codes = original.encode(audio)
    np.testing.assert_array_equal(exported.encode(audio), codes)
    np.testing.assert_array_equal(exported.decode(codes), original.decode(codes))


def test_lm_export_carries_its_codec_and_generates_the_same(workdirs, tmp_path):
    from audiolm_jax.data.audio_io import save_wav
    from audiolm_jax.lm.run import LoadedLM, generate_audio

    root, _, lm_dir = workdirs
    out = str(root / "lm_export")
    summary = export(lm_dir, out, fmt="safetensors")
    assert summary["kind"] == "lm" and summary["codec"] == "codec"
    assert is_export(os.path.join(out, "codec"))  # the codec travels with the LM
    with open(os.path.join(out, "tokens.json")) as f:
        assert json.load(f)["codec"]["workdir"] == "codec"
    a, b = LoadedLM(lm_dir), LoadedLM(out)
    assert a.step == b.step == 5
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    prompt = str(tmp_path / "prompt.wav")
    save_wav(prompt, _audio(0.3), 16000)
    wavs = []
    for src in (lm_dir, out):
        dst = str(tmp_path / f"{os.path.basename(src)}.wav")
        generate_audio(src, prompt, 0.1, dst, temperature=0.9, top_k=20, seed=4)
        import soundfile as sf

        wavs.append(sf.read(dst)[0])
    np.testing.assert_array_equal(wavs[0], wavs[1])


def test_export_refuses_bad_requests(workdirs):
    root, codec_dir, _ = workdirs
    with pytest.raises(ValueError, match="--format"):
        export(codec_dir, str(root / "x"), fmt="pickle")
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        export(str(root / "nowhere"), str(root / "y"))
    os.makedirs(root / "busy")
    open(root / "busy" / "f", "w").close()
    with pytest.raises(ValueError, match="not empty"):
        export(codec_dir, str(root / "busy"))
    # the export knows the kinds of model only from the tasks it is given
    with pytest.raises(ValueError, match="holds a codec, which has no export"):
        export_with(codec_dir, str(root / "z"), tasks={"lm": TASKS["lm"]})
