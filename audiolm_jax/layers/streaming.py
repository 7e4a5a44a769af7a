"""Streaming (chunk by chunk) versions of the causal convolutions in ``conv.py``, as pure
functions of a layer's parameters, a carried buffer and a chunk ``[B, n, C]``.

Run chunk by chunk from the initial state, they give exactly what the offline layer gives on
the concatenated input (``Conv1d(padding='causal')`` and ``ConvTranspose1d(causal=True,
trim_right_ratio=1)``), provided each chunk's length is a multiple of the stride:

* ``conv1d_step``: the buffer holds the last ``effective_kernel - stride`` inputs (initially the
  causal left padding: zeros, or the first sample repeated for 'replicate' padding).
* ``conv_transpose1d_step``: the buffer holds the ``kernel - stride`` trailing outputs (without
  bias) that overlap the next chunk's first outputs; offline they are trimmed from the right
  end of the whole signal, so streaming adds them to the next chunk instead.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from audiolm_jax.layers.conv import conv1d_valid, conv_transpose1d_full, weight_norm_kernel

Array = jax.Array


def layer_kernel(params: Mapping[str, Any]) -> Array:
    """The kernel of a conv layer's params: ``kernel``, or ``g * v / ||v||`` (weight norm)."""
    if "kernel" in params:
        return params["kernel"]
    return weight_norm_kernel(params["v"], params["g"])


def conv1d_buffer_size(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    return (kernel_size - 1) * dilation + 1 - stride


def conv1d_step(params: Mapping[str, Any], buffer: Array, x: Array, stride: int = 1,
                dilation: int = 1, groups: int = 1) -> tuple[Array, Array]:
    """``(y [B, n / stride, C_out], new_buffer)`` for a chunk ``x [B, n, C_in]``."""
    kernel = layer_kernel(params)
    full = jnp.concatenate([buffer.astype(x.dtype), x], axis=1)
    y = conv1d_valid(full, kernel.astype(x.dtype), stride, dilation, groups)
    if "bias" in params:
        y = y + params["bias"].astype(y.dtype)
    keep = buffer.shape[1]
    return y, full[:, full.shape[1] - keep:] if keep else buffer


def conv_transpose1d_step(params: Mapping[str, Any], buffer: Array, x: Array, stride: int,
                          groups: int = 1) -> tuple[Array, Array]:
    """``(y [B, n * stride, C_out], new_buffer [B, kernel - stride, C_out])``."""
    kernel = layer_kernel(params)
    k = kernel.shape[0]
    y = conv_transpose1d_full(x, kernel, stride, groups)
    overlap = k - stride
    if overlap:
        y = y.at[:, :overlap].add(buffer.astype(y.dtype))
    n = x.shape[1] * stride
    out = y[:, :n]
    if "bias" in params:
        out = out + params["bias"].astype(out.dtype)
    return out, y[:, n:]
