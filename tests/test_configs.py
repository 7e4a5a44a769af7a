"""Every experiment config loads, validates, and builds its full-size state (shapes only)."""

import glob
import importlib.util
import os

import jax
import pytest

from audiolm_jax.codec.model import bitrate_bps, frame_rate
from audiolm_jax.config_check import ConfigError, check_codec_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEC_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "codec", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CODEC_CONFIGS, ids=os.path.basename)
def test_codec_config_validates_and_builds(path):
    from audiolm_jax.codec.task import CodecTask

    config = load(path)
    check_codec_config(config)
    for key in ("train.num_steps", "train.batch_size", "train.seed", "train.checkpoint_every",
                "quantizer.num_levels", "quantizer.codebook_size", "data.source", "mesh.data",
                "mesh.fsdp", "mesh.tensor"):
        section, name = key.split(".")
        assert name in config[section], key
    state = jax.eval_shape(CodecTask(config).init_state, jax.random.PRNGKey(0))
    assert jax.tree.leaves(state.params)


def test_article_and_soundstream_rates():
    article = load(os.path.join(REPO, "configs", "codec", "article_cnn.py"))
    assert frame_rate(article) == 125.0  # 16 kHz / 128
    assert bitrate_bps(article) == 125 * 8 * 10
    ss = load(os.path.join(REPO, "configs", "codec", "soundstream.py"))
    assert frame_rate(ss) == 75.0  # 24 kHz / 320
    assert ss.adversarial.enabled and ss.loss.balancer and ss.quantizer.dropout


@pytest.mark.parametrize("key,value,needle", [
    ("train.num_steps", 0, "train.num_steps"),
    ("train.batch_size", -4, "train.batch_size"),
    ("quantizer.dead_code_mode", "sometimes", "quantizer.dead_code_mode"),
    ("quantizer.decay", 1.5, "quantizer.decay"),
    ("optim.learning_rate", 0.0, "optim.learning_rate"),
    ("mesh.data", 0, "mesh.data"),
    ("data.crop_length", 64, "data.crop_length"),
])
def test_bad_values_are_refused_with_the_key(key, value, needle):
    config = load(os.path.join(REPO, "configs", "codec", "tiny_cnn.py"))
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        check_codec_config(config)


def test_mesh_that_does_not_fit_the_devices_is_refused():
    config = load(os.path.join(REPO, "configs", "codec", "tiny_cnn.py"))
    config.mesh.update(data=3, fsdp=1, tensor=1)
    with pytest.raises(ConfigError, match="mesh"):
        check_codec_config(config, num_devices=8)
    config.mesh.update(data=-1)
    config.train.batch_size = 12
    with pytest.raises(ConfigError, match="train.batch_size"):
        check_codec_config(config, num_devices=8)


def test_vqvae_config_loads():
    config = load(os.path.join(REPO, "configs", "vqvae_fashion_mnist.py"))
    assert config.task == "vqvae" and config.model.latent_dim == 2
