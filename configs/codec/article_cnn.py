"""The second article's CNN codec (nanoGPTaudio): 16 kHz, 128x down to 32-d latents at 125 Hz,
8-level EMA RVQ with 1024 codes, multi-scale linear-magnitude spectral loss + waveform MSE.

Levels are one override away: --config.quantizer.num_levels=16 (the article compares 1..16).
"""

from audiolm_jax.codec.config import base_codec_config


def get_config():
    c = base_codec_config()
    c.train.name = "article_cnn"
    c.model.update(kind="cnn", channels=32, latent_dim=32, num_blocks=7, res_blocks=4)
    c.quantizer.update(num_levels=8, codebook_size=1024, decay=0.99, dead_code_threshold=2.0)
    c.loss.update(spectral_weight=1.0, spectral_log=False, mse_weight=1.0, commit_weight=0.02)
    c.optim.update(learning_rate=3e-4, end_learning_rate=3e-5, warmup_steps=2000,
                   weight_decay=0.1, clip_norm=1.0)
    c.data.update(sample_rate=16000, crop_length=2**16)
    c.train.update(num_steps=100_000, batch_size=128, checkpoint_every=2000, sample_every=5000)
    return c
