"""Neural audio codecs: encoder -> quantizer -> decoder (``model.py``), trained by
``task.py``. A codec kind is a typed config and an encoder/decoder builder, registered below
(``registry.py`` says what a kind provides; ``networks.py`` holds the built-in ones)."""

from audiolm_jax.codec.networks import (CNNConfig, MimiConfig, SEANetConfig, build_cnn,
                                        build_mimi, build_seanet)
from audiolm_jax.codec.registry import register_codec

register_codec("cnn", CNNConfig, build_cnn)
register_codec("seanet", SEANetConfig, build_seanet)
register_codec("mimi", MimiConfig, build_mimi)
