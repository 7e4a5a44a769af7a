"""Frame-by-frame Mimi: push one frame of audio (80 ms at 24 kHz), get that frame's codes; push
codes, get the frame's audio. Same weights, same networks, same results as the offline codec.

Streaming is a mode of Mimi's own encoder and decoder (``MimiEncoder(..., streaming=True)``):
each causal conv keeps its input buffer, each transposed conv its overlap buffer, each
transformer its key/value ring buffer (its last ``context`` frames) and position, all in the
``streaming`` variable collection (:mod:`audiolm_jax.layers.streaming`). A step is one
``Codec.apply`` with that collection passed in and mutable::

    codes, new = codec.apply({"params": p, "vq_stats": s, "streaming": state}, audio,
                             method=encode_stream, mutable=["streaming"])

so ``encode_step`` / ``decode_step`` are pure ``(state, x) -> (state, y)`` functions and each
step is one compiled call (``MimiStreamer`` jits them once).

Equivalence with offline processing: codes equal ``Codec.encode`` of the whole signal exactly
(when its length is a whole number of frames, or when the last chunk, zero-padded to whole
frames, is given its valid ``length``) and audio equals ``Codec.decode`` to float tolerance;
``tests/test_mimi_streaming.py`` and ``tests/test_mimi.py`` check them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from audiolm_jax.codec.mimi.networks import mimi_hop_length
from audiolm_jax.layers.streaming import STREAMING, initial_state
from audiolm_jax.quantization import STATS

Array = jax.Array


def encode_stream(codec, audio: Array, num_levels: int | None = None,
                  length: Any = None) -> Array:
    """``Codec`` method: the next ``audio [B, n * hop]`` -> codes ``[B, n, levels]``.
    ``length``: the chunk's valid samples, when it is the signal's last and zero-padded to
    whole frames (see ``MimiEncoder``): its partial last frame is then coded as the
    reference codes it."""
    return codec.quantizer.encode(codec.encoder(audio, streaming=True, length=length),
                                  n_levels=num_levels)


def decode_stream(codec, codes: Array) -> Array:
    """``Codec`` method: the next ``codes [B, n, levels]`` -> audio ``[B, n * hop]``."""
    return codec.decoder(codec.quantizer.decode(codes), streaming=True)


def encode_step(model, variables: dict, state: dict, audio: Array,
                num_levels: int | None = None, length: Any = None) -> tuple[dict, Array]:
    """``(state, audio [B, n * hop])`` -> ``(state, codes [B, n, levels])``; ``model`` is the
    Codec, ``variables`` its params and ``vq_stats``; ``length`` as in
    :func:`encode_stream`."""
    codes, new = model.apply({**variables, STREAMING: state}, audio, num_levels, length,
                             method=encode_stream, mutable=[STREAMING])
    return new[STREAMING], codes


def decode_step(model, variables: dict, state: dict, codes: Array) -> tuple[dict, Array]:
    """``(state, codes [B, n, levels])`` -> ``(state, audio [B, n * hop])``."""
    audio, new = model.apply({**variables, STREAMING: state}, codes, method=decode_stream,
                             mutable=[STREAMING])
    return new[STREAMING], audio


class MimiStreamer:
    """Streaming encoder and decoder of a Mimi codec (``config.model.kind == 'mimi'``).

    ``encode_step(state, audio [B, hop])`` and ``decode_step(state, codes [B, 1, levels])`` are
    compiled once; longer chunks (any whole number of frames, at most the transformer context)
    work too and compile once per chunk length. ``encode_step(state, audio, length)``: the
    chunk holds ``length`` valid samples (an int, or ``[B]``), the rest zero padding of the
    signal's last chunk (a traced argument: one more compilation, whatever the lengths).
    """

    def __init__(self, config: Any, params: Any, vq_stats: Any, batch: int = 1,
                 num_levels: int | None = None):
        from audiolm_jax.codec.model import build_codec

        if config.model.kind != "mimi":
            raise ValueError(f"config key 'model.kind' is {config.model.kind!r}; streaming "
                             "needs a Mimi codec ('mimi')")
        self.config, self.batch = config, int(batch)
        self.model = build_codec(config)
        self.variables = {"params": params, STATS: vq_stats}
        self.hop_length = mimi_hop_length(config.model)
        self.num_levels = int(num_levels or config.quantizer.num_levels)
        model, n = self.model, self.num_levels
        self._encode = jax.jit(lambda v, s, a, length: encode_step(model, v, s, a, n, length))
        self._decode = jax.jit(lambda v, s, c: decode_step(model, v, s, c))
        self.encode_step = lambda state, audio, length=None: self._encode(
            self.variables, state, audio, length)
        self.decode_step = lambda state, codes: self._decode(self.variables, state, codes)
        self._initial: dict = {}

    @classmethod
    def from_workdir(cls, workdir: str, batch: int = 1, num_levels: int | None = None):
        from audiolm_jax.codec.weights import load_codec_weights as load_codec

        codec = load_codec(workdir)
        return cls(codec.config, codec.params, codec.vq_stats, batch, num_levels)

    def _initial_state(self, key: str, method, x: Array, *args) -> dict:
        """The state the streaming call ``method`` starts from (computed once; its arrays
        are immutable, so every stream can start from the same one)."""
        if key not in self._initial:
            self._initial[key] = jax.jit(lambda v, x: initial_state(
                self.model, v, x, *args, method=method))(self.variables, x)
        return self._initial[key]

    def init_encoder_state(self) -> dict:
        audio = jnp.zeros((self.batch, self.hop_length), jnp.float32)
        return self._initial_state("encoder", encode_stream, audio, self.num_levels)

    def init_decoder_state(self) -> dict:
        codes = jnp.zeros((self.batch, 1, self.num_levels), jnp.int32)
        return self._initial_state("decoder", decode_stream, codes)
