"""The server's model side: every session's frame in one compiled call.

A server with ``slots`` sessions holds, per slot, a Moshi generator state (the conversation's
KV ring, token ring, offset, PRNG key and sampling settings, :mod:`audiolm_jax.moshi.slots`)
and Mimi's streaming encoder and decoder states. One jitted ``frame`` function takes 80 ms of
audio per slot and runs, for all slots at once (``jax.vmap`` over the slot axis):

    Mimi encode -> Moshi step (temporal transformer + depformer) -> Mimi decode

-> the model's text token and 80 ms of its voice per slot. Slots whose client sent nothing
this frame are ``inactive``: their states do not move (Mimi's are kept with a select; the
generator's are kept by :func:`~audiolm_jax.moshi.slots.one_slot_step`). One program per
slot count: sessions join (``join``: fresh states, their seed and sampling) and leave
without a compile. Used from one thread only (the server's compute thread).
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import numpy as np

UNBOUNDED_CONTEXT_FRAMES = 3000  # a model without a sliding window: 4 minutes per session


def _keep_where(active, new, old):
    """Per slot: ``new`` where ``active`` [S], else ``old`` (pytrees with a leading S)."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(
        lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def frame_fn(lm_config, model, user_levels: int, num_levels: int, lm_params, codec_vars,
             states, audio, sampling, active):
    """The pure per-frame function (see the module docstring). ``states``: (generator
    states, Mimi encoder states, Mimi decoder states), each stacked ``[S, ...]`` over batch-1
    states; ``audio`` float32 ``[S, hop]``; ``sampling`` a ``SlotSampling`` of ``[S]``;
    ``active`` bool ``[S]`` -> (states, text int32 [S], pcm float32 [S, hop], valid [S])."""
    import jax

    from audiolm_jax.codec.mimi.streaming import decode_step, encode_step
    from audiolm_jax.moshi.slots import slots_step

    lm, enc, dec = states
    enc_new, codes = jax.vmap(
        lambda s, a: encode_step(model, codec_vars, s, a[None], num_levels))(enc, audio)
    enc = _keep_where(active, enc_new, enc)
    user = codes[:, 0, 0, :user_levels]  # [S, user levels]
    lm, out, valid = slots_step(lm_config, lm_params, lm, user, sampling, active)
    dec_new, pcm = jax.vmap(
        lambda s, c: decode_step(model, codec_vars, s, c[None, None]))(dec, out[:, 1:])
    dec = _keep_where(valid, dec_new, dec)
    return (lm, enc, dec), out[:, 0], pcm[:, 0], valid


class MoshiEngine:
    """Weights (converted once), Mimi, tokenizer and the slots' states of one server.

    ``join(slot, sampling, seed)`` starts a conversation in a slot; ``step(audio, active)``
    runs one frame of every slot (one compiled call) -> (text tokens, pcm, valid);
    ``piece(token)`` is a text token's printable piece (None for padding)."""

    def __init__(self, moshi, slots: int = 1):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        from audiolm_jax.codec.mimi.streaming import MimiStreamer
        from audiolm_jax.moshi.slots import fresh_slot_state, set_slot
        from audiolm_jax.text.stream import TEXT_EPAD_ID, TEXT_PAD_ID

        if slots < 1:
            raise ValueError(f"--max_sessions={slots} must be at least 1")
        self.moshi, self.slots = moshi, int(slots)
        codec = moshi.codec
        if codec is None:
            raise ValueError(f"--workdir {moshi.path!r} names no codec (tokens.json 'codec'): "
                             "serve needs the Mimi its codes come from")
        if getattr(codec.config.model, "kind", None) != "mimi":
            raise ValueError("serve needs a streaming Mimi codec; this workdir's codec is "
                             f"{getattr(codec.config.model, 'kind', None)!r}")
        cfg = self.config = moshi.model_config
        self.user_levels, self.model_levels = cfg.n_q - cfg.dep_q, cfg.dep_q
        if max(self.user_levels, self.model_levels) > codec.num_levels:
            raise ValueError(f"the Moshi reads {max(self.user_levels, self.model_levels)} "
                             f"codebooks per stream; its codec has {codec.num_levels}")
        self.sample_rate, self.hop = int(codec.sample_rate), int(codec.hop_length)
        self.frame_rate = float(codec.frame_rate)
        self.delay = int(max(cfg.delays))
        self.max_steps = None if cfg.context else UNBOUNDED_CONTEXT_FRAMES
        self.params = jax.tree.map(jnp.asarray, nn.meta.unbox(moshi.params))
        streamer = MimiStreamer(codec.config, codec.params, codec.vq_stats, batch=1)
        # Everything on one device with one kind of sharding: a restored codec's arrays carry
        # its training mesh, and states that pick it up at the first step would be a new
        # input type for the next (a second compile).
        one_device = functools.partial(jax.device_put, device=jax.devices()[0])
        self.params = one_device(self.params)
        self.codec_vars = one_device(streamer.variables)
        # A slot's fresh states: the generator's (its key set at join) and Mimi's.
        self._fresh = one_device((fresh_slot_state(cfg, 0, self.max_steps),
                                  streamer.init_encoder_state(), streamer.init_decoder_state()))
        self.states = jax.tree.map(lambda x: jnp.stack([x] * self.slots), self._fresh)
        from audiolm_jax.moshi.slots import SlotSettings

        self.settings = SlotSettings(self.slots)
        self.frames = np.zeros(self.slots, np.int64)
        self._frame = jax.jit(functools.partial(
            frame_fn, cfg, streamer.model, self.user_levels, streamer.num_levels),
            donate_argnums=(2,))

        def join(states, fresh, slot, seed):
            lm, enc, dec = fresh
            lm = lm._replace(key=jax.random.PRNGKey(seed))
            return set_slot(states, slot, (lm, enc, dec))

        self._join = jax.jit(join, donate_argnums=(0,))
        self.tokenizer = moshi.text_tokenizer
        self._silent_ids = {TEXT_PAD_ID, TEXT_EPAD_ID}
        if self.tokenizer is not None:  # control ids and <unk> are never shown as text
            self._silent_ids |= set(self.tokenizer.control_ids)
            if self.tokenizer.unk_id is not None:
                self._silent_ids.add(self.tokenizer.unk_id)

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
        if self.tokenizer is None or token in self._silent_ids:
            return None
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")

    def warmup(self) -> float:
        """Compiles the frame step and the join before the first client (-> seconds)."""
        from audiolm_jax.moshi.generate import Sampling

        t0 = time.perf_counter()
        self.join(0, Sampling(sampling=False))
        silence = np.zeros((self.slots, self.hop), np.float32)
        for _ in range(self.delay + 2):
            self.step(silence, np.ones(self.slots, bool))
        return time.perf_counter() - t0
