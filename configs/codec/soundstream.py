"""SoundStream/EnCodec-style codec at 24 kHz: causal SEANet (strides 2,4,5,8 -> 75 Hz, 128-d),
8-level EMA RVQ (1024 codes) with quantizer dropout, multi-scale STFT discriminator with hinge
and feature-matching losses, mel + L1 reconstruction, and the gradient balancer
(audiocraft's weights: adv 4, feat 4, mel 2, l1 0.1)."""

from audiolm_jax.codec.config import base_codec_config


def get_config():
    c = base_codec_config()
    c.train.name = "soundstream"
    c.model.update(kind="seanet", n_filters=32, ratios=(8, 5, 4, 2), dimension=128,
                   n_residual_layers=1, causal=True, weight_norm=True)
    c.quantizer.update(num_levels=8, codebook_size=1024, dropout=True, dropout_mode="batch")
    c.loss.update(spectral_weight=0.0, mel_weight=2.0, l1_weight=0.1, mse_weight=0.0,
                  commit_weight=1.0, balancer=True)
    c.adversarial.update(enabled=True, adv_weight=4.0, feat_weight=4.0, filters=32,
                         learning_rate=3e-4, b1=0.5, b2=0.9)
    c.optim.update(learning_rate=3e-4, end_learning_rate=3e-5, warmup_steps=1000,
                   weight_decay=0.0, b1=0.5, b2=0.9, clip_norm=0.0)
    c.data.update(sample_rate=24000, crop_length=24000)
    c.train.update(num_steps=200_000, batch_size=64, checkpoint_every=2000, sample_every=5000)
    return c
