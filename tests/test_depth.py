"""Moshi's depth transformer (layout 'depth'): frame decoding vs the teacher-forced forward pass,
sharded == unsharded, per-level weights, sampling with forcing, training on the shared loop."""

import functools
import glob
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiolm_jax.lm.depth import (
    DepthTransformerLM, depth_num_params, init_depth_params, make_depth_lm_config)
from audiolm_jax.lm.depth_sampling import generate_depth
from audiolm_jax.lm.task import LMState, LMTask
from audiolm_jax.lm.transformer import LMConfig, count_params
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.loop import abstract_state, compile_step, train_loop
from test_lm_task import numpy_cross_entropy, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEBOOK = 16  # tiny_config's codebook; the depth layout's special id is 16


def depth_config(streams=2, weights=()):
    """tiny_config of test_lm_task with the depth layout: 3 levels x ``streams`` streams."""
    c = tiny_config("depth", weights)
    c.tokens.num_streams = streams
    c.model.num_layers = 1  # (compile time: the sharded and loop tests compile 5 steps)
    c.depth.update(num_layers=1, num_heads=4, width=32)
    return c


def stream_codes(task, batch=8, seed=0):
    """Random codes [B, S, K, frames] for a task."""
    rng = np.random.default_rng(seed)
    shape = (batch, task.num_streams, task.num_levels, task.frames_per_example)
    return rng.integers(0, CODEBOOK, shape)


def random_params(init_fn, std=0.1, seed=0):
    """Random numpy params with the shapes ``init_fn(rng)`` gives (LayerNorm scales 1), without
    compiling the init: XLA:CPU compiles a PRNG-heavy init slowly (~10 s for these models)."""
    shapes = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if getattr(path[-1], "key", "") == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        return (rng.standard_normal(leaf.shape) * std).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def small_model(levels=3, std=0.1, **kw):
    temporal = LMConfig(vocab_size=32, num_layers=1, num_heads=4, width=32, context=12,
                                 num_levels=levels, **kw)
    cfg = make_depth_lm_config(temporal, num_layers=2, num_heads=2, width=16,
                               codebook_size=CODEBOOK)
    model = DepthTransformerLM(cfg)
    return model, random_params(functools.partial(init_depth_params, model), std)


# ----------------------------------------------------------------------------- decoding


@functools.partial(jax.jit, static_argnums=(0, 3))
def _full_and_framewise(model, params, seqs, prompt_len):
    """Teacher-forced logits [N, R, T, V] of every sequence in ``seqs`` and, for seqs[:B], the
    same logits from prefill + frame decoding (depth KV cache), plus the prompt frames' logits
    with the depth stack recomputed at each level."""
    inputs, targets = seqs[..., :-1], seqs[..., 1:]
    full = model.apply({"params": params}, inputs, targets)
    apply = functools.partial(model.apply, {"params": params})
    B = seqs.shape[0] // 2
    inputs, targets = inputs[:B], targets[:B]
    R, T = inputs.shape[1:]

    def frame(h, truth, kv_cache=True):  # h [N, W], tokens [N, R] forced level by level
        return apply(h, lambda k, _: truth[:, k], kv_cache,
                     method=DepthTransformerLM.decode_frame)[1]  # [N, R, V]

    # prefill: the prompt's steps at once; their frames decoded as one batch of B * P
    cache = model.init_cache(B, T)
    hidden, cache = apply(inputs[..., :prompt_len], cache, 0,
                          method=DepthTransformerLM.temporal_decode)
    hidden = hidden.reshape(B * prompt_len, -1)
    truth = jnp.swapaxes(targets[..., :prompt_len], 1, 2).reshape(B * prompt_len, R)
    first = frame(hidden, truth).reshape(B, prompt_len, R, -1)
    recomputed = frame(hidden, truth, False).reshape(B, prompt_len, R, -1)

    def step(cache, t):  # feed input step t, then decode the frame it predicts
        tok = jax.lax.dynamic_slice_in_dim(inputs, t, 1, axis=2)
        h, cache = apply(tok, cache, t, method=DepthTransformerLM.temporal_decode)
        return cache, frame(h[:, 0], targets[:, :, t])

    _, rest = jax.lax.scan(step, cache, jnp.arange(prompt_len, T))  # [T - P, B, R, V]
    framewise = jnp.concatenate([first, jnp.swapaxes(rest, 0, 1)], axis=1)  # [B, T, R, V]
    return full, jnp.swapaxes(framewise, 1, 2), jnp.swapaxes(recomputed, 1, 2)


def test_frame_decoding_matches_teacher_forced_forward():
    # Frame decoding only ever sees past steps and lower levels, so equality also shows the
    # teacher-forced pass is causal over steps and over levels.
    model, params = small_model(levels=3)
    seq = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (2, 3, 12), 0, CODEBOOK + 1))
    other = seq.copy()  # another level-0 token at target step 5
    other[:, 0, 6] = (seq[:, 0, 6] + 1) % CODEBOOK
    logits, framewise, recomputed = _full_and_framewise(
        model, params, np.concatenate([seq, other]), 3)
    full, other = logits[:2], logits[2:]
    assert full.shape == (2, 3, 11, 32) and full.dtype == jnp.float32
    np.testing.assert_allclose(framewise, full, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(recomputed, full[:, :, :3], atol=1e-5, rtol=1e-5)
    # the depth half matters: the upper levels of that step see the change; level 0 of that
    # step and every earlier step do not
    assert np.abs(other[:, 1:, 5] - full[:, 1:, 5]).max() > 1e-4
    np.testing.assert_allclose(other[:, 0, :6], full[:, 0, :6], atol=1e-6)
    np.testing.assert_allclose(other[:, :, :5], full[:, :, :5], atol=1e-6)


def test_bf16_compute_close_to_float32():
    # (dropout and remat go through the Transformer's Block, tested in test_transformer.py;
    # a dropout step here would compile threefry per dropout site, ~10 s on XLA:CPU)
    model, params = small_model()
    bf16, _ = small_model(dtype=jnp.bfloat16, remat=True)
    seq = jax.random.randint(jax.random.PRNGKey(1), (2, 3, 12), 0, CODEBOOK + 1)
    forward = jax.jit(lambda m, p: m.apply({"params": p}, seq[..., :-1], seq[..., 1:]),
                      static_argnums=0)
    ref, low = forward(model, params), forward(bf16, params)
    assert low.dtype == jnp.float32 and np.all(np.isfinite(low))
    assert np.linalg.norm(low - ref) / np.linalg.norm(ref) < 3e-2


def _config_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_param_count_and_depth_configs_build():
    model, params = small_model(levels=4)
    assert count_params(params) == depth_num_params(model.config)
    built = 0
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "lm", "*.py"))):
        module = _config_module(path)
        config = module.get_config()
        if config.get("task") != "lm" or config.model.layout != "depth":
            continue  # (configs/lm/moshi.py is a Moshi: tests/test_lm_configs.py)
        task = LMTask(config)  # full size: shapes only
        n = count_params(jax.eval_shape(task.init_state, jax.random.PRNGKey(0)).params)
        assert n == depth_num_params(task.model.config)
        print(f"{os.path.basename(path)}: {n:,} parameters")
        tiny = LMTask(module.get_config("tiny"))
        assert tiny.model.config.depth.width == 64
        assert tiny.model_config.num_levels == task.model_config.num_levels  # streams x levels
        built += 1
    assert built >= 1  # configs/lm/depth.py at least


# ----------------------------------------------------------------------------- loss weights


def test_level_weights_change_the_loss_as_specified():
    weights = (100.0, 1.0, 1.0)  # Moshi: semantic x100, the same for both streams
    task = LMTask(depth_config(streams=2, weights=weights))
    params = random_params(lambda r: task.init_state(r).params)
    codes = stream_codes(task)
    batch = task.prepare_batch({"codes": codes})
    eval_step = jax.jit(task.eval_step)  # the same program serves both weightings below
    m = eval_step(params, batch)
    loss = m["loss"]
    logits = jax.jit(task.model.apply)({"params": params}, batch["inputs"], batch["targets"])
    assert logits.shape == (8, 6, task.context, 128)  # 2 streams x 3 levels, padded vocab
    ce = numpy_cross_entropy(logits[..., : task.vocab_size], batch["targets"])
    # Row s*3 + q: level q of stream s; semantic (q = 0) at slot f, acoustic at slot f + 1.
    rows = np.arange(6)
    delay = np.where(rows % 3 == 0, 0, 1)[:, None]
    slot = np.arange(1, task.context + 1)[None, :]  # target j sits at slot j + 1
    valid = (slot - delay >= 0) & (slot - delay < task.frames_per_example)
    w = np.asarray(weights)[rows % 3][:, None] * valid
    np.testing.assert_allclose(float(loss), (ce * w).sum() / (8 * w.sum()), rtol=1e-5)
    # the weights decide: semantic rows dominate; equal weights give the plain mean
    equal_batch = LMTask(depth_config(streams=2)).prepare_batch({"codes": codes})
    equal = eval_step(params, equal_batch)["loss"]
    np.testing.assert_allclose(float(equal), (ce * valid).sum() / (8 * valid.sum()), rtol=1e-5)
    assert abs(float(loss) - float(equal)) > 1e-4
    # eval_step (eval-lm) reports the unweighted loss of each row
    per_row = (ce * valid).sum(axis=(0, 2)) / (8 * valid.sum(-1))
    np.testing.assert_allclose(m["level_losses"], per_row, rtol=1e-5)
    assert float(m["tokens"]) == 8 * valid.sum()


def test_wrong_number_of_level_weights_names_the_key():
    with pytest.raises(ValueError, match=r"loss\.level_weights"):
        LMTask(depth_config(weights=(100.0, 1.0)))


# ----------------------------------------------------------------------------- sharding


def train_config():
    """The two-stream depth LM that the sharding test steps and the training test trains (one
    config, so the training test's 8-device step comes from the compilation cache)."""
    config = depth_config(streams=2, weights=(100.0, 1.0, 1.0))
    config.optim.update(learning_rate=1e-2)
    config.train.update(num_steps=30, checkpoint_every=30)
    return config


@functools.lru_cache(maxsize=1)
def _sharding_setup():
    task = LMTask(train_config())
    batch = task.prepare_batch({"codes": stream_codes(task, seed=3)})
    params = random_params(lambda r: task.init_state(r).params, std=0.05)
    state = LMState(step=np.zeros((), np.int32), params=params,
                    opt_state=jax.device_get(task.optimizer.init(params)),
                    rng=np.asarray(jax.random.PRNGKey(1)))
    return task, batch, state, _one_step(task, batch, state, jax.devices()[:1], (1, 1, 1))


def _one_step(task, batch, host_state, devices, shape):
    """One train step of the loop's compiled step from ``host_state`` on a mesh."""
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(
        dict(data=shape[0], fsdp=shape[1], tensor=shape[2])), devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        _, shardings = abstract_state(task, mesh, jax.random.PRNGKey(0))
        state = jax.device_put(host_state, shardings)
        step = compile_step(task, shardings, mesh)
        state, metrics = step(state, mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh)))
        loss = float(metrics["loss"])  # block on the step (CPU collectives)
    if shape[2] > 1:  # the depth weights are split over the tensor axis too
        spec = state.params["depth_head"].sharding.spec
        assert "tensor" in jax.tree.leaves(tuple(spec)), spec
    return jax.device_get(state.params), loss


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)], ids=str)
def test_sharded_depth_step_equals_unsharded(shape):
    task, batch, state, (ref_params, ref_loss) = _sharding_setup()
    params, loss = _one_step(task, batch, state, jax.devices(), shape)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params, ref_params)


# ----------------------------------------------------------------------------- sampling


def _naive_greedy(model, params, prompt, num_new, forced, mask):
    """Greedy continuation with the teacher-forced forward pass, one (step, level) at a time:
    logits[:, k, t-1] predicts column t's level k from the columns before t and its lower
    levels (later columns are zero and cannot matter: causal)."""
    fwd = jax.jit(lambda p, s: model.apply({"params": p}, s[..., :-1], s[..., 1:]))
    B, R, P = prompt.shape
    seq = np.zeros((B, R, P + num_new), np.int32)
    seq[..., :P] = prompt
    seq = np.where(mask, forced, seq)
    for t in range(P, P + num_new):
        for k in range(R):
            logits = np.asarray(fwd(params, jnp.asarray(seq)))[:, k, t - 1]
            seq[:, k, t] = np.where(mask[:, k, t], forced[:, k, t],
                                    logits[:, :CODEBOOK].argmax(-1))
    return seq


def test_generate_depth_forcing_determinism_and_greedy_reference():
    model, params = small_model(levels=4, std=0.3)  # peaked logits: no greedy near-ties
    B, R, P, N = 2, 4, 3, 5
    prompt = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (B, R, P), 0, CODEBOOK))
    rng = np.random.default_rng(0)
    forced = rng.integers(0, CODEBOOK, (B, R, P + N)).astype(np.int32)
    mask = np.zeros((B, R, P + N), bool)
    mask[:, 0, :] = True  # e.g. --keep_semantic: level 0 throughout
    mask[1, 2:, P + 1] = True  # and a few upper levels of one frame
    forced[0, 0, P + 2] = CODEBOOK  # a special id may be forced, never sampled

    kw = dict(temperature=1.0, top_k=0, top_p=1.0, forced=forced, forced_mask=mask)
    a = np.asarray(generate_depth(model, params, prompt, N, jax.random.PRNGKey(7), **kw))
    b = np.asarray(generate_depth(model, params, prompt, N, jax.random.PRNGKey(7), **kw))
    c = np.asarray(generate_depth(model, params, prompt, N, jax.random.PRNGKey(8), **kw))
    assert a.shape == (B, R, P + N)
    np.testing.assert_array_equal(a, b)  # deterministic for a seed
    assert (a != c).any()  # and the seed matters
    np.testing.assert_array_equal(a[mask], forced[mask])
    np.testing.assert_array_equal(a[..., :P][~mask[..., :P]], prompt[~mask[..., :P]])
    assert a[~mask].max() < CODEBOOK  # the special id and padding are never sampled

    greedy = generate_depth(model, params, prompt, N, jax.random.PRNGKey(0),
                            temperature=0.0, forced=forced, forced_mask=mask)
    np.testing.assert_array_equal(greedy, _naive_greedy(model, params, prompt, N, forced, mask))
    # the temporal cache grown in two segments (3 then 2 frames) samples the same frames
    grown = generate_depth(model, params, prompt, N, jax.random.PRNGKey(7), cache_segments=2,
                           **kw)
    np.testing.assert_array_equal(grown, a)

    with pytest.raises(ValueError, match="context"):
        generate_depth(model, params, prompt, 10, jax.random.PRNGKey(0))


def test_generate_depth_batch_one_greedy_reference():
    """Batch 1: still the naive loop's greedy frames."""
    model, params = small_model(levels=4, std=0.3)
    prompt = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (1, 4, 3), 0, CODEBOOK))
    no_forcing = np.zeros((1, 4, 8), bool)
    greedy = generate_depth(model, params, prompt, 5, jax.random.PRNGKey(0), temperature=0.0)
    np.testing.assert_array_equal(
        greedy, _naive_greedy(model, params, prompt, 5, np.zeros_like(no_forcing, np.int32),
                              no_forcing))


# ----------------------------------------------------------------------------- training


class CountingStreams:
    """A learnable two-stream token stream: every level counts up mod 16 from a per-example
    start drawn from 2 values (each stream and level offset), with get/set_state."""

    def __init__(self, task):
        self.task, self.n = task, 0

    def __next__(self):
        rng = np.random.default_rng(self.n)
        self.n += 1
        t = self.task
        start = (rng.integers(0, 2, (8, 1, 1, 1)) * 5
                 + np.arange(t.num_streams)[:, None, None] * 7 + np.arange(t.num_levels)[:, None])
        return {"codes": (start + np.arange(t.frames_per_example)) % CODEBOOK}

    def get_state(self):
        return {"n": self.n}

    def set_state(self, s):
        self.n = s["n"]


def test_two_stream_depth_lm_trains_on_the_shared_loop(tmp_path):
    config = train_config()
    task = LMTask(config)
    _, history = train_loop(task, config, str(tmp_path), CountingStreams(task))
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.5 * first, (first, last)
    assert "loss/level/5" in history[-1]  # every row of both streams is reported
