"""Compile an experiment's step for a TPU slice and report what the compiler says of it.

``compile_experiment(config, 'v5p-8')`` builds the config's task exactly as training does
(same task, same logical-axis rules, same jitted step with its shardings and donation), over a
mesh of the slice's compile-only devices, lowers it with abstract arguments and runs the TPU
compiler on this machine. The report (one JSON-able dict) holds:

* memory per device: arguments + outputs - aliases + temporaries, against the chip's usable
  HBM (``fits``); a program the compiler refuses for lack of HBM is a result (``fits: false``
  with the sizes it needed), not an error;
* the compiler's FLOPs per device and its cost model's step time (``optimal_seconds``); the
  estimated step adds the time of Mosaic kernels (splash attention) at the chip's peak, since
  the cost model does not see inside them;
* where a chip's cost model gives no answer (v5e: negative ``optimal_seconds``), the estimate
  is the chip's roofline divided by the roofline/cost-model ratio of the same step compiled
  for a v5p slice of as many chips (``calibration``), not the bare roofline (an upper bound);
* model FLOPs per device in MaxText's convention (``calculate_tflops_training_per_device``):
  3 x (forward matmul FLOPs of every weight + the causal half of the attention scores), so
  MFU figures compare with MaxText's;
* collectives by kind (count, bytes per device) from the optimized HLO.

A scanned layer stack is one ``while`` loop, whose body XLA's cost analysis counts once: for
a scanned config the FLOPs and the step estimate come from unrolled compiles of the same
model with one and two layers, extrapolated linearly to the real depth
(``estimate_method``); memory and collectives come from the scanned program itself. The
microbatch loop of gradient accumulation is a loop too: its estimate comes from a copy of the
step with that loop unrolled.
"""

from __future__ import annotations

import re
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from audiolm_jax.aot import hlo
from audiolm_jax.aot.topology import Slice, parse_slice, slice_devices
from audiolm_jax.errors import ConfigError
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.loop import abstract_state, compile_step

GIB = 2.0 ** 30
WHATS = ("train", "decode")
_OOM = re.compile(r"(?:required|needs?)[^()]*\(([\d.]+)([KMGT])\)[^()]*available HBM \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
# The init rng as a shape only: a concrete key would be placed on the slice's devices, which
# this machine cannot hold arrays on.
_RNG = jax.ShapeDtypeStruct((2,), np.uint32)


# ----------------------------------------------------------------------------- the task

def _task(config: Any):
    """The training task of ``config``, built without data (the LM's token settings come from
    the config's ``tokens`` section)."""
    from audiolm_jax.config_check import check_codec_config, check_lm_model

    if config.get("task") == "lm":
        from audiolm_jax.lm.task import LMTask

        check_lm_model(config)
        if int(config.tokens.num_levels) < 1:
            raise ConfigError("config key 'tokens.num_levels' is 0 ('every level the token "
                              "directory has'): give the number of levels to compile for")
        return LMTask(config)
    if config.get("task") == "codec":
        from audiolm_jax.codec.task import CodecTask

        check_codec_config(config)
        return CodecTask(config)  # distillation reads precomputed features (_precomputed)
    if config.get("task") == "moshi":
        from audiolm_jax.moshi.task import MoshiTask

        sizes = [k for k in ("card", "text_card", "n_q", "dep_q") if not config.model.get(k)]
        if sizes:
            raise ConfigError(f"config keys {['model.' + k for k in sizes]} are 0 ('from the "
                              "token directory'): give the sizes to compile for")
        return MoshiTask(config)
    raise ConfigError("config key 'task' must be 'lm', 'codec' or 'moshi', got "
                      f"{config.get('task')!r}")


def _host_batch(task, config: Any) -> dict:
    """A batch of zeros of the shapes the task's step takes, as the data pipeline delivers
    them (then ``prepare_batch``, as in training)."""
    B = int(config.train.batch_size)
    if config.task == "lm":
        codes = np.zeros((B, task.num_streams, task.num_levels, task.frames_per_example),
                         np.int32)
        return task.prepare_batch({"codes": codes})
    if config.task == "moshi":
        m = task.model_config
        user = m.n_q - m.dep_q
        codes = np.zeros((B, 2 if user else 1, max(m.dep_q, user), int(config.data.frames)),
                         np.int32)
        return task.prepare_batch({"codes": codes,
                                   "text": np.zeros((B, codes.shape[-1]), np.int32)})
    audio = np.zeros((B, int(config.data.crop_length)), np.float32)
    if not task.distilling:
        return task.prepare_batch({"audio": audio})
    d = config.distill
    frames = int(round(audio.shape[1] / int(config.data.sample_rate) * float(d.feature_rate)))
    return {"audio": audio, "teacher": np.zeros((B, frames, int(d.teacher_dim)), np.float32)}


def _precomputed(config: Any) -> Any:
    """A distilling codec config reads its teacher's features from disk (the TPU recipe: the
    teacher never runs beside the step), so the compiled step takes them as an input."""
    if config.get("task") != "codec" or not config.get("distill", {}).get("enabled", False):
        return config
    c = ml_collections.ConfigDict(config.to_dict())
    c.distill.teacher = "precomputed"
    if not c.distill.feature_rate:
        raise ConfigError("config key 'distill.feature_rate' must be set (> 0) to compile the "
                          "distillation step (its features are an input of the step)")
    return c


def slice_mesh(config: Any, devices: list, num_slices: int):
    """The (data, fsdp, tensor) mesh of ``config.mesh`` over a slice's devices; with several
    slices the data axis spans them (the slow inter-slice network carries only the data-
    parallel gradient reduction)."""
    per_slice = len(devices) // num_slices
    try:
        shape = mesh_lib.resolve_mesh_shape(config.mesh.data, config.mesh.fsdp,
                                            config.mesh.tensor, per_slice)
    except ValueError as e:
        raise ConfigError(f"{e} (one slice of {per_slice} chips)") from None
    from jax.experimental import mesh_utils

    if num_slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(shape, (num_slices, 1, 1), devices)
    else:
        grid = mesh_utils.create_device_mesh(shape, devices)
    return jax.sharding.Mesh(grid, mesh_lib.MESH_AXES)


def _check_batch(config: Any, mesh) -> None:
    B, dp = int(config.train.batch_size), mesh_lib.data_parallel_size(mesh)
    if B % dp:
        raise ConfigError(f"config key 'train.batch_size' ({B}) must divide over the mesh's "
                          f"data axes (data x fsdp = {dp})")


# ----------------------------------------------------------------------------- model FLOPs

def _stack_flops(cfg, tokens: float, seq: int) -> float:
    """Training FLOPs of a transformer stack over ``tokens`` positions in sequences of
    ``seq``: 6 x tokens x matmul weights + 3 x the causal half of the score/value matmuls."""
    W, M, HD, L = cfg.width, cfg.mlp_width, cfg.num_heads * cfg.head_dim, cfg.num_layers
    gate = 2 if cfg.mlp == "silu_gated" else 1
    weights = L * (W * 3 * HD + HD * W + W * gate * M + M * W)
    span = min(seq, cfg.window) if cfg.window else seq
    return 6.0 * tokens * weights + 6.0 * tokens * span * HD * L


def model_flops_per_step(task, config: Any) -> tuple[float, str]:
    """(model FLOPs of one training step, what they count)."""
    from audiolm_jax.lm.depth import DepthLMConfig

    B = int(config.train.batch_size)
    if config.task == "moshi":
        m = task.model_config
        T = int(config.data.frames)
        frames = B * T
        flops = _stack_flops(m.temporal_config(), frames, T)
        flops += 6.0 * frames * m.dim * m.text_card  # text head
        if m.dep_q:
            flops += _stack_flops(m.depformer_config(), frames * m.dep_q, m.dep_q)
            flops += 6.0 * frames * m.dep_q * m.depformer_dim * (m.dim + m.card)
        return flops, ("temporal + depth transformers, text head, depformer in/out "
                       "projections (MaxText convention)")
    if config.task != "lm":
        return float("nan"), "none (codec: see flops_per_device)"
    whole = task.lm.model.config
    if isinstance(whole, DepthLMConfig):
        t, d, R = whole.temporal, whole.depth, whole.num_levels
        frames = B * task.context
        flops = (_stack_flops(t, frames, task.context) + _stack_flops(d, frames * R, R)
                 + 6.0 * frames * R * (t.width * d.width + d.width * d.vocab_size))
        return flops, "temporal + depth transformers (MaxText convention)"
    tokens = B * task.context
    head = whole.num_levels * whole.width * whole.vocab_size
    return (_stack_flops(whole, tokens, task.context) + 6.0 * tokens * head,
            "6 x matmul weights x tokens + causal attention (MaxText convention)")


# ----------------------------------------------------------------------------- compiling

def _compile(fn, args) -> tuple[Any, float, dict | None]:
    """(compiled or None, seconds, OOM sizes or None)."""
    start = time.time()
    lowered = fn.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        need = float(m[1]) * _UNITS[m[2]]
        have = float(m[3]) * _UNITS[m[4]]
        return None, time.time() - start, {"required_gib": need / GIB, "available_gib": have / GIB,
                                           "message": str(e).splitlines()[0][:300]}
    return compiled, time.time() - start, None


def _train_program(task, config: Any, mesh):
    abstract, shardings = abstract_state(task, mesh, _RNG)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=mesh_lib.batch_sharding(mesh, x.ndim)),
        _host_batch(task, config))
    return compile_step(task, shardings, mesh), (abstract, batch)


def _decode_program(task, config: Any, mesh):
    """One KV-cached decoding step of the LM (one token per sequence, or one frame of the
    temporal transformer for a depth LM) at ``train.batch_size`` sequences, the cache sized
    for the context."""
    from audiolm_jax.layers.transformer import CACHE_AXES
    from audiolm_jax.lm.transformer import Transformer

    if config.task == "moshi":
        return _moshi_decode_program(task, config, mesh)
    if config.task != "lm":
        raise ConfigError("--what=decode compiles a language model's decoding step; this "
                          "config trains a codec")
    model = task.lm.model
    net = model if isinstance(model, Transformer) else model.temporal
    abstract, shardings = abstract_state(task, mesh, _RNG)
    B = int(config.train.batch_size)
    cache = jax.eval_shape(lambda: net.init_cache(B, task.context))
    axes = CACHE_AXES if not net.config.scan_layers else ("layers",) + CACHE_AXES
    cache_sh = jax.tree.map(lambda _: nn.logical_to_mesh_sharding(
        nn.logical_to_mesh_axes(axes), mesh, mesh_lib.LOGICAL_AXIS_RULES), cache)
    rows = net.config.num_levels
    shape = (B, 1) if rows == 1 else (B, rows, 1)
    tokens = jax.ShapeDtypeStruct(shape, np.int32,
                                  sharding=mesh_lib.batch_sharding(mesh, len(shape)))
    cache = jax.tree.map(lambda c, s: jax.ShapeDtypeStruct(c.shape, c.dtype, sharding=s),
                         cache, cache_sh)
    index = jax.ShapeDtypeStruct((), np.int32, sharding=mesh_lib.replicated(mesh))
    method = Transformer.decode if net.config.output_head else Transformer.decode_features

    def step(params, tokens, cache, index):
        return net.apply({"params": params if net is model else params["temporal"]},
                         tokens, cache, index, method=method)

    fn = jax.jit(step, in_shardings=(shardings.params, tokens.sharding, cache_sh,
                                     index.sharding),
                 donate_argnums=(2,))
    # The weights as sampling holds them (model_kinds: matrices in the compute dtype).
    return fn, (task.lm.inference_params(abstract.params), tokens, cache, index)


def _moshi_decode_program(task, config: Any, mesh):
    """Moshi's generation step (``LMGen.step``: one frame of the temporal transformer with
    its ring KV cache of ``context`` frames, the text token and the depformer's ``dep_q``
    steps) for ``train.batch_size`` conversations, sampling as Kyutai's defaults."""
    import functools

    from audiolm_jax.layers.transformer import CACHE_AXES
    from audiolm_jax.moshi.generate import Sampling, init_state, step_fn
    from audiolm_jax.moshi.model import inference_params

    m = task.model_config
    abstract, shardings = abstract_state(task, mesh, _RNG)
    B = int(config.train.batch_size)
    state = jax.eval_shape(lambda: init_state(m, B))
    axes = CACHE_AXES if not m.scan_layers else ("layers",) + CACHE_AXES
    cache_sh = nn.logical_to_mesh_sharding(nn.logical_to_mesh_axes(axes), mesh,
                                           mesh_lib.LOGICAL_AXIS_RULES)
    state_sh = state._replace(
        kv=jax.tree.map(lambda _: cache_sh, state.kv),
        tokens=mesh_lib.batch_sharding(mesh, 3), offset=mesh_lib.replicated(mesh),
        key=mesh_lib.replicated(mesh))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         state, state_sh)
    user = jax.ShapeDtypeStruct((B, m.n_q - m.dep_q, 1), np.int32,
                                sharding=mesh_lib.batch_sharding(mesh, 3))
    fn = jax.jit(functools.partial(step_fn, m, Sampling()),
                 in_shardings=(shardings.params, state_sh, user.sharding), donate_argnums=(1,))
    # The weights as a generator holds them (moshi.model.inference_params: bf16 once).
    return fn, (inference_params(m, abstract.params), state, user)


def _costs(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0)),
            "optimal_seconds": float(ca.get("optimal_seconds", -1.0))}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    parts = {k: int(getattr(m, f"{k}_size_in_bytes", 0))
             for k in ("argument", "output", "alias", "temp", "generated_code")}
    total = parts["argument"] + parts["output"] - parts["alias"] + parts["temp"]
    return {"total": total, **parts}


def _roofline(costs: dict, tpu: Slice) -> float:
    return max(costs["flops"] / tpu.peak_flops, costs["bytes"] / tpu.hbm_bandwidth)


def _step_estimate(costs: dict, tpu: Slice, calibration: dict | None = None
                   ) -> tuple[float, str]:
    if costs["optimal_seconds"] > 0:
        return costs["optimal_seconds"], "TPU cost model (optimal_seconds)"
    roof = _roofline(costs, tpu)
    if calibration is not None:
        ratio = calibration["roofline_over_cost_model"]
        return roof / ratio, (
            f"roofline max(flops / peak, bytes / HBM bandwidth) divided by {ratio:.3f}, the "
            f"ratio of roofline to cost model of the same step on {calibration['topology']} "
            "(this chip's cost model gave none)")
    # No cost model for this chip and no reference: the roofline, an upper bound on speed.
    return roof, "roofline max(flops / peak, bytes / HBM bandwidth): the cost model gave none"


def _with_layers(config: Any, n: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.num_layers = n
    c.model.scan_layers = False
    return c


def _unrolled_costs(config: Any, mesh, what: str) -> dict:
    """The costs of ``config``'s step compiled with its microbatch loop unrolled."""
    task = _task(config)
    task.unroll_accumulation = True
    return _costs(_compile(*_program(task, config, mesh, what))[0])


def _program(task, config, mesh, what):
    return (_train_program if what == "train" else _decode_program)(task, config, mesh)


def compile_experiment(config: Any, topology: str, *, what: str = "train",
                       num_slices: int = 1) -> dict:
    """Compiles ``config``'s training (or LM decoding) step for ``num_slices`` slices of
    ``topology`` and returns the report (see the module docstring)."""
    if what not in WHATS:
        raise ConfigError(f"--what must be one of {WHATS}, got {what!r}")
    if int(num_slices) < 1:
        raise ConfigError(f"--num_slices must be >= 1, got {num_slices}")
    tpu = parse_slice(topology)
    config = _precomputed(config)
    task = _task(config)  # validates the config before anything compiles
    devices = slice_devices(tpu, num_slices)
    mesh = slice_mesh(config, devices, num_slices)
    _check_batch(config, mesh)
    rules = mesh_lib.LOGICAL_AXIS_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fn, args = _program(task, config, mesh, what)
        compiled, seconds, oom = _compile(fn, args)
        if compiled is not None:
            costs, estimate_method = _program_costs(config, mesh, what, task, compiled)
    calibration = None
    if compiled is not None and costs["optimal_seconds"] <= 0:
        calibration = _calibration(config, tpu, num_slices, what)
    report = _report(task, config, tpu, mesh, devices, what, num_slices, seconds,
                     compiled, oom)
    if compiled is not None:
        report.update(_figures(task, config, tpu, mesh, what, compiled, costs, calibration))
        report["estimate_method"] = estimate_method
        if calibration is not None:
            report["calibration"] = calibration
    return report


def _program_costs(config, mesh, what, task, compiled) -> tuple[dict, str]:
    """(FLOPs, bytes and cost-model seconds of the whole step, how they were obtained)."""
    scanned = bool(config.task in ("lm", "moshi") and config.model.get("scan_layers", False))
    accumulated = bool(what == "train" and getattr(task, "accumulation", 1) > 1)
    if scanned:  # the loop body counts once: extrapolate unrolled 1- and 2-layer copies
        c1, c2 = (_unrolled_costs(_with_layers(config, n), mesh, what) for n in (1, 2))
        L = int(config.model.num_layers)
        return ({k: c1[k] + (L - 1) * (c2[k] - c1[k]) for k in c1},
                "unrolled 1- and 2-layer compiles extrapolated linearly to "
                f"{L} layers (the scanned loop body counts once)")
    if accumulated:
        return (_unrolled_costs(config, mesh, what),
                "a copy with the microbatch loop unrolled (the loop body counts once)")
    return _costs(compiled), "compiled program"


# The chip whose cost model calibrates a roofline where a chip's own model gives no answer
# (v5e under libtpu 0.0.42 and 0.0.52: optimal_seconds < 0 for every program tried).
_REFERENCE_GENERATION = "v5p"


def _calibration(config, tpu: Slice, num_slices: int, what: str) -> dict | None:
    """The same step compiled for a v5p slice of as many chips: its cost model's estimate
    against its own roofline. The program per chip is the same (same mesh shape and per-chip
    batch), so the ratio says how far from its roofline this step runs on a TPU; the target
    chip's roofline divided by it is the estimate. None where no such slice or estimate exists."""
    cores = 2 if parse_slice(f"{_REFERENCE_GENERATION}-8").megacore else 1
    try:
        ref = parse_slice(f"{_REFERENCE_GENERATION}-{tpu.chips * cores}")
    except ConfigError:
        return None
    if ref.generation == tpu.generation:
        return None
    devices = slice_devices(ref, num_slices)
    mesh = slice_mesh(config, devices, num_slices)
    task = _task(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        compiled, _, _ = _compile(*_program(task, config, mesh, what))
        if compiled is None:
            return None
        costs, _ = _program_costs(config, mesh, what, task, compiled)
    if costs["optimal_seconds"] <= 0:
        return None
    roofline = _roofline(costs, ref)
    return {"topology": ref.name, "cost_model_seconds": costs["optimal_seconds"],
            "roofline_seconds": roofline,
            "roofline_over_cost_model": roofline / costs["optimal_seconds"]}


def _report(task, config, tpu, mesh, devices, what, num_slices, seconds, compiled, oom):
    n = len(devices)
    out = {
        "topology": tpu.name, "num_slices": int(num_slices), "num_devices": n,
        "device_kind": devices[0].device_kind, "what": what,
        "program": ("train step (generator and discriminator updates)"
                    if config.task == "codec" and task.adversarial else
                    "train step" if what == "train" else
                    "one-frame generation step (temporal + depformer)" if config.task == "moshi"
                    else "one-token decode step"),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "global_batch": int(config.train.batch_size),
        "batch_per_device": int(config.train.batch_size) / mesh_lib.data_parallel_size(mesh),
        "hbm_gib_per_device": round(tpu.hbm_bytes / GIB, 2),
        "peak_bf16_flops_per_device": tpu.peak_flops,
        "compile_seconds": round(seconds, 2),
    }
    if compiled is None:
        out.update(fits=False, memory_gib_per_device=oom["required_gib"],
                   hbm_gib_per_device=oom["available_gib"], compiler_message=oom["message"])
    return out


def _figures(task, config, tpu, mesh, what, compiled, costs, calibration=None) -> dict:
    mem = _memory(compiled)
    n = mesh.devices.size
    text = compiled.as_text()
    kernels = mosaic_kernel_calls(text)
    step, method = _step_estimate(costs, tpu, calibration)
    kernel_seconds = 0.0
    if kernels and config.task in ("lm", "moshi") \
            and config.model.get("attention") == "splash" and what == "train":
        attention = _attention_flops(task, config) / n
        kernel_seconds = attention / tpu.peak_flops
        step += kernel_seconds
    out = {
        "memory_gib_per_device": mem["total"] / GIB,
        "memory_breakdown_gib": {k: v / GIB for k, v in mem.items() if k != "total"},
        "fits": mem["total"] <= tpu.hbm_bytes,
        "flops_per_device": costs["flops"],
        "bytes_accessed_per_device": costs["bytes"],
        "cost_model_seconds": costs["optimal_seconds"],
        "custom_kernel_calls": kernels,
        "custom_kernel_seconds_at_peak": kernel_seconds,
        "estimated_step_seconds": step,
        "step_estimate_source": method + (" + splash attention kernels at peak FLOP rate"
                                          if kernel_seconds else ""),
        "hardware_flops_utilization": (costs["flops"] + kernel_seconds * tpu.peak_flops)
                                      / (step * tpu.peak_flops),
        "collectives": hlo.count_collectives(text)["by_kind"],
    }
    B = int(config.train.batch_size)
    if what == "decode":
        out["tokens_per_second_per_device"] = B / n / step
        if config.task == "moshi":  # one frame (80 ms of conversation) per step
            out["ms_per_frame"] = 1000.0 * step
            out["real_time_factor"] = step / 0.08
        out["bound"] = ("memory bandwidth" if costs["bytes"] / tpu.hbm_bandwidth
                        >= costs["flops"] / tpu.peak_flops else "compute")
        out["weights_and_cache_seconds_at_hbm_bandwidth"] = costs["bytes"] / tpu.hbm_bandwidth
        return out
    model_flops, convention = model_flops_per_step(task, config)
    if config.task == "moshi":
        out["model_flops_per_device"] = model_flops / n
        out["model_flops_convention"] = convention
        out["estimated_mfu"] = model_flops / n / (step * tpu.peak_flops)
        out["frames_per_second_per_device"] = B * int(config.data.frames) / n / step
    elif config.task == "lm":
        out["model_flops_per_device"] = model_flops / n
        out["model_flops_convention"] = convention
        out["estimated_mfu"] = model_flops / n / (step * tpu.peak_flops)
        tokens = B * task.context * (task.rows if task.pattern.model_kind == "depth" else 1)
        out["tokens_per_second_per_device"] = tokens / n / step
    else:
        out["model_flops_per_device"] = costs["flops"]
        out["model_flops_convention"] = "the compiler's FLOPs (no analytic count for codecs)"
        out["estimated_mfu"] = out["hardware_flops_utilization"]
        seconds = B * int(config.data.crop_length) / int(config.data.sample_rate)
        out["audio_seconds_per_second_per_device"] = seconds / n / step
    return out


def mosaic_kernel_calls(text: str) -> int:
    """Pallas/Mosaic kernels in optimized TPU HLO: ``tpu_custom_call``s other than the ones the
    TPU compiler writes itself (its fused online softmax), which its cost model accounts for."""
    return sum(1 for line in text.splitlines()
               if 'custom_call_target="tpu_custom_call"' in line
               and 'op_name="online-softmax"' not in line)


def _attention_flops(task, config) -> float:
    """The causal attention FLOPs the splash kernels of one training step compute: forward
    and backward (3 forward passes' worth), and one more forward when the blocks are
    rematerialised (the kernel's output is never a saved dot)."""
    if config.task == "moshi":  # the temporal transformer's (the depformer's 8 steps: XLA)
        B, T = int(config.train.batch_size), int(config.data.frames)
        cfg = task.model_config.temporal_config()
    else:
        B, T = int(config.train.batch_size), task.context
        cfg = task.lm.model_config
    span = min(T, cfg.window) if cfg.window else T
    passes = 4.0 if cfg.remat != "none" else 3.0
    return 2.0 * passes * B * T * span * cfg.num_heads * cfg.head_dim * cfg.num_layers
