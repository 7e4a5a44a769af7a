"""The server's model side: every session's frame in one compiled call.

A server with ``slots`` sessions holds, per slot, a generator state (the conversation's caches,
offset, PRNG key and sampling settings) and Mimi's streaming encoder and decoder states. One
jitted ``frame`` function takes 80 ms of audio per slot and runs, for all slots at once
(``jax.vmap`` over the slot axis):

    Mimi encode -> the LM's step -> Mimi decode

-> the model's text token and 80 ms of its voice per slot. Two kinds of LM have a step:

* :class:`MoshiEngine`: a Moshi (temporal transformer + depformer, text stream;
  :mod:`audiolm_jax.moshi.slots`);
* :class:`DepthLMEngine`: this library's two-stream depth-layout LMs (``configs/lm/duplex.py``;
  :mod:`audiolm_jax.lm.depth_stream`), whose codec must be a streaming Mimi. No text stream.

Slots whose client sent nothing this frame are ``inactive``: their states do not move (Mimi's
are kept with a select; the generator's by its slot step). One program per slot count:
sessions join (``join``: fresh states, their seed and sampling) and leave without a compile.
Used from one thread only (the server's compute thread).
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import numpy as np

UNBOUNDED_CONTEXT_FRAMES = 3000  # a Moshi without a sliding window: 4 minutes per session


def _keep_where(active, new, old):
    """Per slot: ``new`` where ``active`` [S], else ``old`` (pytrees with a leading S)."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(
        lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def frame_fn(lm_step, model, user_levels: int, num_levels: int, lm_params, codec_vars,
             states, audio, sampling, active):
    """The pure per-frame function (see the module docstring). ``lm_step(lm_params, lm_states,
    user codes int [S, user_levels], sampling, active) -> (lm_states, text int32 [S], the
    model's codes int32 [S, levels], valid bool [S])``; ``states``: (generator states, Mimi
    encoder states, Mimi decoder states), each stacked ``[S, ...]`` over batch-1 states;
    ``audio`` float32 ``[S, hop]``; ``active`` bool ``[S]`` -> (states, text int32 [S], pcm
    float32 [S, hop], valid [S])."""
    import jax

    from audiolm_jax.codec.mimi.streaming import decode_step, encode_step

    lm, enc, dec = states
    enc_new, codes = jax.vmap(
        lambda s, a: encode_step(model, codec_vars, s, a[None], num_levels))(enc, audio)
    enc = _keep_where(active, enc_new, enc)
    user = codes[:, 0, 0, :user_levels]  # [S, user levels]
    lm, text, model_codes, valid = lm_step(lm_params, lm, user, sampling, active)
    dec_new, pcm = jax.vmap(
        lambda s, c: decode_step(model, codec_vars, s, c[None, None]))(dec, model_codes)
    dec = _keep_where(valid, dec_new, dec)
    return (lm, enc, dec), text, pcm[:, 0], valid


def _moshi_step(config, params, states, user, sampling, active):
    from audiolm_jax.moshi.slots import slots_step

    states, out, valid = slots_step(config, params, states, user, sampling, active)
    return states, out[:, 0], out[:, 1:], valid


def _depth_step(spec, silence, params, states, user, sampling, active):
    import jax.numpy as jnp

    from audiolm_jax.lm.depth_stream import slots_step

    states, out, valid = slots_step(spec, params, states, user, silence, sampling, active)
    return states, jnp.full(valid.shape, -1, jnp.int32), out, valid


class _SlotEngine:
    """The codec side and the slots' bookkeeping, shared by both kinds of LM. A subclass
    sets, before calling :meth:`_start`: ``user_levels``, ``model_levels``, ``delay``,
    ``max_steps``, ``params`` and ``settings`` (``.set(slot, Sampling)``, ``.stacked``)."""

    def _check_codec(self, codec, path: str, levels: int, what: str):
        if codec is None:
            raise ValueError(f"--workdir {path!r} names no codec (tokens.json 'codec'): "
                             "serve needs the Mimi its codes come from")
        if getattr(codec.config.model, "kind", None) != "mimi":
            raise ValueError("serve needs a streaming Mimi codec; this workdir's codec is "
                             f"{getattr(codec.config.model, 'kind', None)!r}")
        if levels > codec.num_levels:
            raise ValueError(f"the {what} reads {levels} codebooks per stream; its codec has "
                             f"{codec.num_levels}")
        self.codec = codec
        self.sample_rate, self.hop = int(codec.sample_rate), int(codec.hop_length)
        self.frame_rate = float(codec.frame_rate)

    def _streamer(self):
        """The codec's batch-1 Mimi streamer, made once (its model, weights and states)."""
        if getattr(self, "streamer", None) is None:
            from audiolm_jax.codec.mimi.streaming import MimiStreamer

            codec = self.codec
            self.streamer = MimiStreamer(codec.config, codec.params, codec.vq_stats, batch=1)
        return self.streamer

    def _start(self, lm_step, fresh_lm_state) -> None:
        """One-device placement, stacked states and the compiled frame and join."""
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        from audiolm_jax.moshi.slots import set_slot

        self.params = jax.tree.map(jnp.asarray, nn.meta.unbox(self.params))
        streamer = self._streamer()
        # Everything on one device with one kind of sharding: a restored codec's arrays carry
        # its training mesh, and states that pick it up at the first step would be a new
        # input type for the next (a second compile).
        one_device = functools.partial(jax.device_put, device=jax.devices()[0])
        self.params = one_device(self.params)
        self.codec_vars = one_device(streamer.variables)
        # A slot's fresh states: the generator's (its key set at join) and Mimi's.
        self._fresh = one_device((fresh_lm_state, streamer.init_encoder_state(),
                                  streamer.init_decoder_state()))
        self.states = jax.tree.map(lambda x: jnp.stack([x] * self.slots), self._fresh)
        self.frames = np.zeros(self.slots, np.int64)
        self._frame = jax.jit(functools.partial(
            frame_fn, lm_step, streamer.model, self.user_levels, streamer.num_levels),
            donate_argnums=(2,))

        def join(states, fresh, slot, seed):
            lm, enc, dec = fresh
            lm = lm._replace(key=jax.random.PRNGKey(seed))
            return set_slot(states, slot, (lm, enc, dec))

        self._join = jax.jit(join, donate_argnums=(0,))

    def join(self, slot: int, sampling, seed: int = 0) -> None:
        """Slot ``slot`` starts a new conversation: fresh generator and Mimi states, the PRNG
        from ``seed``; ``sampling`` (a ``moshi.generate.Sampling``) for this slot only."""
        import jax.numpy as jnp

        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in [0, {self.slots})")
        self.states = self._join(self.states, self._fresh, jnp.int32(slot), jnp.uint32(seed))
        self.settings.set(slot, sampling)
        self.frames[slot] = 0

    def step(self, audio: np.ndarray, active: np.ndarray):
        """One frame for every slot: ``audio`` float32 ``[slots, hop]`` at the codec's rate
        (rows of inactive slots are ignored), ``active`` bool ``[slots]`` -> (text token int
        [slots], reply pcm float32 [slots, hop], valid bool [slots]: the slots whose outputs
        are a frame of the reply)."""
        import jax.numpy as jnp

        active = np.asarray(active, bool).reshape(self.slots)
        if self.max_steps is not None and (self.frames[active] >= self.max_steps).any():
            full = np.flatnonzero(active & (self.frames >= self.max_steps)).tolist()
            raise ValueError(f"slot(s) {full} reached the model's {self.max_steps}-frame "
                             "limit (no sliding window)")
        self.states, text, pcm, valid = self._frame(
            self.params, self.codec_vars, self.states,
            jnp.asarray(audio, jnp.float32).reshape(self.slots, self.hop),
            self.settings.stacked, jnp.asarray(active))
        self.frames += active
        return np.asarray(text), np.asarray(pcm, np.float32), np.asarray(valid)

    def piece(self, token: int) -> Optional[str]:
        """A text token's printable piece; None for padding, control ids and models without
        a text stream."""
        return None

    def warmup(self) -> float:
        """Compiles the frame step and the join before the first client (-> seconds)."""
        from audiolm_jax.moshi.generate import Sampling

        t0 = time.perf_counter()
        self.join(0, Sampling(sampling=False))
        silence = np.zeros((self.slots, self.hop), np.float32)
        for _ in range(self.delay + 2):
            self.step(silence, np.ones(self.slots, bool))
        return time.perf_counter() - t0


class MoshiEngine(_SlotEngine):
    """A Moshi's weights (converted once), Mimi, tokenizer and the slots' states.

    ``join(slot, sampling, seed)`` starts a conversation in a slot; ``step(audio, active)``
    runs one frame of every slot (one compiled call) -> (text tokens, pcm, valid);
    ``piece(token)`` is a text token's printable piece (None for padding)."""

    def __init__(self, moshi, slots: int = 1):
        import flax.linen as nn

        from audiolm_jax.moshi.model import inference_params
        from audiolm_jax.moshi.slots import SlotSettings, fresh_slot_state
        from audiolm_jax.text.stream import TEXT_EPAD_ID, TEXT_PAD_ID

        if slots < 1:
            raise ValueError(f"--max_sessions={slots} must be at least 1")
        self.moshi, self.slots = moshi, int(slots)
        cfg = self.config = moshi.model_config
        self.user_levels, self.model_levels = cfg.n_q - cfg.dep_q, cfg.dep_q
        self._check_codec(moshi.codec, moshi.path, max(self.user_levels, self.model_levels),
                          "Moshi")
        self.delay = int(max(cfg.delays))
        self.max_steps = None if cfg.context else UNBOUNDED_CONTEXT_FRAMES
        # Weights as the step reads them (bf16 once, not cast at every frame).
        self.params = inference_params(cfg, nn.meta.unbox(moshi.params))
        self.settings = SlotSettings(self.slots)
        self._start(functools.partial(_moshi_step, cfg),
                    fresh_slot_state(cfg, 0, self.max_steps))
        self.tokenizer = moshi.text_tokenizer
        self._silent_ids = {TEXT_PAD_ID, TEXT_EPAD_ID}
        if self.tokenizer is not None:  # control ids and <unk> are never shown as text
            self._silent_ids |= set(self.tokenizer.control_ids)
            if self.tokenizer.unk_id is not None:
                self._silent_ids.add(self.tokenizer.unk_id)

    def piece(self, token: int) -> Optional[str]:
        if self.tokenizer is None or token in self._silent_ids:
            return None
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")


class DepthLMEngine(_SlotEngine):
    """A two-stream depth-layout LM of this library (``configs/lm/duplex.py``: stream 0 the
    model, stream 1 the user) with its streaming Mimi: the model's voice, no text.

    Its first frame holds the codec's codes of silence (there is nothing to condition on yet);
    a conversation is at most the temporal transformer's ``context`` frames (learned
    positions, no sliding window)."""

    def __init__(self, lm, slots: int = 1):
        import flax.linen as nn
        import jax.numpy as jnp

        from audiolm_jax.lm.depth_stream import DepthStream, init_stream_state
        from audiolm_jax.moshi.slots import SlotSettings

        if slots < 1:
            raise ValueError(f"--max_sessions={slots} must be at least 1")
        self.lm, self.slots = lm, int(slots)
        try:
            spec = self.spec = DepthStream.of_task(lm.task)
        except ValueError as e:
            raise ValueError(f"--workdir {lm.workdir!r}: serve takes a Moshi or a two-stream "
                             f"depth LM; {e}") from None
        if lm.config.tokens.get("drop_semantic", False):
            raise ValueError(f"--workdir {lm.workdir!r}: an LM trained without the semantic "
                             "level cannot be decoded to audio")
        self._check_codec(lm.codec, lm.workdir, spec.levels, "LM")
        self.user_levels = self.model_levels = spec.levels
        self.delay = spec.max_delay
        self.max_steps = spec.context
        self.params = lm.task.lm.inference_params(nn.meta.unbox(lm.params))
        self.settings = SlotSettings(self.slots, convert=_stream_sampling)
        # The codec's codes of one frame of silence: the model stream's first frame.
        streamer = self._streamer()
        _, codes = streamer.encode_step(streamer.init_encoder_state(),
                                        np.zeros((1, self.hop), np.float32))
        self.silence = np.asarray(codes).reshape(-1)[:spec.levels].astype(np.int32)
        self._start(functools.partial(_depth_step, spec, jnp.asarray(self.silence)),
                    init_stream_state(spec, 1))


def _stream_sampling(sampling):
    """A ``moshi.generate.Sampling`` as a depth LM's traced settings (audio ones only)."""
    from audiolm_jax.lm.depth_stream import StreamSampling

    return StreamSampling(np.float32(sampling.temperature if sampling.sampling else 0.0),
                          np.int32(sampling.top_k))
