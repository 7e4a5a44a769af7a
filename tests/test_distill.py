"""Mimi-style semantic distillation: resampling and cosine loss against numpy, distillation
pulling the semantic level towards a teacher, precomputed features cropped with the audio,
acoustic-only quantizer dropout with whole-sample bypass, clear errors for bad teacher configs,
and the transformers SSL adapter (peers extra)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.codec import losses, teachers
from audiolm_jax.codec.config import tiny_cnn_config
from audiolm_jax.codec.data import make_train_iterator
from audiolm_jax.codec.task import CodecTask
from audiolm_jax.config_check import ConfigError, check_codec_config
from audiolm_jax.data import save_wav
from audiolm_jax.data.features import features_path
from audiolm_jax.quantization import SplitResidualVQ

# ----------------------------------------------------------------------------- (a) math


def _fine_average(x, src_rate, dst_rate, dst_frames, per_second=200_000):
    """Reference pooling: sample the piecewise-constant teacher densely, average per frame."""
    out = []
    for i in range(dst_frames):
        t = np.arange(i / dst_rate, (i + 1) / dst_rate, 1 / per_second)
        j = np.floor(t * src_rate + 1e-9).astype(int)
        j = j[j < len(x)]
        out.append(x[j].mean(axis=0) if j.size else x[-1])
    return np.stack(out)


def test_resampling_matches_numpy_references():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    # Teacher 4x faster (WavLM 50 Hz -> Mimi 12.5 Hz): plain 4-frame averages.
    m = losses.feature_resampling_matrix(40, 50.0, 10, 12.5)
    np.testing.assert_allclose(m @ x, x.reshape(10, 4, 3).mean(axis=1), atol=1e-6)
    # Non-integer ratio (50 -> 15 Hz), and codec frames past the teacher's end.
    m = losses.feature_resampling_matrix(40, 50.0, 14, 15.0)
    np.testing.assert_allclose(m @ x, _fine_average(x, 50.0, 15.0, 14), atol=1e-3)
    # Teacher slower (50 Hz -> 125 Hz codec): linear interpolation at frame centres.
    m = losses.feature_resampling_matrix(12, 50.0, 30, 125.0)
    centres_dst = (np.arange(30) + 0.5) / 125.0
    centres_src = (np.arange(12) + 0.5) / 50.0
    ref = np.stack([np.interp(centres_dst, centres_src, x[:12, d]) for d in range(3)], -1)
    np.testing.assert_allclose(m @ x[:12], ref, atol=1e-6)


def test_cosine_loss_matches_numpy_and_skips_padding():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((2, 7, 5)).astype(np.float32)
    t = rng.standard_normal((2, 7, 5)).astype(np.float32)
    t[1, 5:] = 0.0  # padding frames past the end of a file
    loss, cos = jax.jit(losses.cosine_distillation_loss)(s, t)
    valid = np.abs(t).sum(-1) > 0
    c = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.maximum(np.linalg.norm(t, axis=-1),
                                                                   1e-6)
    np.testing.assert_allclose(float(cos), c[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), 1 - c[valid].mean(), rtol=1e-5)
    g = jax.grad(lambda a: losses.cosine_distillation_loss(a, t)[0])(jnp.zeros_like(s))
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- (b) training


def _tiny_distill_config(weight):
    c = tiny_cnn_config()
    c.model.update(channels=8, latent_dim=16, num_blocks=5, res_blocks=1)
    c.quantizer.update(kind="split_rvq", num_levels=2, num_semantic_levels=1, codebook_size=32,
                       kmeans_iters=5)
    c.loss.update(spectral_weight=0.0, mse_weight=1.0)
    c.data.update(crop_length=2048)
    c.train.update(batch_size=8, seed=0)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.distill = teachers.distill_config(enabled=True, weight=weight, teacher_dim=16)
    return c


def _train_cosines(config, steps):
    from audiolm_jax.train import mesh as mesh_lib
    from audiolm_jax.train.loop import compile_init_step, compile_step, initial_state

    check_codec_config(config)
    task, it = CodecTask(config), make_train_iterator(config)
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    cosines = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        # A cheaper PRNG than threefry: XLA:CPU compiles threefry-heavy parameter init slowly,
        # and this test is about the losses, not the random streams.
        state, shardings, _ = initial_state(task, mesh, jax.random.key(0, impl="unsafe_rbg"))
        step, first = compile_step(task, shardings, mesh), compile_init_step(task, shardings, mesh)
        for i in range(steps):
            batch = mesh_lib.global_batch(task.prepare_batch(next(it)),
                                          mesh_lib.batch_sharding(mesh, 1))
            if i == 0:
                state = first(state, batch)
            state, metrics = step(state, batch)
            metrics = jax.device_get(metrics)  # one step at a time (CPU collectives)
            assert np.isfinite(metrics["loss"])
            cosines.append(float(metrics["distill_cosine"]))
    return np.asarray(cosines)


def test_distillation_pulls_the_semantic_level_towards_the_teacher():
    # Same seed, same data. With weight 0 the projection head still learns (a linear probe of
    # the semantic level), so both runs measure the same thing: the cosine between the
    # projected semantic output and the teacher.
    steps = 40
    on = _train_cosines(_tiny_distill_config(1.0), steps)
    off = _train_cosines(_tiny_distill_config(0.0), steps)
    assert on[-10:].mean() > 0.2, on
    assert on[-10:].mean() > off[-10:].mean() + 0.15, (on, off)


# ----------------------------------------------------------------------------- (c) data


def _index_teacher(audio, sample_rate, hop=160):
    """Frame j of each row: [j + 1, the sample at the frame's start]: encodes time exactly
    (and tells a real frame from a zero padding row)."""
    frames = -(-audio.shape[1] // hop)
    j = np.arange(frames)
    return np.stack([np.broadcast_to(j + 1, (audio.shape[0], frames)), audio[:, j * hop]],
                    -1).astype(np.float32)


def _folder_config(folder, dim=2):
    c = tiny_cnn_config()
    c.quantizer.update(kind="split_rvq", num_levels=2, num_semantic_levels=1)
    c.data.update(source=str(folder), crop_length=4096)
    c.train.update(batch_size=4)
    c.distill = teachers.distill_config(enabled=True, teacher="precomputed", teacher_dim=dim,
                                        feature_rate=100.0, features_suffix="idx")
    return c


def test_precomputed_features_are_cropped_with_the_audio(tmp_path):
    rng = np.random.default_rng(2)
    for i, seconds in enumerate((0.9, 1.3, 0.2)):  # the last one is shorter than a crop
        save_wav(tmp_path / f"utt{i}.wav", 0.5 * rng.uniform(-1, 1, int(16000 * seconds)), 16000)
    save_wav(tmp_path / "no_features.wav", rng.uniform(-0.5, 0.5, 16000), 16000)
    summary = teachers.precompute_teacher_features(str(tmp_path), _index_teacher, 16000,
                                                   suffix="idx")
    assert summary["written"] == 4 and summary["frames_per_second"] == pytest.approx(100, 0.01)
    os.remove(features_path(str(tmp_path / "no_features.wav"), "idx"))

    config = _folder_config(tmp_path)
    check_codec_config(config)
    it = make_train_iterator(config)
    hop = 160
    for _ in range(6):
        batch = next(it)
        audio, feats = batch["audio"], batch["features"]
        assert feats.shape == (4, -(-4096 // hop), 2)
        for a, f in zip(audio, feats):
            n = int((f[:, 0] > 0).sum())
            assert n > 0
            # Consecutive frames from the crop's first frame; each frame's stored sample is
            # the audio sample where the frame starts in the crop.
            np.testing.assert_array_equal(f[:n, 0], f[0, 0] + np.arange(n))
            np.testing.assert_array_equal(f[:n, 1], a[np.arange(n) * hop])
            assert not f[n:].any()  # past the end of the file: zero rows (and silent audio)
            assert not a[n * hop:].any()
    skipped = it.skipped.as_dict()
    assert skipped["count"] >= 1
    assert any("no_features.idx.npy" in reason for reason in skipped["files"].values())
    # The CodecTask hands them to the step as the teacher.
    assert CodecTask(config).prepare_batch(batch)["teacher"].shape == feats.shape

    with pytest.raises(ValueError, match=r"idx\.npy.*distill\.teacher_dim"):
        make_train_iterator(_folder_config(tmp_path, dim=3))


# ----------------------------------------------------------------------------- (d) quantizer


def test_dropout_is_acoustic_only_and_bypass_skips_whole_samples():
    B, T, D = 16, 3, 6
    q = SplitResidualVQ(num_semantic_levels=1, num_acoustic_levels=3, codebook_size=8, dim=D,
                        codebook_dim=4, kmeans_iters=3, dead_code_threshold=0.0, dropout=True,
                        dropout_mode="sample", no_quant_rate=0.5)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, D)), jnp.float32)

    @jax.jit
    def init(key):  # parameters and k-means codebooks
        v = q.init(jax.random.key(0), x)
        _, st = q.apply(v, x, train=True, init_codebooks=True, rngs={"vq": key},
                        mutable=["vq_stats"])
        return {**v, **st}

    v = init(jax.random.key(5))
    step = jax.jit(lambda key: q.apply(v, x, train=True, init_codebooks=False,
                                       mutable=["vq_stats"], rngs={"vq": key})[0])
    decode = jax.jit(lambda codes: q.apply(v, codes, method="decode"))
    outs = [step(jax.random.key(i)) for i in range(4)]
    decoded = [decode(o["codes"]) for o in outs]
    params = v["params"]

    def proj(name):
        p = params[name]
        return np.asarray(p["in_proj"]["kernel"]) @ np.asarray(p["out_proj"]["kernel"])

    unquantized = np.asarray(x) @ (proj("semantic") + proj("acoustic"))
    semantic_unquantized = np.asarray(x) @ proj("semantic")
    n_acoustic, bypassed = set(), 0
    for out, dec in zip(outs, decoded):
        codes = np.asarray(out["codes"])
        assert np.all(codes[..., 0] >= 0)  # the semantic level is never dropped
        n = (codes[:, 0, 1:] >= 0).sum(-1)
        n_acoustic.update(n.tolist())
        for b in range(B):  # dropped acoustic levels are a suffix
            assert np.all(codes[b, :, 1:1 + n[b]] >= 0) and np.all(codes[b, :, 1 + n[b]:] == -1)
            skip = np.allclose(out["quantized"][b], unquantized[b], atol=1e-5)
            quant = np.allclose(out["quantized"][b], dec[b], atol=1e-5)
            assert skip != quant, b  # each sample is either quantized or skipped entirely
            if skip:
                bypassed += 1
                np.testing.assert_allclose(out["semantic_quantized"][b],
                                           semantic_unquantized[b], atol=1e-5)
    assert n_acoustic == {1, 2, 3}
    assert 0.25 < bypassed / (4 * B) < 0.75


# ----------------------------------------------------------------------------- (e) errors


@pytest.mark.parametrize("key,value,needle", [
    ("function", "audiolm_jax.codec.teachers:no_such_teacher", "distill.function"),
    ("function", "no_such_module_xyz:teacher", "distill.function"),
    ("function", "not a spec", "distill.function"),
    ("teacher", "telepathy", "distill.teacher"),
    ("teacher_dim", 0, "distill.teacher_dim"),
    ("function_kwargs", {"dim": 16, "colour": "blue"}, "distill.function_kwargs"),
])
def test_bad_teacher_config_names_the_key(key, value, needle):
    c = _tiny_distill_config(1.0)
    c.distill[key] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        check_codec_config(c)


def test_teacher_errors_at_run_time_name_the_key(tmp_path):
    c = _tiny_distill_config(1.0)
    c.distill.teacher_dim = 8  # the tiny teacher gives 16
    with pytest.raises(ValueError, match=r"distill\.teacher_dim"):
        CodecTask(c).prepare_batch({"audio": np.zeros((2, 2048), np.float32)})
    c = _tiny_distill_config(1.0)
    c.quantizer.kind = "rvq"
    with pytest.raises(ConfigError, match=r"distill\.enabled"):
        check_codec_config(c)
    c = _tiny_distill_config(1.0)
    c.distill.function = "audiolm_jax.codec.teachers:hf_ssl_teacher"
    c.distill.function_kwargs = {"model_path": str(tmp_path / "missing")}
    with pytest.raises(ValueError, match=r"distill\.function_kwargs\.model_path"):
        make_train_iterator(c)
    c = _folder_config(tmp_path)  # a folder with audio but no feature files
    save_wav(tmp_path / "a.wav", np.zeros(8000), 16000)
    with pytest.raises(ValueError, match=r"distill\.features_suffix.*precompute-teacher"):
        make_train_iterator(c)
    c.data.source = "synthetic"
    with pytest.raises(ValueError, match=r"distill\.teacher.*folder"):
        make_train_iterator(c)


# ----------------------------------------------------------------------------- SSL adapter


def test_hf_ssl_teacher_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        num_buckets=32, max_bucket_distance=64)
    transformers.WavLMModel(cfg).eval().save_pretrained(tmp_path / "wavlm")
    t16 = np.arange(16000) / 16000
    t24 = np.arange(24000) / 24000
    tone = lambda t: 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1330 * t)
    audio16 = np.stack([tone(t16), 0.5 * tone(t16 + 0.01)]).astype(np.float32)

    got = teachers.hf_ssl_teacher(audio16, 16000, model_path=str(tmp_path / "wavlm"), layer=1)
    # Reference: transformers' own feature extractor (per-utterance normalisation) + model.
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000)
    inputs = extractor(list(audio16), sampling_rate=16000, return_tensors="pt")
    model = transformers.WavLMModel.from_pretrained(tmp_path / "wavlm").eval()
    with torch.no_grad():
        ref = model(inputs["input_values"], output_hidden_states=True).hidden_states[1].numpy()
    assert got.shape == ref.shape == (2, 49, 32)  # 50 Hz
    np.testing.assert_allclose(got, ref, atol=2e-4)
    # 24 kHz input is resampled to the model's 16 kHz: same features as the native signal.
    got24 = teachers.hf_ssl_teacher(np.stack([tone(t24)]).astype(np.float32), 24000,
                                    model_path=str(tmp_path / "wavlm"), layer=1)
    cos = (got24[0] * got[0]).sum(-1) / np.linalg.norm(got24[0], axis=-1) / np.linalg.norm(
        got[0], axis=-1)
    assert got24.shape == (1, 49, 32) and cos[2:-2].min() > 0.99
