"""Mimi trained from scratch, Mimi-style (Kyutai never published the training code).

The released architecture (``mimi_config``: 24 kHz, SEANet + causal transformers, 12.5 Hz,
split RVQ of 1 semantic + 7 acoustic levels of 2048 codes), trained as the Moshi paper
describes it:
* adversarial losses only: the multi-scale STFT discriminator with hinge and feature-matching
  losses, through the gradient balancer, and no reconstruction loss;
* quantizer dropout on the acoustic levels only, and quantization applied to half of the
  sequences (``no_quant_rate = 0.5``: the other half reach the decoder unquantized);
* semantic distillation: the semantic level's output, linearly projected to 1024 dims, is
  pulled towards WavLM-large features (50 Hz, average-pooled to 12.5 Hz) by a cosine loss.

The teacher runs on the host from a local transformers checkpoint:
    --config.distill.function_kwargs.model_path=/models/wavlm-large
or is read from features precomputed beside the audio (recommended at scale):
    audiolm-jax precompute-teacher --config=configs/codec/mimi.py --audio=/data/speech \\
        --config.distill.function_kwargs.model_path=/models/wavlm-large
    audiolm-jax train-codec --config=configs/codec/mimi.py --workdir=runs/mimi \\
        --config.data.source=/data/speech --config.distill.teacher=precomputed

``configs/codec/mimi.py:tiny``: a Mimi-shaped codec with the same recipe that trains on the
built-in synthetic corpus on a CPU, distilled from the tiny random teacher.
Choices of ours where the paper gives no number are listed in BUILD_NOTES.md.
"""

from audiolm_jax.codec.config import mimi_config, tiny_mimi_config
from audiolm_jax.codec.teachers import distill_config


def _recipe(c):
    c.quantizer.update(dropout=True, dropout_mode="batch", no_quant_rate=0.5)
    c.loss.update(spectral_weight=0.0, mel_weight=0.0, l1_weight=0.0, mse_weight=0.0,
                  commit_weight=1.0, balancer=True)
    c.adversarial.update(enabled=True, adv_weight=4.0, feat_weight=4.0)
    return c


def get_config(variant: str = ""):
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown config variant {variant!r}; configs/codec/mimi.py knows 'tiny'")
    if variant == "tiny":
        c = _recipe(tiny_mimi_config())
        c.train.name = "mimi_tiny"
        c.adversarial.update(filters=8, n_ffts=(512, 256), hop_lengths=(128, 64))
        # A random teacher 4x faster than the codec frames (250 Hz), as WavLM (50 Hz) is to
        # Mimi (12.5 Hz), so the average-pooling path is the one exercised.
        c.distill = distill_config(
            enabled=True, weight=1.0, teacher="function", teacher_dim=16, feature_rate=1000.0,
            function="audiolm_jax.codec.teachers:tiny_random_teacher",
            function_kwargs=dict(dim=16, frame_rate=1000.0, seed=0))
        # tiny_mimi_config's 2e-3 let the adversarial-only run diverge around step 120 (the
        # distillation cosine fell below 0); 5e-4 kept it positive (BUILD_NOTES.md).
        c.optim.update(learning_rate=5e-4, end_learning_rate=5e-5)
        c.train.update(num_steps=200, checkpoint_every=100, log_every=10)
        return c
    c = _recipe(mimi_config(num_codebooks=8))
    c.train.name = "mimi"
    c.distill = distill_config(
        enabled=True, weight=1.0, teacher="function", teacher_dim=1024, feature_rate=50.0,
        function="audiolm_jax.codec.teachers:hf_ssl_teacher", features_suffix="wavlm",
        function_kwargs=dict(model_path="", layer=-1, model_sample_rate=16000, normalize=True))
    return c
