"""Moshi training (audiolm_jax/moshi/task.py, run.py): moshi-finetune's loss against a numpy
re-implementation, sharded == unsharded (full and LoRA), exact resume, LoRA fine-tuning and
its export, and import-moshi of Kyutai's layout with a moshi-finetune LoRA file."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiolm_jax.data.lexicon import write_aligned_dialogues, write_lexicon_tokenizer
from audiolm_jax.errors import ConfigError
from audiolm_jax.lm import tokens as tk
from audiolm_jax.moshi import MoshiConfig, logits, param_shapes, to_kyutai
from audiolm_jax.moshi.experiment import base_config, tiny_variant
from audiolm_jax.moshi.task import MoshiTask, fill_from_tokens
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.loop import compile_step, initial_state

SR = 16000


class FakeCodec:
    """12.5 Hz codes from frame energies (3 levels of 64): fast and deterministic."""

    sample_rate = SR
    hop_length = 1280
    frame_rate = SR / 1280
    num_levels = 3
    codebook_size = 64
    step = 1
    config = {"quantizer": {"num_levels": 3, "codebook_size": 64}}
    workdir = None

    def encode(self, audio):
        audio = np.asarray(audio, np.float32)
        frames = math.ceil(len(audio) / self.hop_length)
        padded = np.zeros(frames * self.hop_length, np.float32)
        padded[:len(audio)] = audio
        x = padded.reshape(frames, self.hop_length)
        base = np.floor(np.abs(x).mean(axis=1) * 400).astype(np.int64)
        return np.stack([(base + 7 * level) % 64 for level in range(3)]).astype(np.int32)


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("moshi_data")
    paths = write_aligned_dialogues(root / "dlg", 16, sample_rate=SR, seconds=8.0)
    spm = write_lexicon_tokenizer(root / "dlg")
    os.remove(os.path.splitext(paths[3])[0] + ".json")  # one file without a transcript
    out = str(root / "tok")
    tk.tokenize_corpus(paths, out, codec=FakeCodec(), stereo_streams=True, text_tokenizer=spm)
    meta = json.loads(open(os.path.join(out, "metadata.json")).read())
    assert meta["text"]["no_transcript"] == ["dialogue_00003.wav"]
    return out


def tiny_config(token_dir, **train):
    c = tiny_variant(base_config())
    c.data.tokens = token_dir
    c.train.update(progress=False, async_checkpoints=False, **train)
    fill_from_tokens(c, tk.load_token_dir(token_dir).metadata)
    return c


def batches(task, token_dir, n, batch_size=8):
    it = tk.make_window_iterator(tk.load_token_dir(token_dir), frames=int(task.config.data.frames),
                                 batch_size=batch_size, seed=3)
    return [task.prepare_batch(next(it)) for _ in range(n)]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_sizes_from_the_token_directory_and_config_errors(token_dir, tmp_path):
    c = tiny_config(token_dir)
    assert (c.model.card, c.model.dep_q, c.model.n_q) == (64, 3, 6)
    assert c.model.text_card == tk.load_token_dir(token_dir).metadata["text"]["vocab_size"]
    assert MoshiTask(c).model_config.delays == (0, 0, 1, 1, 0, 1, 1)
    from audiolm_jax.config_check import check_moshi_config

    bad = tiny_config(token_dir)
    bad.lora.rank = 4
    with pytest.raises(ConfigError, match="init_from"):
        check_moshi_config(bad, 1)
    bad = tiny_config(token_dir)
    bad.loss.first_codebook_weight = -1.0
    with pytest.raises(ConfigError, match="loss.first_codebook_weight"):
        check_moshi_config(bad, 1)
    small = tiny_variant(base_config())
    small.model.card = 16
    with pytest.raises(ValueError, match="model.card"):
        fill_from_tokens(small, tk.load_token_dir(token_dir).metadata)


def test_loss_is_moshi_finetunes(token_dir):
    """Text CE with PAD/EPAD x0.5, audio CE over the model's codebooks with the first x100,
    each a weighted mean over the valid positions; the no-transcript rows (-1) and the
    delay-cut frames count nowhere; the user's codebooks are never targets."""
    c = tiny_config(token_dir)
    c.loss.update(text_weight=0.7, audio_weight=1.3)
    task = MoshiTask(c)
    params = nn.meta.unbox(task.init_state(jax.random.PRNGKey(0))).params
    batch = batches(task, token_dir, 1)[0]
    codes = batch["codes"].copy()
    codes[1, 0] = -1  # a window with no transcript
    losses = jax.jit(task.losses)  # one compile for both calls below (eager is slow)
    loss, aux = losses(params, {"codes": codes})
    out = jax.tree.map(np.asarray, jax.jit(logits, static_argnums=0)(
        task.model_config, params, codes))
    m = task.model_config
    # numpy reference (moshi-finetune finetune/loss.py: compute_loss_with_mask)
    def ce_weighted(lg, target, mask, weights):
        lp = _log_softmax(np.where(mask[..., None], lg, 0.0))
        ce = -np.take_along_axis(lp, np.where(mask, target, 0)[..., None], -1)[..., 0]
        return (ce * weights * mask).sum() / (weights * mask).sum()

    text = codes[:, :1]
    tw = np.where((text == 3) | (text == 0), 0.5, 1.0)
    want_text = ce_weighted(out.text_logits, text, out.text_mask, tw)
    aw = np.ones(out.audio_mask.shape)
    aw[:, 0] = 100.0
    want_audio = ce_weighted(out.audio_logits, codes[:, 1:1 + m.dep_q], out.audio_mask, aw)
    np.testing.assert_allclose(float(aux["loss/text"]), want_text, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loss/audio"]), want_audio, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.7 * want_text + 1.3 * want_audio, rtol=1e-5)
    assert not out.text_mask[1].any() and out.text_mask[0].sum() == codes.shape[-1]
    assert (~out.audio_mask[:, 1:, -1]).all()  # acoustic codebooks: the last frame is cut
    # The user's rows are input only: changing their targets' last frame changes no loss.
    later = codes.copy()
    later[:, 1 + m.dep_q:, -1] = (later[:, 1 + m.dep_q:, -1] + 1) % m.card
    np.testing.assert_allclose(float(losses(params, {"codes": later})[0]), float(loss),
                               rtol=1e-6)


@pytest.mark.parametrize("lora,shape", [(False, (2, 2, 2)), (True, (1, 2, 4))])
def test_sharded_moshi_step_equals_unsharded(token_dir, lora, shape):
    c = tiny_config(token_dir)
    if lora:
        c.lora.rank = 4
    task = MoshiTask(c)
    data = batches(task, token_dir, 2)

    def run(devices, mesh_shape):
        mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(
            dict(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])), devices)
        with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
            state, shardings, _ = initial_state(task, mesh, jax.random.PRNGKey(0))
            step = compile_step(task, shardings, mesh)
            losses = []
            for b in data:
                state, m = step(state, mesh_lib.global_batch(b, mesh_lib.batch_sharding(mesh)))
                losses.append(float(m["loss"]))
        return jax.device_get((state.params, state.lora)), losses

    p1, l1 = run(jax.devices()[:1], (1, 1, 1))
    p8, l8 = run(jax.devices(), shape)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if lora:  # the adapters trained (b starts at zero)
        assert any(np.abs(x).max() > 0 for p, x in jax.tree_util.tree_leaves_with_path(p1[1])
                   if p[-1].key == "b")


def _params(workdir):
    from audiolm_jax.moshi.run import load_weights

    return load_weights(workdir)[0]


def test_resume_lora_finetune_and_export(token_dir, tmp_path, monkeypatch):
    """A run stopped and resumed equals an uninterrupted one; the text loss falls; a LoRA
    run from it trains the adapters only, and its export (and its workdir) loads as the
    merged Moshi."""
    from audiolm_jax.export import export
    from audiolm_jax.moshi.run import load_moshi, train_moshi
    from audiolm_jax.tasks import TASKS

    from audiolm_jax.train.loop import Preempted
    from audiolm_jax.train.preemption import PreemptionWatch

    def config(**train):
        c = tiny_config(token_dir, **train)
        c.optim.warmup_steps = 6
        return c

    whole = str(tmp_path / "whole")
    summary = train_moshi(config(num_steps=12, checkpoint_every=6), whole)
    assert summary["text_loss"] < 0.8 * summary["first_text_loss"], summary
    parts = str(tmp_path / "parts")
    # Preempted after step 6 (as by a SIGTERM), then the same command again: one program.
    with monkeypatch.context() as m:
        m.setattr(PreemptionWatch, "requested", lambda self, step: step == 6)
        with pytest.raises(Preempted):
            train_moshi(config(num_steps=12, checkpoint_every=6), parts)
    train_moshi(config(num_steps=12, checkpoint_every=6), parts)
    for a, b in zip(jax.tree.leaves(_params(whole)), jax.tree.leaves(_params(parts))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    ft = str(tmp_path / "lora")
    c = config(num_steps=4, checkpoint_every=4, init_from=whole)
    c.lora.update(rank=4, scaling=2.0)
    c.optim.learning_rate = 1e-2
    train_moshi(c, ft)
    from audiolm_jax.train.checkpoint import Checkpointer

    task = MoshiTask(c)
    from audiolm_jax.train.loop import restore_for_inference

    state, _ = restore_for_inference(task, ft)
    base = _params(whole)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen
    assert any(np.abs(np.asarray(x)).max() > 0 for p, x in
               jax.tree_util.tree_leaves_with_path(state.lora) if p[-1].key == "b")
    merged = task.effective_params(state.params, state.lora)
    codes = batches(task, token_dir, 1, batch_size=2)[0]["codes"]
    want = logits(task.model_config, merged, codes)
    assert not np.allclose(np.asarray(want.text_logits)[np.asarray(want.text_mask)],
                           np.asarray(logits(task.model_config, base, codes).text_logits)[
                               np.asarray(want.text_mask)])
    out = str(tmp_path / "export")
    export(ft, out, fmt="orbax", tasks=TASKS)
    monkeypatch.chdir(tmp_path)  # an export named by a relative path (orbax wants absolute)
    for path in ("export", ft):
        got = load_moshi(path).logits(codes)
        np.testing.assert_allclose(np.asarray(got.audio_logits)[np.asarray(got.audio_mask)],
                                   np.asarray(want.audio_logits)[np.asarray(want.audio_mask)],
                                   rtol=1e-5, atol=1e-5)
    assert os.path.exists(os.path.join(out, "text_tokenizer.model"))
    assert load_moshi(out).text_tokenizer.vocab_size == c.model.text_card

    # The adapters alone, in moshi-finetune's layout, merged onto the base by import-moshi.
    from safetensors.numpy import save_file

    from audiolm_jax.moshi.run import export_lora, import_moshi

    lora_dir = str(tmp_path / "lora_only")
    info = export_lora(ft, lora_dir)
    assert info["lora_rank"] == 4 and info["base"] == whole
    base_file = str(tmp_path / "base.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in to_kyutai(
        jax.device_get(base), task.model_config).items()}, base_file)
    import_moshi(base_file, str(tmp_path / "reimported"),
                 config_json=os.path.join(lora_dir, "config.json"),
                 lora=os.path.join(lora_dir, "lora.safetensors"))
    got = load_moshi(str(tmp_path / "reimported")).logits(codes)
    np.testing.assert_allclose(np.asarray(got.audio_logits)[np.asarray(got.audio_mask)],
                               np.asarray(want.audio_logits)[np.asarray(want.audio_mask)],
                               rtol=1e-4, atol=1e-4)


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: np.asarray(rng.normal(0, 0.2, s.shape), np.float32),
                        param_shapes(cfg))


def test_import_moshi_kyutai_layout_with_a_lora_file(tmp_path):
    """import-moshi (the CLI, its --config being Kyutai's config.json) of a Kyutai state dict
    and a moshi-finetune LoRA file: logits equal our model on W + scaling * B @ A computed in
    Kyutai's layout; bad LoRA files are refused naming the key."""
    from safetensors.numpy import save_file

    from audiolm_jax.moshi import from_kyutai
    from audiolm_jax.moshi.run import import_moshi, load_moshi

    cfg = MoshiConfig.tiny()
    params = _random_params(cfg)
    state = {k: np.ascontiguousarray(v) for k, v in to_kyutai(params, cfg).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {**cfg.kyutai_kwargs(), "lora_scaling": 1.5, "moshi_name": "model.safetensors"}))
    rng = np.random.default_rng(1)
    lora = {}
    for key in ("transformer.layers.0.self_attn.in_projs.0.weight", "linears.1.weight",
                "depformer.layers.1.gating.1.linear_in.weight"):
        out_dim, in_dim = state[key].shape
        name = key[:-len(".weight")]
        lora[f"{name}.lora_A.weight"] = rng.normal(0, 0.3, (2, in_dim)).astype(np.float32)
        lora[f"{name}.lora_B.weight"] = rng.normal(0, 0.3, (out_dim, 2)).astype(np.float32)
    save_file(lora, str(tmp_path / "lora.safetensors"))

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "audiolm_jax.cli", "import-moshi",
         f"--weights={tmp_path / 'model.safetensors'}", f"--config={tmp_path / 'config.json'}",
         f"--lora={tmp_path / 'lora.safetensors'}", f"--workdir={tmp_path / 'imported'}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["layout"] == "kyutai" and summary["n_q"] == cfg.n_q

    merged = dict(state)
    for key in ("transformer.layers.0.self_attn.in_projs.0.weight", "linears.1.weight",
                "depformer.layers.1.gating.1.linear_in.weight"):
        name = key[:-len(".weight")]
        merged[key] = state[key] + 1.5 * lora[f"{name}.lora_B.weight"] @ lora[
            f"{name}.lora_A.weight"]
    want_params = from_kyutai(merged, cfg)
    rng = np.random.default_rng(2)
    codes = np.concatenate([rng.integers(0, cfg.text_card, (2, 1, 10)),
                            rng.integers(0, cfg.card, (2, cfg.n_q, 10))], 1).astype(np.int32)
    want = logits(cfg, want_params, codes)
    got = load_moshi(str(tmp_path / "imported")).logits(codes)
    for g, w, mask in ((got.text_logits, want.text_logits, want.text_mask),
                       (got.audio_logits, want.audio_logits, want.audio_mask)):
        np.testing.assert_allclose(np.asarray(g)[np.asarray(mask)],
                                   np.asarray(w)[np.asarray(mask)], rtol=1e-5, atol=1e-5)

    bad = dict(lora)
    bad["nothing.lora_A.weight"] = bad["linears.1.lora_A.weight"]
    bad["nothing.lora_B.weight"] = bad["linears.1.lora_B.weight"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="nothing.weight"):
        import_moshi(str(tmp_path / "model.safetensors"), str(tmp_path / "bad_import"),
                     config_json=str(tmp_path / "config.json"),
                     lora=str(tmp_path / "bad.safetensors"))
    half = {k: v for k, v in lora.items() if k != "linears.1.lora_B.weight"}
    save_file(half, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match="linears.1.lora_B"):
        import_moshi(str(tmp_path / "model.safetensors"), str(tmp_path / "half_import"),
                     config_json=str(tmp_path / "config.json"),
                     lora=str(tmp_path / "half.safetensors"))
