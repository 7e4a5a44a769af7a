"""The base codec config every ``configs/codec/*.py`` file starts from.

Keys every codec config has (scripts may rely on them): train.num_steps, train.batch_size,
train.seed, train.checkpoint_every, quantizer.num_levels, quantizer.codebook_size,
data.source ('synthetic', a folder path, or 'tfds:NAME'), mesh.data, mesh.fsdp, mesh.tensor.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from audiolm_jax.codec.networks import CNNConfig, MimiConfig, SEANetConfig
from audiolm_jax.config_sections import mesh_section, optim_section, train_section
from audiolm_jax.quantization import quantizer_section

# The ``model`` keys of the base config, at their kinds' defaults (codec/networks.py), so
# --config.model.kind=seanet is one override. Saved workdirs hold exactly these keys: a key
# added here would read as a change when such a run resumes.
_BASE_CNN_KEYS = ("channels", "latent_dim", "num_blocks", "res_blocks", "double_residual_quirk")
_BASE_SEANET_KEYS = ("n_filters", "ratios", "dimension", "n_residual_layers", "dilation_base",
                     "kernel_size", "residual_kernel_size", "last_kernel_size", "compress",
                     "causal", "true_skip", "weight_norm")


def _defaults(config_cls, keys=None) -> dict:
    """A kind's default settings (``keys`` of them, in that order; all when None)."""
    values = {f.name: f.default for f in dataclasses.fields(config_cls)}
    return values if keys is None else {k: values[k] for k in keys}


def base_codec_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "codec"
    # The article's CNN codec (nanoGPTaudio): 7 stride-2 blocks, 32 channels, 32-d latents;
    # and SEANet's keys (used when kind == 'seanet').
    c.model = ml_collections.ConfigDict(dict(
        kind="cnn", **_defaults(CNNConfig, _BASE_CNN_KEYS),
        **_defaults(SEANetConfig, _BASE_SEANET_KEYS)))
    # Every quantizer kind's settings at their defaults (quantization/: one dataclass per
    # kind), so any of them is one override away: --config.quantizer.kind=fsq.
    c.quantizer = ml_collections.ConfigDict(quantizer_section("rvq"))
    c.loss = ml_collections.ConfigDict(dict(
        spectral_weight=1.0, spectral_log=False, mel_weight=0.0, l1_weight=0.0,
        mse_weight=1.0, commit_weight=0.02, balancer=False, balancer_decay=0.999))
    c.adversarial = ml_collections.ConfigDict(dict(
        enabled=False, adv_weight=4.0, feat_weight=4.0, filters=32,
        n_ffts=(1024, 2048, 512), hop_lengths=(256, 512, 128),
        learning_rate=3e-4, b1=0.5, b2=0.9, start_step=0))
    c.optim = optim_section(learning_rate=3e-4, end_learning_rate=3e-5, b2=0.999)
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic", eval_source="synthetic", sample_rate=16000, crop_length=65536,
        num_eval=8, eval_seconds=4.0, synthetic_utterances=2048, synthetic_seconds=4.0,
        # grain worker processes that decode and crop (0: threads of the training process);
        # a TPU host needs several to feed its chips (docs/benchmarks.md, input pipeline).
        worker_processes=0))
    c.train = train_section(name="codec", batch_size=128, sample_every=5000)
    c.mesh = mesh_section()
    return c


def _cpu_cnn_config(name: str, *, latent_dim: int, codebook_size: int, kmeans_iters: int,
                    warmup_steps: int, seconds: float, crop_length: int, utterances: int,
                    num_eval: int, num_steps: int, every: int,
                    sample_every: int) -> ml_collections.ConfigDict:
    """The article's CNN codec (7 stride-2 blocks, 125 Hz at 16 kHz) at half width with 2
    residual blocks per stage, 4 levels, batch 8, no weight decay: the CPU-sized codecs."""
    c = base_codec_config()
    c.train.name = name
    c.model.update(kind="cnn", channels=16, latent_dim=latent_dim, num_blocks=7, res_blocks=2)
    c.quantizer.update(num_levels=4, codebook_size=codebook_size, kmeans_iters=kmeans_iters)
    c.optim.update(learning_rate=2e-3, end_learning_rate=2e-4, warmup_steps=warmup_steps,
                   weight_decay=0.0)
    c.data.update(crop_length=crop_length, synthetic_utterances=utterances,
                  synthetic_seconds=seconds, num_eval=num_eval, eval_seconds=seconds)
    c.train.update(num_steps=num_steps, batch_size=8, checkpoint_every=every, log_every=5,
                   sample_every=sample_every)
    return c


def tiny_cnn_config() -> ml_collections.ConfigDict:
    """The article's codec shrunk to run in seconds on a CPU (tests, smoke runs)."""
    return _cpu_cnn_config("tiny_cnn", latent_dim=16, codebook_size=64, kmeans_iters=10,
                           warmup_steps=10, seconds=1.0, crop_length=4096, utterances=64,
                           num_eval=2, num_steps=20, every=10, sample_every=0)


def tiny_soundstream_config() -> ml_collections.ConfigDict:
    """SEANet + adversarial training + balancer at toy size."""
    c = tiny_cnn_config()
    c.train.name = "tiny_soundstream"
    c.model.update(kind="seanet", n_filters=8, ratios=(4, 4, 2), dimension=16,
                   n_residual_layers=1, causal=True, weight_norm=True)
    c.quantizer.update(dropout=True, dropout_mode="sample")
    c.loss.update(spectral_weight=0.0, mel_weight=2.0, l1_weight=0.1, mse_weight=0.0,
                  commit_weight=1.0, balancer=True)
    c.adversarial.update(enabled=True, filters=8, n_ffts=(512, 256), hop_lengths=(128, 64))
    c.data.update(sample_rate=16000, crop_length=4096)
    return c


def quickstart_config() -> ml_collections.ConfigDict:
    """The README's main job: a small article-style codec on the built-in corpus, CPU minutes
    (about 0.16 s a step on 2 CPU cores, BUILD_NOTES.md)."""
    c = _cpu_cnn_config("quickstart", latent_dim=32, codebook_size=256, kmeans_iters=20,
                        warmup_steps=50, seconds=2.0, crop_length=8192, utterances=512,
                        num_eval=4, num_steps=600, every=200, sample_every=200)
    c.train.log_every = 10
    return c


def mimi_config(num_codebooks: int = 8) -> ml_collections.ConfigDict:
    """Kyutai's Mimi as released (24 kHz, 12.5 Hz, 1 semantic + ``num_codebooks - 1`` acoustic
    levels of 2048 codes). ``import-mimi`` writes this config beside the imported weights;
    ``configs/codec/mimi.py`` adds the training recipe on top of it.

    Model keys (``model.kind == 'mimi'``): those of ``codec/networks.py:MimiConfig``, whose
    defaults are the release's: the SEANet keys as for 'seanet', plus ``transformer_layers``,
    ``transformer_heads``, ``transformer_ffn_dim``, ``transformer_context`` (frames each
    position attends to, itself included), ``rope_max_period``, ``layer_scale`` (initial
    value), ``norm_eps``, ``frame_downsample`` (stride of the learned conv after the encoder
    transformer; 1 = none) and ``upsample_channelwise`` (the decoder's transposed conv has
    groups = dimension, as in the release).
    """
    if not 2 <= int(num_codebooks) <= 32:  # the semantic level plus at least one acoustic
        raise ValueError(f"num_codebooks must be in [2, 32], got {num_codebooks}")
    c = base_codec_config()
    c.train.name = "mimi"
    for key, value in dict(kind="mimi", **_defaults(MimiConfig)).items():
        setattr(c.model, key, value)  # the SEANet keys update, the others are added
    # Mimi's quantizer: the semantic level and the acoustic levels both quantize the same
    # 512-d latent through 1x1 projections to 256-d codebooks; relative dead-code rule.
    c.quantizer.update(
        kind="split_rvq", num_levels=int(num_codebooks), num_semantic_levels=1,
        codebook_size=2048, codebook_dim=256, decay=0.99, kmeans_iters=50,
        dead_code_threshold=0.1, dead_code_mode="relative", dead_code_interval=5,
        dropout=True, dropout_mode="sample", no_quant_rate=0.5)
    c.loss.update(spectral_weight=0.0, mel_weight=2.0, l1_weight=0.1, mse_weight=0.0,
                  commit_weight=1.0)
    c.optim.update(learning_rate=8e-4, end_learning_rate=8e-5, warmup_steps=1000,
                   weight_decay=0.0, b1=0.5, b2=0.9, clip_norm=0.0)
    c.data.update(sample_rate=24000, crop_length=24000 * 2)  # a multiple of the 1920 frame
    c.train.update(num_steps=200_000, batch_size=64, checkpoint_every=2000, sample_every=5000)
    return c


def tiny_mimi_config() -> ml_collections.ConfigDict:
    """A Mimi-shaped codec small enough to train in seconds on a CPU: same blocks (SEANet,
    causal windowed transformers, learned 2x down/upsampling, split RVQ), tiny sizes.
    16 kHz, ratios (4, 4, 2) and downsample 2 -> 64-sample frames (250 Hz)."""
    c = mimi_config(num_codebooks=4)
    c.train.name = "tiny_mimi"
    c.model.update(n_filters=8, ratios=(4, 4, 2), dimension=32, transformer_layers=2,
                   transformer_heads=4, transformer_ffn_dim=64, transformer_context=16)
    c.quantizer.update(codebook_size=64, codebook_dim=16, kmeans_iters=10)
    c.optim.update(learning_rate=2e-3, end_learning_rate=2e-4, warmup_steps=10)
    c.data.update(sample_rate=16000, crop_length=4096, synthetic_utterances=64,
                  synthetic_seconds=1.0, num_eval=2, eval_seconds=1.0)
    c.train.update(num_steps=20, batch_size=8, checkpoint_every=10, log_every=5, sample_every=0)
    return c


def quickstart_mimi_config() -> ml_collections.ConfigDict:
    """``quickstart --task=moshi``'s codec: Mimi's blocks at 12.5 Hz, as Moshi's frames are
    (16 kHz, ratios (8, 5, 4, 4) and the 2x learned downsampling: 1280-sample frames), tiny
    widths, 4 levels of 256 codes, trained with mel + L1 reconstruction for CPU minutes."""
    c = tiny_mimi_config()
    c.train.name = "quickstart_mimi"
    c.model.update(n_filters=8, ratios=(8, 5, 4, 4), dimension=64, transformer_layers=1,
                   transformer_heads=4, transformer_ffn_dim=128, transformer_context=32)
    c.quantizer.update(num_levels=4, codebook_size=256, codebook_dim=32, kmeans_iters=10,
                       dropout=False, no_quant_rate=0.0)
    c.optim.update(learning_rate=2e-3, end_learning_rate=2e-4, warmup_steps=20)
    c.data.update(sample_rate=16000, crop_length=1280 * 16, synthetic_utterances=256,
                  synthetic_seconds=2.0, num_eval=2, eval_seconds=2.0)
    c.train.update(num_steps=300, batch_size=8, checkpoint_every=300, log_every=10,
                   sample_every=0)
    return c
