"""Fused attention kernels against the 'xla' reference: 'dot_product', and 'splash' (the
Pallas TPU kernel, run here in interpret mode on the CPU, picked by platform in a model, and
compiled for a v5p-8 topology when libtpu is installed)."""

import os

# Before any TPU topology call: no libtpu host-detection noise, no /tmp/tpu_logs files, and
# no failure when another process holds libtpu's lockfile.
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
os.environ["TPU_LOG_DIR"] = "disabled"
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from audiolm_jax.layers import attention, tpu_attention  # noqa: E402
from audiolm_jax.lm.transformer import LMConfig, Transformer  # noqa: E402
from audiolm_jax.train.mesh import LOGICAL_AXIS_RULES, tree_shardings  # noqa: E402
from helpers import fast_params  # noqa: E402


def _qkv(B=1, T=256, H=2, D=32, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((B, T, H, D)), dtype) for _ in range(3))


def _out_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradients of sum(sin(out)) wrt q, k, v, in one compile."""
    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(jnp.cos(out))
    return jax.jit(run)(q, k, v)


def _assert_close(got, want, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   atol=atol, rtol=0)


@pytest.mark.parametrize("window", [0, 64])
def test_splash_interpret_matches_xla(window):
    # block 128 < T: several blocks, some fully masked (skipped), some on the diagonal.
    q, k, v = _qkv()
    splash = lambda q, k, v: tpu_attention.splash_attention(q, k, v, window=window, block=128,
                                                            interpret=True)
    xla = lambda q, k, v: attention.causal_attention(q, k, v, window=window, kind="xla")
    _assert_close(_out_and_grads(splash, q, k, v), _out_and_grads(xla, q, k, v), atol=2e-5)


def test_splash_pads_a_length_off_the_block():
    q, k, v = _qkv(T=200, seed=1)  # blocks of 128 -> padded to 256
    assert tpu_attention.block_and_length(200, 128) == (128, 256)
    assert tpu_attention.block_and_length(200) == (256, 256)
    assert tpu_attention.block_and_length(4096) == (512, 4096)
    got = tpu_attention.splash_attention(q, k, v, window=50, block=128, interpret=True)
    _assert_close(got, attention.causal_attention(q, k, v, window=50, kind="xla"), atol=2e-5)


def test_attention_flops_counts_visible_pairs():
    assert tpu_attention.attention_flops(1, 4, 1, 1) == 4 * (1 + 2 + 3 + 4)
    assert tpu_attention.attention_flops(1, 4, 1, 1, window=2) == 4 * (1 + 2 + 2 + 2)
    assert tpu_attention.attention_flops(2, 4, 3, 5, training=True) == 3 * 2 * 3 * 5 * 40


@pytest.mark.parametrize("window", [0, 5])
def test_dot_product_matches_xla(window):
    q, k, v = _qkv(B=2, T=37, H=3, D=8)
    run = lambda kind: _out_and_grads(
        lambda q, k, v: attention.causal_attention(q, k, v, window=window, kind=kind), q, k, v)
    _assert_close(run("dot_product"), run("xla"), atol=2e-5)
    qb, kb, vb = (a.astype(jnp.bfloat16) for a in (q, k, v))
    got = attention.causal_attention(qb, kb, vb, window=window, kind="dot_product")
    assert got.dtype == jnp.bfloat16
    _assert_close(got, attention.causal_attention(q, k, v, window=window, kind="xla"),
                  atol=3e-2)


def test_fused_kinds_refuse_probability_dropout():
    q, k, v = _qkv(T=8, D=4)
    for kind in attention.FUSED:
        with pytest.raises(ValueError, match="no attention-probability dropout"):
            attention.causal_attention(q, k, v, kind=kind, probs_fn=lambda p: p)


def _lm(kind, T=64, **kw):
    cfg = LMConfig(num_layers=2, num_heads=2, width=64, vocab_size=128, context=T,
                   attention=kind, **kw)
    return Transformer(cfg)


def _tokens(B, T):
    return jnp.asarray(np.random.default_rng(0).integers(0, 128, (B, T)), jnp.int32)


def test_splash_model_runs_the_reference_off_tpu():
    """attention='splash' on the CPU: platform_dependent picks the exact reference."""
    tokens = _tokens(2, 64)
    params = fast_params(_lm("xla"), tokens)  # no init compile: the box is slow
    logits = {kind: jax.jit(_lm(kind, window=16).apply)(params, tokens)
              for kind in ("xla", "splash")}
    _assert_close(logits["splash"], logits["xla"], atol=1e-5)


def test_splash_model_grads_under_scan_remat_and_a_cpu_mesh():
    """platform_dependent under jax.grad, nn.remat and nn.scan, with the TPU branch's
    shard_map traced against a (CPU) mesh and the logical rules."""
    B, T = 4, 32
    tokens = _tokens(B, T)
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
    grads = {}
    for kind in ("xla", "splash"):
        model = _lm(kind, T=T, window=8, scan_layers=True, remat="full")
        params = fast_params(model, tokens)

        def loss(p):
            return jnp.mean(jax.nn.log_softmax(model.apply(p, tokens))[..., 0])

        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            grads[kind] = jax.jit(jax.grad(loss))(params)
    _assert_close(grads["splash"], grads["xla"], atol=1e-6)


def _v5p8_devices():
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(
            platform="tpu", topology_name="v5:2x2x1", chip_config_name="megacore",
            chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False, False, False)).devices
    except RuntimeError as e:  # "JAX TPU support not installed; cannot generate TPU topology."
        if "not installed" not in str(e):
            raise
        pytest.skip(f"libtpu is not installed: {e}")


def _compile_grad_for_tpu(mesh, kind, B, T):
    """The optimized HLO of jit(grad(loss)) of the tiny LM for the TPU mesh."""
    model = _lm(kind, T=T, window=64, scan_layers=True, remat="full")
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((B, T), jnp.int32))
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    plain = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed,
                         is_leaf=is_box)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          plain, tree_shardings(mesh, boxed))
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32,
                                  sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))

    def loss(p, tokens):
        return jnp.mean(jax.nn.log_softmax(model.apply(p, tokens))[..., 0])

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        return jax.jit(jax.grad(loss)).lower(params, tokens).compile().as_text()


# The persistent compilation cache (conftest) writes the TPU programs but cannot read them
# back through the compile-only TPU client: a harmless warning.
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache")
def test_splash_compiles_to_the_kernel_for_a_tpu_mesh():
    devices = _v5p8_devices()
    mesh = Mesh(np.array(devices).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
    B, T = 4, 256
    hlo = _compile_grad_for_tpu(mesh, "splash", B, T)
    kernels = [line for line in hlo.splitlines() if "tpu_custom_call" in line
               and "custom-call(" in line]
    assert kernels, "no Mosaic kernel in the TPU program"
    # Per device: half the batch (data=2) and one of the two heads (tensor=2), [B, H, T, D].
    assert any(f"f32[{B // 2},1,{T},32]" in line for line in kernels), kernels[0][:300]
    assert "tpu_custom_call" not in _compile_grad_for_tpu(mesh, "dot_product", B, T)
