"""A CPU-sized SoundStream codec (adversarial + balancer) for tests and smoke runs."""

from audiolm_jax.codec.config import tiny_soundstream_config


def get_config():
    return tiny_soundstream_config()
