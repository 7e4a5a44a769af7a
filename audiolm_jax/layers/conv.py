"""1-D / 2-D convolutions for audio codecs, channels-last ([B, T, C] / [B, H, W, C]).

* ``Conv1d`` / ``CausalConv1d``: padding ``'causal'`` (EnCodec ``SConv1d`` style: all of
  ``effective_kernel - stride`` on the left plus the extra right padding that makes the last
  partial frame count), ``'same'`` (the same total split in two, EnCodec non-causal style),
  ``'reflect'`` (``'same'`` with reflect padding), ``'valid'``, an int (symmetric, torch
  ``padding=p``) or a ``(left, right)`` pair.
* ``ConvTranspose1d``: full transposed convolution then a trim of ``kernel - stride`` samples
  (all from the right when causal, split when not) or, with ``padding=p``, ``p`` from each side
  (torch ``ConvTranspose1d(padding=p)``). Supports ``groups`` (``groups == channels`` gives the
  channel-wise upsampling used by Mimi).
* ``Conv2d``: explicit padding / stride / dilation, for the STFT discriminator.

Streaming (``streaming=True`` in the call; :mod:`audiolm_jax.layers.streaming`): the causal
``Conv1d`` and the causal ``ConvTranspose1d`` (``trim_right_ratio=1``) take a signal chunk by
chunk, each chunk a whole number of strides long, and give exactly what the offline layer gives
on the concatenated chunks. They carry, in the ``streaming`` collection:

* ``Conv1d``: ``buffer``, the last ``effective_kernel - stride`` inputs (initially the causal
  left padding: zeros), and with 'replicate' padding ``started``: false until the first chunk,
  whose first sample then fills the buffer.
* ``ConvTranspose1d``: ``buffer``, the ``kernel - stride`` trailing outputs (without bias) that
  overlap the next chunk's first outputs; offline they are trimmed from the right end of the
  whole signal, so streaming adds them to the next chunk instead.

Weight norm (``weight_norm=True``) is implemented here: parameters ``v`` (kernel-shaped) and
``g`` (one per output channel), ``kernel = g * v / ||v||`` with the norm over every axis except
the output-channel (last) axis. ``g`` is initialised to ``||v||`` so the initial kernel is ``v``.
Without weight norm the parameter is called ``kernel``. Biases are called ``bias``.

Kernel layouts (for porting torch weights):
* Conv1d: ``[K, C_in // groups, C_out]`` = torch ``weight.transpose(2, 1, 0)``.
* ConvTranspose1d: ``[K, C_in // groups, C_out]`` with
  ``y[t * stride + j, o] += x[t, i] * kernel[j, i_local, o]``; from torch's
  ``weight[C_in, C_out // groups, K]``:
  ``kernel[j, i_local, g * (C_out//groups) + o_local] = weight[g * (C_in//groups) + i_local, o_local, j]``.
* Conv2d: ``[KH, KW, C_in, C_out]`` = torch ``weight.transpose(2, 3, 1, 0)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.layers.streaming import carry

Array = jax.Array
Initializer = Callable[..., Array]

# torch's default Conv init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _norm_except_last(v: Array) -> Array:
    axes = tuple(range(v.ndim - 1))
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes))


def make_kernel(module: nn.Module, shape: Sequence[int], weight_norm: bool,
                kernel_init: Initializer = default_kernel_init,
                param_dtype: Any = jnp.float32) -> Array:
    """Create (inside a compact ``__call__``) a plain or weight-normalised kernel."""
    shape = tuple(int(s) for s in shape)
    if not weight_norm:
        return module.param("kernel", kernel_init, shape, param_dtype)
    v = module.param("v", kernel_init, shape, param_dtype)
    g = module.param("g", lambda _rng, v0: _norm_except_last(v0), v)
    return weight_norm_kernel(v, g)


def weight_norm_kernel(v: Array, g: Array) -> Array:
    """``g * v / ||v||``, norm over all axes but the last (output-channel) one."""
    norm = _norm_except_last(v)
    return v * (g / jnp.maximum(norm, 1e-12))


def get_extra_padding_for_conv1d(length: int, kernel_size: int, stride: int,
                                 padding_total: int = 0) -> int:
    """Right padding so that the last (partial) frame is fully covered (EnCodec)."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return max(0, ideal_length - length)


def pad1d(x: Array, left: int, right: int, mode: str = "constant") -> Array:
    """Pad the time axis (axis 1) of ``[B, T, C]``. ``mode``: constant | reflect | replicate.

    ``reflect`` also works when T is shorter than the padding (zero-extends first, as EnCodec).
    """
    left, right = int(left), int(right)
    if left == 0 and right == 0:
        return x
    widths = ((0, 0), (left, right), (0, 0))
    if mode == "constant":
        return jnp.pad(x, widths)
    if mode == "replicate":
        return jnp.pad(x, widths, mode="edge")
    if mode == "reflect":
        length = x.shape[1]
        max_pad = max(left, right)
        extra = 0
        if length <= max_pad:
            extra = max_pad - length + 1
            x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
        out = jnp.pad(x, widths, mode="reflect")
        if extra:
            out = out[:, : out.shape[1] - extra]
        return out
    raise ValueError(f"unknown pad mode {mode!r}")


def conv1d_padding(length: int, kernel_size: int, stride: int, dilation: int,
                   padding: Any) -> tuple[int, int]:
    """(left, right) padding for ``Conv1d``'s padding spec."""
    eff = (kernel_size - 1) * dilation + 1
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        total = eff - stride
        extra = get_extra_padding_for_conv1d(length, eff, stride, total)
        if padding == "causal":
            return total, extra
        if padding in ("same", "reflect"):
            right = total // 2
            return total - right, right + extra
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, int):
        return padding, padding
    left, right = padding
    return int(left), int(right)


# Below this many input taps (kernel x input channels) a convolution is cheaper as a sum of
# shifted, broadcast products of the input, which XLA fuses into one elementwise pass with the
# bias and activation that follow, than as an XLA convolution or an im2col matmul: in Mimi's
# encoder (10 s at 24 kHz) the first SEANet layer (1 channel, kernel 7) with its bias and ELU
# went from a 6 ms gather + 25 ms matmul + 15 ms bias/ELU pass to one 13 ms fusion, with 60 MB
# less temporary memory (BUILD_NOTES.md, "Mimi speed", session 5).
_FEW_TAPS = 16


def conv1d_valid(x: Array, kernel: Array, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> Array:
    """Unpadded ('valid') convolution of ``x [B, T, C_in]`` with ``kernel [K, C_in // groups,
    C_out]``. Kernel-1 convolutions run as matmuls, which XLA:CPU executes several times
    faster than the equivalent convolution (a 1x1 convolution at 240k steps: 34 ms as a
    convolution, 8 ms as a matmul), and few-tap ones as fused broadcast products;
    everything else is ``conv_general_dilated``.
    """
    k, ci, co = kernel.shape
    if groups == 1 and stride == 1:
        if k == 1:
            return jnp.einsum("btc,co->bto", x, kernel[0])
        if k * ci <= _FEW_TAPS:
            n = x.shape[1] - (k - 1) * dilation
            terms = [x[:, j * dilation: j * dilation + n, i: i + 1] * kernel[j, i]
                     for j in range(k) for i in range(ci)]
            return functools.reduce(jnp.add, terms)
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride,), padding=[(0, 0)], rhs_dilation=(dilation,),
        feature_group_count=groups, dimension_numbers=("NWC", "WIO", "NWC"))


class _ConvBase(nn.Module):
    """What a convolution and a transposed convolution share: the kernel ``[kernel_size,
    C_in // groups, features]`` (weight-normed or plain) and the optional bias."""

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    weight_norm: bool = False
    use_bias: bool = True
    kernel_init: Initializer = default_kernel_init

    def _kernel(self, in_ch: int) -> Array:
        if in_ch % self.groups or self.features % self.groups:
            raise ValueError("channels must be divisible by groups")
        return make_kernel(self, (self.kernel_size, in_ch // self.groups, self.features),
                           self.weight_norm, self.kernel_init)

    def _add_bias(self, y: Array) -> Array:
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y + bias.astype(y.dtype)


class Conv1d(_ConvBase):
    """1-D convolution on ``[B, T, C_in]`` → ``[B, T', features]``.

    With ``padding`` 'causal' / 'same' / 'reflect' and T a multiple of ``stride``, T' = T / stride.
    ``streaming=True`` (causal padding only): ``x`` is the next chunk of a signal (see the
    module docstring).
    """

    dilation: int = 1
    padding: Any = "same"  # 'causal' | 'same' | 'reflect' | 'valid' | int | (left, right)
    pad_mode: str = "constant"  # 'constant' | 'reflect' | 'replicate' ('reflect' padding forces reflect)

    @nn.compact
    def __call__(self, x: Array, streaming: bool = False) -> Array:
        if streaming:
            x = self._stream_input(x)
        else:
            left, right = conv1d_padding(x.shape[1], self.kernel_size, self.stride,
                                         self.dilation, self.padding)
            mode = "reflect" if self.padding == "reflect" else self.pad_mode
            x = pad1d(x, left, right, mode)
        kernel = self._kernel(x.shape[-1])
        y = conv1d_valid(x, kernel.astype(x.dtype), self.stride, self.dilation, self.groups)
        return self._add_bias(y)

    def _stream_input(self, x: Array) -> Array:
        """The chunk ``x`` behind the carried inputs it needs (the causal left padding on the
        first chunk); stores the inputs the next chunk needs."""
        if self.padding != "causal":
            raise ValueError(f"only causal convolutions stream, not padding={self.padding!r}")
        if x.shape[1] % self.stride:
            raise ValueError(f"a streamed chunk must be a whole number of strides "
                             f"({self.stride}), got {x.shape[1]} steps")
        size = (self.kernel_size - 1) * self.dilation + 1 - self.stride
        if size < 0:
            raise ValueError("a streamed convolution needs kernel_size >= stride")
        if size == 0:
            return x
        shape = (x.shape[0], size, x.shape[-1])
        buffer, update = carry(self, "buffer", lambda: jnp.zeros(shape, x.dtype))
        if self.pad_mode == "replicate":  # the first chunk pads with its first sample
            started, set_started = carry(self, "started", lambda: jnp.zeros((), bool))
            buffer = jnp.where(started, buffer, jnp.repeat(x[:, :1], size, axis=1))
            set_started(jnp.ones((), bool))
        elif self.pad_mode != "constant":
            raise ValueError(f"pad_mode {self.pad_mode!r} does not stream")
        full = jnp.concatenate([buffer.astype(x.dtype), x], axis=1)
        update(full[:, full.shape[1] - size:])
        return full


class CausalConv1d(Conv1d):
    """``Conv1d`` with EnCodec-style causal padding by default."""

    padding: Any = "causal"


def conv_transpose1d_full(x: Array, kernel: Array, stride: int, groups: int = 1) -> Array:
    """Untrimmed transposed convolution, no bias: ``[B, T, C_in]`` -> ``[B, (T - 1) * stride +
    K, C_out]`` with ``y[t * stride + j] += x[t] @ kernel[j]`` (per group).

    Computed as one matmul per input frame (``[C_in] -> [K, C_out]``) and an overlap-add of the
    ``ceil(K / stride)`` stride-long pieces, not as a convolution of the zero-stuffed input,
    which would spend ``stride`` times the multiply-adds on inserted zeros.
    """
    B, T, c_in = x.shape
    k, ci, c_out = kernel.shape
    co = c_out // groups
    pieces = -(-k // stride)
    w = jnp.pad(kernel.astype(x.dtype), ((0, pieces * stride - k), (0, 0), (0, 0)))
    if groups == 1:
        # One [C_in] -> [pieces * stride * C_out] matmul whose output is already laid out as
        # [B, T, pieces, stride, C_out] (a grouped einsum put the group axis first and cost a
        # transposing copy as large as the output).
        z = jnp.einsum("bti,kio->btko", x, w).reshape(B, T, pieces, stride, c_out)
    elif ci == 1 and co == 1:  # depthwise (Mimi's channel-wise upsampling): a broadcast product
        z = x[:, :, None, None, :] * w.reshape(pieces, stride, c_out)
    else:
        w = w.reshape(pieces, stride, ci, groups, co)
        z = jnp.einsum("btgi,psigo->btpsgo", x.reshape(B, T, groups, ci), w)
        z = z.reshape(B, T, pieces, stride, c_out)
    # Piece p of frame t lands on output block t + p.
    if pieces == 2:  # SEANet's kernel = 2 x stride: one add of shifted halves, no padded copies
        z0, z1 = z[:, :, 0], z[:, :, 1]
        y = jnp.concatenate([z0[:, :1], z0[:, 1:] + z1[:, :-1], z1[:, -1:]], axis=1)
    else:
        y = sum(jnp.pad(z[:, :, p], ((0, 0), (p, pieces - 1 - p), (0, 0), (0, 0)))
                for p in range(pieces))
    y = y.reshape(B, (T + pieces - 1) * stride, c_out)
    return y[:, : (T - 1) * stride + k]


class ConvTranspose1d(_ConvBase):
    """Transposed 1-D convolution ``[B, T, C_in]`` → ``[B, T * stride, features]``.

    Output before trimming has ``(T - 1) * stride + kernel_size`` samples. Trimming:
    ``padding=p`` (int): ``p`` from each side (torch semantics); otherwise
    ``kernel_size - stride`` in total, ``causal``: ``ceil(total * trim_right_ratio)`` from the
    right and the rest from the left (ratio 1 → all on the right); non-causal: split in two
    (right gets the floor half). ``streaming=True`` (causal, ``trim_right_ratio=1``, no
    ``padding``): ``x`` is the next chunk of a signal (see the module docstring).
    """

    causal: bool = True
    trim_right_ratio: float = 1.0
    padding: int | None = None

    @nn.compact
    def __call__(self, x: Array, streaming: bool = False) -> Array:
        k, s = self.kernel_size, self.stride
        y = conv_transpose1d_full(x, self._kernel(x.shape[-1]), s, self.groups)
        if streaming:
            return self._add_bias(self._stream_output(y, x.shape[1] * s))
        y = self._add_bias(y)
        if self.padding is not None:
            left = right = int(self.padding)
        else:
            total = k - s
            if self.causal:
                right = int(math.ceil(total * self.trim_right_ratio))
            else:
                right = total // 2
            left = total - right
        end = y.shape[1] - right
        return y[:, left:end]

    def _stream_output(self, y: Array, n: int) -> Array:
        """The first ``n`` samples of a chunk's untrimmed output ``y`` plus the carried
        overlap of the previous chunks; stores the overlap with the next chunk."""
        if self.padding is not None or not self.causal or self.trim_right_ratio != 1:
            raise ValueError("only causal transposed convolutions with trim_right_ratio=1 "
                             "stream")
        overlap = self.kernel_size - self.stride
        if overlap < 0:
            raise ValueError("a streamed transposed convolution needs kernel_size >= stride")
        if overlap:
            shape = (y.shape[0], overlap, y.shape[-1])
            buffer, update = carry(self, "buffer", lambda: jnp.zeros(shape, y.dtype))
            y = y.at[:, :overlap].add(buffer.astype(y.dtype))
            update(y[:, n:])
        return y[:, :n]


def get_2d_padding(kernel_size: Sequence[int], dilation: Sequence[int] = (1, 1)):
    """'same'-style symmetric padding for an odd 2-D kernel (EnCodec ``get_2d_padding``)."""
    return tuple(((k - 1) * d // 2, (k - 1) * d // 2) for k, d in zip(kernel_size, dilation))


class Conv2d(nn.Module):
    """2-D convolution on ``[B, H, W, C_in]`` with explicit padding, optional weight norm."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: Any = None  # ((top, bottom), (left, right)); None → get_2d_padding
    weight_norm: bool = False
    use_bias: bool = True
    kernel_init: Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        pad = self.padding if self.padding is not None else get_2d_padding(self.kernel_size,
                                                                            self.dilation)
        kernel = make_kernel(self, (kh, kw, x.shape[-1], self.features), self.weight_norm,
                             self.kernel_init)
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), window_strides=tuple(self.strides),
            padding=[tuple(p) for p in pad], rhs_dilation=tuple(self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(y.dtype)
        return y


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))
