"""Streaming a two-stream depth LM one frame at a time (audiolm_jax/lm/depth_stream.py): greedy
frames equal the offline sampler's with the user's stream forced; slots are independent, and a
paused slot resumes exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.lm.depth_sampling import generate_depth
from audiolm_jax.lm.depth_stream import (DepthStream, StreamSampling, generate_stream,
                                         init_stream_state, slots_step)
from audiolm_jax.lm.task import LMTask
from test_depth import CODEBOOK, depth_config, random_params


@pytest.fixture(scope="module")
def duplex():
    task = LMTask(depth_config(streams=2))
    params = random_params(lambda k: task.init_state(k).params, std=0.3)
    return DepthStream.of_task(task), jax.tree.map(jnp.asarray, params)


def _offline(spec, params, user, silence):
    """The same conversation through generate_depth: column 0 given, then every step with
    the user's rows (and the delayed rows' special ids) forced; -> the model's frames."""
    K, D = spec.levels, spec.max_delay
    d = np.asarray(spec.delays)
    B, _, T = user.shape
    forced = np.zeros((B, 2 * K, T), np.int32)
    mask = np.zeros((B, 2 * K, T), bool)
    for t in range(T):
        for q in range(K):
            if t < d[q]:
                forced[:, q, t], mask[:, q, t] = spec.special, True
            elif t == 0:
                forced[:, q, t], mask[:, q, t] = silence[q], True
            f = t - d[K + q]
            forced[:, K + q, t] = user[:, q, f] if f >= 0 else spec.special
            mask[:, K + q, t] = True
    out = np.asarray(generate_depth(spec.model, params, forced[..., :1], T - 1,
                                    jax.random.PRNGKey(0), temperature=0.0, forced=forced,
                                    forced_mask=mask))
    return np.stack([out[:, q, d[q]:d[q] + T - D] for q in range(K)], axis=1)


def test_greedy_stream_equals_the_offline_sampler(duplex):
    spec, params = duplex
    assert spec.levels == 3 and spec.delays == (0, 1, 1, 0, 1, 1) and spec.special == CODEBOOK
    rng = np.random.default_rng(0)
    user = rng.integers(0, CODEBOOK, (2, 3, 9)).astype(np.int32)
    silence = rng.integers(0, CODEBOOK, 3).astype(np.int32)
    got = generate_stream(spec, params, user, silence, temperature=0.0)
    assert got.shape == (2, 3, 8) and got.max() < CODEBOOK
    np.testing.assert_array_equal(got, _offline(spec, params, user, silence))
    with pytest.raises(ValueError, match="context"):
        generate_stream(spec, params, np.zeros((1, 3, spec.context + 1), np.int32), silence)


def test_only_two_stream_depth_lms_stream():
    with pytest.raises(ValueError, match="two-stream depth-layout LM"):
        DepthStream.of_task(LMTask(depth_config(streams=1)))


def test_slots_are_independent_and_a_paused_slot_resumes(duplex):
    """Two slots, sampled: slot 0 gives the same frames whether slot 1 talks or not, and
    pausing slot 1 for two steps only delays its frames."""
    spec, params = duplex
    S, T = 2, 7
    rng = np.random.default_rng(1)
    user = rng.integers(0, CODEBOOK, (S, 3, T)).astype(np.int32)
    silence = jnp.asarray(rng.integers(0, CODEBOOK, 3), jnp.int32)
    sampling = StreamSampling(jnp.float32([1.0, 1.0]), jnp.int32([0, 5]))
    step = jax.jit(functools.partial(slots_step, spec))
    fresh = lambda: jax.tree.map(lambda *x: jnp.stack(x), *(init_stream_state(spec, 1, seed)
                                                            for seed in (3, 4)))

    def run(schedule):  # schedule[i] = which slots step at tick i -> each slot's valid frames
        states, frames, t = fresh(), [[], []], [0, 0]
        for active in schedule:
            codes = np.stack([user[s, :, min(t[s], T - 1)] for s in range(S)])
            states, out, valid = step(params, states, codes, silence, sampling,
                                      jnp.asarray(active))
            for s in range(S):
                if active[s]:
                    t[s] += 1
                if valid[s]:
                    frames[s].append(np.asarray(out[s]))
        return [np.stack(f) if f else np.zeros((0, 3), np.int32) for f in frames]

    both = run([[True, True]] * T)
    alone = run([[True, False]] * T)
    paused = run([[True, True]] * 3 + [[True, False]] * 2 + [[False, True]] * (T - 3))
    assert both[0].shape == both[1].shape == (T - 1, 3) and len(alone[1]) == 0
    np.testing.assert_array_equal(alone[0], both[0])
    np.testing.assert_array_equal(paused[0], both[0][:len(paused[0])])
    np.testing.assert_array_equal(paused[1], both[1])
    assert (both[0] != both[1]).any()  # other seeds, other frames
