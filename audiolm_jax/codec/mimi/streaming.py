"""Frame-by-frame Mimi: push one frame of audio (80 ms at 24 kHz), get that frame's codes; push
codes, get the frame's audio. Same weights, same results as the offline codec.

The carried state is a plain pytree: every causal conv's input buffer, every transposed conv's
overlap buffer, each transformer's key/value ring buffer (its last ``context`` frames) and the
frame offset. ``encode_step`` / ``decode_step`` are pure ``(state, x) -> (state, y)`` functions,
so each step is one compiled call (``MimiStreamer`` jits them once).

Equivalence with offline processing: codes equal ``Codec.encode`` of the whole signal exactly
(when its length is a whole number of frames) and audio equals ``Codec.decode`` to float
tolerance; ``tests/test_mimi_streaming.py`` checks both.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from audiolm_jax.codec.mimi.networks import mimi_hop_length, seanet_kwargs, transformer_kwargs
from audiolm_jax.codec.mimi.transformer import MimiTransformer
from audiolm_jax.codec.seanet import _activation
from audiolm_jax.layers.streaming import (conv1d_buffer_size, conv1d_step,
                                          conv_transpose1d_step, layer_kernel)

Array = jax.Array


class _Streams:
    """Applies named streaming layers, reading and writing their buffers in ``state``.

    With ``state=None`` every buffer starts from its initial value (zeros), which is how
    ``init_*_state`` obtains the state's structure."""

    def __init__(self, state: dict | None):
        self.old = state
        self.new: dict = {}

    def buffer(self, name: str, shape, dtype) -> Array:
        if self.old is None:
            return jnp.zeros(shape, dtype)
        return self.old[name]

    def conv(self, name: str, params, x, stride=1, dilation=1, groups=1, first_fill=None):
        k = layer_kernel(params).shape[0]
        size = conv1d_buffer_size(k, stride, dilation)
        buf = self.buffer(name, (x.shape[0], size, x.shape[-1]), x.dtype)
        if first_fill is not None:  # replicate padding: the first sample, on the first chunk
            buf = jnp.where(first_fill, jnp.repeat(x[:, :1], size, axis=1), buf)
        y, self.new[name] = conv1d_step(params, buf, x, stride, dilation, groups)
        return y

    def conv_transpose(self, name: str, params, x, stride, groups=1):
        kernel = layer_kernel(params)
        size = kernel.shape[0] - stride
        buf = self.buffer(name, (x.shape[0], size, kernel.shape[-1]), x.dtype)
        y, self.new[name] = conv_transpose1d_step(params, buf, x, stride, groups)
        return y


def _resblock(streams: _Streams, name: str, p: dict, x: Array, sk: dict, j: int, act) -> Array:
    h = act(x)
    h = streams.conv(f"{name}/conv_0", p["conv_0"], h, dilation=sk["dilation_base"] ** j)
    h = streams.conv(f"{name}/conv_1", p["conv_1"], act(h))
    skip = x if sk["true_skip"] else streams.conv(f"{name}/shortcut", p["shortcut"], x)
    return skip + h


def seanet_encoder_step(streams: _Streams, p: dict, sk: dict, audio: Array) -> Array:
    act = _activation(sk["activation"])
    x = streams.conv("seanet/conv_in", p["conv_in"], audio[..., None])
    for i, ratio in enumerate(reversed(sk["ratios"])):
        for j in range(sk["n_residual_layers"]):
            name = f"block_{i}_res_{j}"
            x = _resblock(streams, f"seanet/{name}", p[name], x, sk, j, act)
        x = streams.conv(f"seanet/block_{i}_down", p[f"block_{i}_down"], act(x), stride=ratio)
    return streams.conv("seanet/conv_out", p["conv_out"], act(x))


def seanet_decoder_step(streams: _Streams, p: dict, sk: dict, z: Array) -> Array:
    act = _activation(sk["activation"])
    x = streams.conv("seanet/conv_in", p["conv_in"], z)
    for i, ratio in enumerate(sk["ratios"]):
        x = streams.conv_transpose(f"seanet/block_{i}_up", p[f"block_{i}_up"], act(x), ratio)
        for j in range(sk["n_residual_layers"]):
            name = f"block_{i}_res_{j}"
            x = _resblock(streams, f"seanet/{name}", p[name], x, sk, j, act)
    return streams.conv("seanet/conv_out", p["conv_out"], act(x))[..., 0]


def _transformer(mcfg) -> MimiTransformer:
    return MimiTransformer(**transformer_kwargs(mcfg))


def _quantizer_apply(model, variables: dict, method: Callable, *args):
    return model.apply(variables, *args, method=lambda m, *a: method(m.quantizer, *a))


def encode_step(model, mcfg, variables: dict, state: dict | None, audio: Array,
                num_levels: int | None = None) -> tuple[dict, Array]:
    """``audio [B, n * hop]`` -> ``(state, codes [B, n, levels])``. ``model`` is the Codec."""
    sk, tk = seanet_kwargs(mcfg), transformer_kwargs(mcfg)
    down = max(1, int(mcfg.get("frame_downsample", 2)))
    p = variables["params"]["encoder"]
    streams = _Streams(None if state is None else state["convs"])
    offset = jnp.zeros((), jnp.int32) if state is None else state["offset"]
    x = seanet_encoder_step(streams, p["seanet"], sk, audio)
    cache = None
    if tk["num_layers"]:
        tr = _transformer(mcfg)
        cache = tr.init_cache(audio.shape[0], x.dtype) if state is None else state["cache"]
        x, cache = tr.apply({"params": p["transformer"]}, x, cache, offset * down, method="step")
    if down > 1:
        x = streams.conv("downsample", p["downsample"], x, stride=down, first_fill=offset == 0)
    codes = _quantizer_apply(model, variables, lambda q, z: q.encode(z, n_levels=num_levels), x)
    new_state = {"convs": streams.new, "cache": cache, "offset": offset + x.shape[1]}
    return new_state, codes


def decode_step(model, mcfg, variables: dict, state: dict | None,
                codes: Array) -> tuple[dict, Array]:
    """``codes [B, n, levels]`` -> ``(state, audio [B, n * hop])``."""
    sk, tk = seanet_kwargs(mcfg), transformer_kwargs(mcfg)
    down = max(1, int(mcfg.get("frame_downsample", 2)))
    p = variables["params"]["decoder"]
    streams = _Streams(None if state is None else state["convs"])
    offset = jnp.zeros((), jnp.int32) if state is None else state["offset"]
    x = _quantizer_apply(model, variables, lambda q, c: q.decode(c), codes)
    if down > 1:
        groups = sk["dimension"] if bool(mcfg.get("upsample_channelwise", True)) else 1
        x = streams.conv_transpose("upsample", p["upsample"], x, down, groups)
    cache = None
    if tk["num_layers"]:
        tr = _transformer(mcfg)
        cache = tr.init_cache(codes.shape[0], x.dtype) if state is None else state["cache"]
        x, cache = tr.apply({"params": p["transformer"]}, x, cache, offset * down, method="step")
    audio = seanet_decoder_step(streams, p["seanet"], sk, x)
    return {"convs": streams.new, "cache": cache, "offset": offset + codes.shape[1]}, audio


def _zeros_like_structure(fn: Callable, *args) -> Any:
    shapes = jax.eval_shape(fn, *args)[0]
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if state.get("cache") is not None:  # empty ring-buffer slots are marked by position -1
        for layer in state["cache"]:
            layer["pos"] = jnp.full_like(layer["pos"], -1)
    state["offset"] = jnp.zeros((), jnp.int32)
    return state


class MimiStreamer:
    """Streaming encoder and decoder of a Mimi codec (``config.model.kind == 'mimi'``).

    ``encode_step(state, audio [B, hop])`` and ``decode_step(state, codes [B, 1, levels])`` are
    compiled once; longer chunks (any whole number of frames, at most the transformer context)
    work too and compile once per chunk length.
    """

    def __init__(self, config: Any, params: Any, vq_stats: Any, batch: int = 1,
                 num_levels: int | None = None):
        from audiolm_jax.codec.model import build_codec

        if config.model.kind != "mimi":
            raise ValueError(f"config key 'model.kind' is {config.model.kind!r}; streaming "
                             "needs a Mimi codec ('mimi')")
        self.config, self.batch = config, int(batch)
        self.model = build_codec(config)
        self.mcfg = config.model
        self.variables = {"params": params, "vq_stats": vq_stats}
        self.hop_length = mimi_hop_length(self.mcfg)
        self.num_levels = int(num_levels or config.quantizer.num_levels)
        model, mcfg, n = self.model, self.mcfg, self.num_levels
        self._encode = jax.jit(lambda v, s, a: encode_step(model, mcfg, v, s, a, n))
        self._decode = jax.jit(lambda v, s, c: decode_step(model, mcfg, v, s, c))
        self.encode_step = lambda state, audio: self._encode(self.variables, state, audio)
        self.decode_step = lambda state, codes: self._decode(self.variables, state, codes)

    @classmethod
    def from_workdir(cls, workdir: str, batch: int = 1, num_levels: int | None = None):
        from audiolm_jax.codec.inference import load_codec

        codec = load_codec(workdir)
        return cls(codec.config, codec.params, codec.vq_stats, batch, num_levels)

    def init_encoder_state(self) -> dict:
        audio = jnp.zeros((self.batch, self.hop_length), jnp.float32)
        return _zeros_like_structure(
            lambda a: encode_step(self.model, self.mcfg, self.variables, None, a, self.num_levels),
            audio)

    def init_decoder_state(self) -> dict:
        codes = jnp.zeros((self.batch, 1, self.num_levels), jnp.int32)
        return _zeros_like_structure(
            lambda c: decode_step(self.model, self.mcfg, self.variables, None, c), codes)
