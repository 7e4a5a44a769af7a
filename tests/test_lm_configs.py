"""Every LM experiment config: the full size validates and builds (shapes only), and its
``:tiny`` variant takes a real training step on a CPU."""

import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from audiolm_jax.lm.task import LMTask
from audiolm_jax.lm.transformer import count_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "lm", "*.py")))
# configs/lm/moshi.py is a Moshi (task 'moshi', audiolm_jax/moshi): checked at the end.
NAMES = [os.path.basename(p)[:-3] for p in LM_CONFIGS if not p.endswith("moshi.py")]


def load(name, variant=""):
    path = os.path.join(REPO, "configs", "lm", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def with_token_shape(config):
    """What fill_tokens_config does with a token directory: levels default to what it has."""
    if not config.tokens.num_levels:
        config.tokens.num_levels = 4
        config.tokens.codebook_size = 64
    return config


def test_every_article_experiment_has_a_config():
    for name in ("mulaw_baseline", "article_codec_flat", "mimi_flat", "delay", "depth",
                 "duplex"):
        assert name in NAMES, name


@pytest.mark.parametrize("name", NAMES)
def test_full_size_config_validates_and_builds(name):
    from audiolm_jax.config_check import check_lm_config

    config = with_token_shape(load(name))
    config.data.tokens = REPO  # any existing folder: the check wants one
    check_lm_config(config, 8)
    task = LMTask(config)
    state = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
    n = count_params(state.params)
    if name == "mulaw_baseline":  # the article's 151.28M, which leaves out the position table
        assert n - config.model.context * config.model.width == 151_282_688
    assert n > (1e5 if name == "tiny_flat" else 1e6)
    for key in ("model.num_layers", "model.num_heads", "model.width", "model.context",
                "model.layout", "train.num_steps", "train.batch_size", "data.tokens",
                "mesh.data", "mesh.fsdp", "mesh.tensor"):
        section, leaf = key.split(".")
        assert leaf in config[section], key


def test_mimi_flat_variants():
    base, none = load("mimi_flat"), load("mimi_flat", "no_semantic,tiny")
    assert base.loss.level_weights[0] == 100.0 and not base.tokens.drop_semantic
    assert none.tokens.drop_semantic and not none.loss.level_weights
    assert none.model.width == 64 and none.tokens.num_levels == base.tokens.num_levels
    with pytest.raises(ValueError, match="variant"):
        load("delay", "huge")


# One per distinct model: flat over 1 level, flat over 8 levels of 9 (drop_semantic), delay,
# depth, and depth over two streams. (article_codec_flat and mimi_flat:tiny build the same
# model as mimi_flat:no_semantic,tiny; their shapes are checked above.)
@pytest.mark.parametrize("name,variant", [
    ("mulaw_baseline", "tiny"), ("mimi_flat", "no_semantic,tiny"), ("delay", "tiny"),
    ("depth", "tiny"), ("duplex", "tiny")])
def test_tiny_variant_trains_a_step_on_cpu(name, variant):
    config = with_token_shape(load(name, variant))
    config.train.batch_size = 2
    config.optim.warmup_steps = 1  # step 0 has learning rate 0; step 1 the peak
    task = LMTask(config)
    levels = task.num_levels + (1 if config.tokens.drop_semantic else 0)
    codes = np.random.default_rng(0).integers(
        0, int(config.tokens.codebook_size),
        (2, task.num_streams, levels, task.frames_per_example))
    batch = task.prepare_batch({"codes": codes})
    state = jax.jit(lambda r: __import__("flax").linen.meta.unbox(task.init_state(r)))(
        jax.random.PRNGKey(0))
    step = jax.jit(task.train_step)
    state, m1 = step(state, batch)
    state, _ = step(state, batch)
    state, m3 = step(state, batch)
    l1, l3 = float(m1["loss"]), float(m3["loss"])
    assert np.isfinite(l1) and l3 < l1  # real steps on a repeated batch lower its loss
    assert np.asarray(m1["loss/level"]).shape == (task.rows,)


def test_moshi_config_is_the_released_7b():
    """configs/lm/moshi.py validates and builds (shapes only) Kyutai's 7B: 7,687,729,152
    parameters (Kyutai's LMModel counted on the meta device, tests/test_moshi_model.py)."""
    from audiolm_jax.config_check import check_moshi_config
    from audiolm_jax.moshi.task import MoshiTask

    config = load("moshi")
    config.data.tokens = REPO
    check_moshi_config(config, 64)
    state = jax.eval_shape(MoshiTask(config).init_state, jax.random.PRNGKey(0))
    assert count_params(state.params) == 7_687_729_152
    assert config.loss.first_codebook_weight == 100.0 and config.loss.text_padding_weight == 0.5
    tiny = load("moshi", "tiny")
    assert tiny.model.card == 0 and tiny.model.dim == 64  # sizes from the token directory
