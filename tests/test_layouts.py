"""Token layouts as registered objects: the registry, the protocol every registered layout
keeps, and the extension path -- a layout registered in this file trains an LMTask step and
samples through ``generate`` with no other file touched."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from audiolm_jax.config_check import check_lm_config
from audiolm_jax.errors import ConfigError
from audiolm_jax.lm import patterns
from audiolm_jax.lm.patterns import (PATTERN_NAMES, DelayPattern, Layout, ParallelPattern,
                                     get_layout, layout_names, make_pattern, register_layout)
from audiolm_jax.lm.run import sample_frames
from audiolm_jax.lm.sampling import delay_special_mask, generate_cache_size
from audiolm_jax.lm.task import LMTask
from test_lm_task import tiny_config

BUILTIN = ("flat", "parallel", "delay", "depth")
V = 16


# ----------------------------------------------------------------------------- registry


def test_registry_lists_the_layouts():
    assert layout_names()[:4] == BUILTIN
    assert tuple(PATTERN_NAMES) == layout_names() and len(PATTERN_NAMES) == len(layout_names())
    assert "depth" in PATTERN_NAMES and set(PATTERN_NAMES) >= set(BUILTIN)
    for name in BUILTIN:
        assert issubclass(get_layout(name), Layout)
        assert isinstance(make_pattern(name, 3, V), get_layout(name))
    assert get_layout("delay") is DelayPattern


def test_unknown_layout_is_refused_naming_the_known_ones(tmp_path):
    known = r"\('flat', 'parallel', 'delay', 'depth'"
    with pytest.raises(ValueError, match=r"unknown pattern 'zigzag'; expected one of " + known):
        make_pattern("zigzag", 4, V)
    config = tiny_config()
    config.model.layout = "zigzag"
    config.data.tokens = str(tmp_path)
    with pytest.raises(ConfigError, match=r"'model\.layout' must be one of \[.*'delay', 'depth', "
                                          r"'flat', 'parallel'.*got 'zigzag'"):
        check_lm_config(config)
    with pytest.raises(ValueError, match=r"unknown pattern 'zigzag'; expected one of " + known):
        LMTask(config)
    with pytest.raises(ValueError, match="already registered"):
        register_layout("flat", ParallelPattern)
    with pytest.raises(TypeError, match="not a Layout"):
        register_layout("object", object)
    register_layout("flat", get_layout("flat"))  # the same class again is a no-op


# ----------------------------------------------------------------------------- protocol


def check_protocol(p, x):
    """What the task, the token writer and the samplers rely on, for layout ``p`` and codes
    ``x`` [B, (S,) K, T]."""
    T = x.shape[-1]
    seq = np.asarray(p.build(x))
    L = p.seq_len(T)
    assert seq.shape[1:] == tuple(p.seq_shape(T)) and seq.shape[-1] == L, p
    np.testing.assert_array_equal(p.revert(seq), x, err_msg=repr(p))
    # The model reads one row per step (flat) or model_levels rows.
    assert (seq.ndim == 2) if p.model_levels == 1 else (seq.shape[1] == p.model_levels), p
    valid = np.asarray(p.valid_mask(T))
    assert valid.shape == tuple(p.seq_shape(T))
    # The forcing mask marks exactly the slots valid_mask calls empty, with the id build puts
    # there; the sampling wrapper is the same mask.
    forced, mask = p.special_mask(L)
    np.testing.assert_array_equal(mask, ~valid, err_msg=repr(p))
    np.testing.assert_array_equal(seq[:, mask], np.broadcast_to(forced, seq.shape)[:, mask])
    if isinstance(p, DelayPattern):
        np.testing.assert_array_equal(delay_special_mask(p, L)[1], mask)
    head = p.special_mask(L, include_tail=False)[1]
    assert not (head & valid).any()  # the head slots are special ones
    # Step arithmetic: frames <-> steps.
    assert p.frames_to_fill(L) == T and p.frames_that_fit(L) == T
    for n in range(max(p.max_delay, 1), L + 3):
        fit, fill = p.frames_that_fit(n), p.frames_to_fill(n)
        assert p.seq_len(fit) <= n < p.seq_len(fit + 1) and p.seq_len(fill) >= n
    # The prompt steps of P frames are fixed by those frames alone.
    for P in range(1, T):
        other = x.copy()
        other[..., P:] = (other[..., P:] + 1) % V
        steps = p.prompt_steps(P)
        assert 0 < steps <= L
        np.testing.assert_array_equal(np.asarray(p.build(other))[..., :steps], seq[..., :steps])
    # Loss weights: ones on real slots, 0 on special ones; level sums cover every slot.
    np.testing.assert_array_equal(p.position_weights(None, L), valid.astype(np.float32))
    sums = np.asarray(p.level_sums(np.ones(seq.shape, np.float32)))
    assert sums.shape == (p.total_levels,) and sums.sum() == seq.size
    assert p.sample_vocab_size <= p.embed_vocab_size
    assert int(seq.max()) < p.embed_vocab_size


KWARGS = {"flat": [{}, {"level_offsets": True}], "delay": [{}, {"delays": (2, 0, 1)}],
          "depth": [{}, {"acoustic_delay": 2, "num_semantic": 0}]}


@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("name", layout_names())
def test_every_registered_layout_keeps_the_protocol(name, streams):
    rng = np.random.default_rng(streams)
    for kw in KWARGS.get(name, [{}]):
        p = make_pattern(name, 3, V, num_streams=streams, **kw)
        for T in (1, 4):
            shape = (2, 3, T) if streams == 1 else (2, streams, 3, T)
            check_protocol(p, rng.integers(0, V, shape).astype(np.int32))


# ----------------------------------------------------------------------------- extension


@dataclasses.dataclass(frozen=True)
class ReversedParallel(ParallelPattern):
    """The parallel layout with its rows in reverse level order (row r holds level K-1-r)."""

    def build(self, codes):
        return super().build(codes)[:, ::-1]

    def revert(self, seq):
        return super().revert(seq)[:, ::-1]

    def level_ids(self, seq_len=None):
        return super().level_ids(seq_len)[::-1]

    def level_weights(self, weights=None, seq_len=None):
        return super().level_weights(weights, seq_len)[::-1]

    def level_sums(self, values, first_step=0):
        return super().level_sums(values, first_step)[::-1]

    def _for_streams(self, num_streams):
        return ReversedParallel(self.num_levels * num_streams, self.vocab_size)


@dataclasses.dataclass(frozen=True)
class StairDelay(DelayPattern):
    """A delay layout whose level q is late by 2q steps unless ``model.delays`` says more."""

    def __post_init__(self):
        if self.delays is None:
            object.__setattr__(self, "delays", tuple(2 * q for q in range(self.num_levels)))
        super().__post_init__()


@pytest.fixture
def registry(monkeypatch):
    """The toy layouts registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(patterns, "_LAYOUTS", dict(patterns._LAYOUTS))
    register_layout("reversed", ReversedParallel)
    register_layout("stair", StairDelay)


def _task(layout, tmp_path, **model):
    config = tiny_config(layout, weights=(3.0, 1.0, 0.5))
    config.model.update(**model)
    config.data.tokens = str(tmp_path)
    check_lm_config(config)  # the registered name is a valid config value
    task = LMTask(config)
    params = nn.meta.unbox(task.init_state(jax.random.PRNGKey(0)).params)
    return task, params


def _codes(task):
    return np.random.default_rng(0).integers(0, V, (8, 1, 3, task.frames_per_example))


def _flip_levels(params):
    """A multi-level Transformer's per-level tables in reverse level order."""
    return {k: (v[::-1] if k in ("wte", "lm_head") else v) for k, v in params.items()}


def test_a_registered_layout_trains_and_samples(registry, tmp_path):
    assert layout_names()[-2:] == ("reversed", "stair") and "reversed" in PATTERN_NAMES
    rng = np.random.default_rng(0)
    for streams in (1, 2):
        check_protocol(make_pattern("reversed", 3, V, num_streams=streams),
                       rng.integers(0, V, (2, 3, 5) if streams == 1 else (2, 2, 3, 5)))
    task, params = _task("reversed", tmp_path)
    ref, _ = _task("parallel", tmp_path)
    codes = _codes(task)
    batch = task.prepare_batch({"codes": codes})
    np.testing.assert_array_equal(batch["inputs"], codes[:, 0, ::-1, :task.context])
    np.testing.assert_allclose(batch["weights"][0, :, 0], [0.5, 1.0, 3.0])
    # Reversed rows with reversed level tables are the parallel layout's model: same losses,
    # per level too (the layout reports them in level order).
    got = jax.jit(task.eval_step)(params, batch)
    want = jax.jit(ref.eval_step)(_flip_levels(params), ref.prepare_batch({"codes": codes}))
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["level_losses"], want["level_losses"], rtol=1e-5)
    # One training step of the shared task.
    state = jax.jit(lambda r: nn.meta.unbox(task.init_state(r)))(jax.random.PRNGKey(0))
    state, metrics = jax.jit(task.train_step)(state, batch)
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
    # Sampling (greedy, past the context: a sliding window) goes through generate and gives
    # the parallel layout's frames.
    peaked = jax.tree.map(lambda x: x * 3.0, params)
    prompt = rng.integers(0, V, (1, 3, 5)).astype(np.int32)
    before = generate_cache_size()
    out = sample_frames(task, peaked, prompt, 30, jax.random.PRNGKey(1), temperature=0.0)
    assert generate_cache_size() > before
    assert out.shape == (1, 3, 35) and out.min() >= 0 and out.max() < V
    np.testing.assert_array_equal(out[..., :5], prompt)
    np.testing.assert_array_equal(out, sample_frames(ref, _flip_levels(peaked), prompt, 30,
                                                     jax.random.PRNGKey(1), temperature=0.0))


def test_a_registered_delay_subclass_trains_and_samples(registry, tmp_path):
    task, params = _task("stair", tmp_path)
    assert task.pattern.delays == (0, 2, 4) and task.frames_per_example == task.context + 1 - 4
    # The delay layout with the same delays from the config: the same model, batches, losses
    # and samples.
    ref, ref_params = _task("delay", tmp_path, delays=(0, 2, 4))
    batch, ref_batch = (t.prepare_batch({"codes": _codes(task)}) for t in (task, ref))
    for key in batch:
        np.testing.assert_array_equal(batch[key], ref_batch[key])
    state = jax.jit(lambda r: nn.meta.unbox(task.init_state(r)))(jax.random.PRNGKey(0))
    _, metrics = jax.jit(task.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    prompt = np.random.default_rng(2).integers(0, V, (1, 3, 4)).astype(np.int32)
    kw = dict(temperature=1.0, top_k=4)
    out = sample_frames(task, params, prompt, 12, jax.random.PRNGKey(3), **kw)
    assert out.shape == (1, 3, 16) and out.min() >= 0 and out.max() < V
    np.testing.assert_array_equal(out[..., :4], prompt)
    np.testing.assert_array_equal(
        out, sample_frames(ref, ref_params, prompt, 12, jax.random.PRNGKey(3), **kw))
    # config keys still reach a registered subclass: model.delays overrides its default
    other, _ = _task("stair", tmp_path, delays=(1, 0, 3))
    assert other.pattern.delays == (1, 0, 3)
