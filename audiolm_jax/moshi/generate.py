"""Frame-by-frame streaming generation with the Moshi LM: Kyutai's ``LMGen.step`` in JAX.

Contract (``moshi.models.lm.LMGen._step``, moshi 0.2.13), per 80 ms frame:

* in: the user's codebooks of one frame, int ``[B, n_q - dep_q, 1]`` (extra rows are
  dropped, as Kyutai does);
* out: ``None`` for the first ``max(delays)`` steps, then int32 ``[B, 1 + dep_q, 1]``: the
  text token and the model's ``dep_q`` audio codes of frame ``step - max(delays)``, already
  un-delayed.

What a step does, with ``o`` the step offset and ``CT = max(delays) + 2`` the token ring::

    ring[user row k, (o + delays[k]) % CT] = user code k      user codes enter delayed
    column = ring[:, o % CT], initial token in rows with o <= delays[k]
    z = out_norm(temporal transformer(embed(column)))         one position, KV ring of
                                                              ``context`` frames
    text = sample(text_linear(z))                             text_temperature / text_top_k
    for k < dep_q:  depformer step k (a fresh cache of dep_q positions per frame) on
                    depformer_in[k](z) + embedding of the previous token -> audio code k
    ring[:1 + dep_q, (o + 1) % CT] = text, audio codes
    output row k = ring[k, (o + 1 - max_delay + delays[k]) % CT]

The whole step, depformer included, is one jit-compiled pure function
``(params, state, user_codes) -> (state, output, valid)``; :class:`MoshiGenerator` only holds
the state between calls. Samples come from the first ``card`` / ``text_card`` ids (the
logits' width), never the initial-token ids. No classifier-free guidance, exec masks or
conditioning: Kyutai's defaults.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.layers.transformer import init_cache
from audiolm_jax.lm.sampling import sample_token_traced
from audiolm_jax.moshi.config import POSITIONAL, MoshiConfig
from audiolm_jax.moshi.model import MoshiLM, _lookup, inference_params, sin_embedding


@dataclasses.dataclass(frozen=True)
class Sampling:
    """LMGen's sampling options (its defaults). ``sampling=False`` or a temperature <= 0
    means greedy argmax, as ``sample_token`` does."""

    sampling: bool = True
    temperature: float = 0.8
    top_k: int = 250
    text_temperature: float = 0.7
    text_top_k: int = 25


class GenState(NamedTuple):
    """Everything a step carries: a pytree, so a step is one compiled call."""

    kv: Any  # the temporal transformer's KV cache (a ring of ``context`` frames)
    tokens: jax.Array  # int32 [B, 1 + n_q, max_delay + 2]: LMGen's token ring
    offset: jax.Array  # int32 [B]: steps taken by each row (rows may start at other steps)
    key: jax.Array  # PRNG key (raw uint32 [2])


def max_delay(config: MoshiConfig) -> int:
    return max(config.delays)


def init_state(config: MoshiConfig, batch_size: int, seed: int = 0,
               max_steps: Optional[int] = None) -> GenState:
    """A fresh state: empty KV ring, the token ring full of ``ungenerated_token_id``.
    ``max_steps`` sizes a full-length cache when ``context`` is None (Kyutai cannot stream
    that case at all)."""
    tcfg = config.temporal_config()
    if not tcfg.window and max_steps is None:
        raise ValueError("context=None (unbounded attention) needs max_steps to size the cache")
    kv = init_cache(tcfg, batch_size, max_steps)
    tokens = jnp.full((batch_size, config.num_codebooks, max_delay(config) + 2),
                      config.ungenerated_token_id, jnp.int32)
    return GenState(kv, tokens, jnp.zeros((batch_size,), jnp.int32), jax.random.PRNGKey(seed))


def sample_token(key, logits, use_sampling: bool, temperature: float, top_k: int):
    """Kyutai's ``sample_token`` for logits [..., V] -> int32 [...]: argmax when greedy, else
    a draw from softmax(top-k logits / temperature). The ``top_k`` largest probabilities are
    the ``top_k`` largest logits, so the order of top-k and temperature does not matter."""
    logits = logits.astype(jnp.float32)
    if not use_sampling or temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k > 0 and top_k < logits.shape[-1]:
        values, ids = jax.lax.top_k(logits, top_k)
        pick = jax.random.categorical(key, values / temperature, axis=-1)
        return jnp.take_along_axis(ids, pick[..., None], axis=-1)[..., 0].astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


class SlotSampling(NamedTuple):
    """Sampling settings as traced values (one per conversation when stacked), so sessions
    with other settings share one compiled step. Temperature 0 is greedy; top_k 0 no cut."""

    temperature: Any
    top_k: Any
    text_temperature: Any
    text_top_k: Any

    @classmethod
    def of(cls, sampling: Sampling) -> "SlotSampling":
        on = sampling.sampling
        return cls(np.float32(sampling.temperature if on else 0.0), np.int32(sampling.top_k),
                   np.float32(sampling.text_temperature if on else 0.0),
                   np.int32(sampling.text_top_k))


def _sampler(sampling):
    """-> ``draw(key, logits, text: bool)`` for static :class:`Sampling` (compiled in) or a
    traced :class:`SlotSampling`."""
    if isinstance(sampling, Sampling):
        return lambda key, logits, text: sample_token(
            key, logits, sampling.sampling,
            sampling.text_temperature if text else sampling.temperature,
            sampling.text_top_k if text else sampling.top_k)
    return lambda key, logits, text: sample_token_traced(
        key, logits, sampling.text_temperature if text else sampling.temperature,
        sampling.text_top_k if text else sampling.top_k)


# ----------------------------------------------------------------------------- model pieces
# Module-level functions run through ``MoshiLM(config).apply(..., method=fn)``: they read
# the modules ``MoshiLM.setup`` defines, so MoshiLM itself needs no generation methods.


def _temporal_step(m: MoshiLM, column, kv, offset):
    """One delayed column [B, 1 + n_q] at position ``offset`` -> (z [B, 1, dim] after
    out_norm, text logits [B, text_card] float32, new KV cache)."""
    cfg = m.config
    x = _lookup(m.emb[0], column[:, 1:2], cfg.dtype)
    for k in range(1, cfg.n_q):
        x = x + _lookup(m.emb[k], column[:, 1 + k:2 + k], cfg.dtype)
    x = x + _lookup(m.text_emb, column[:, 0:1], cfg.dtype)  # [B, 1, dim]
    if POSITIONAL[cfg.positional_embedding][1]:  # Kyutai adds it at the streaming offset
        x = x + sin_embedding(offset[:, None], cfg.dim, cfg.max_period).astype(x.dtype)
    # Rows keep their own positions in a ring cache; a full-length cache (context=None)
    # takes one position for all rows (they start together: no per-row reset there).
    z, kv = m.transformer.decode(x, kv, offset if cfg.context else offset[0])
    z = m.out_norm(z)
    logits = jnp.einsum("bsd,dv->bsv", z, m.text_linear.astype(z.dtype),
                        preferred_element_type=jnp.float32)
    return z, logits[:, 0], kv


def _depformer_step(m: MoshiLM, z, prev_token, cache, k: int):
    """Depformer step ``k`` (static) on z [B, 1, dim] and the previous token [B] (text for
    k = 0) -> (audio logits [B, card] float32, new depformer cache)."""
    cfg = m.config
    dt = cfg.dtype
    x = jnp.einsum("bsd,de->bse", z, m.depformer_in[cfg.depformer_in_index(k)].astype(dt))
    table = m.depformer_text_emb if k == 0 else m.depformer_emb[k - 1]
    x = x + _lookup(table, prev_token[:, None], dt)
    if POSITIONAL[cfg.depformer_pos_emb][1]:
        x = x + sin_embedding(jnp.full((1,), k), cfg.depformer_dim,
                              cfg.depformer_max_period).astype(x.dtype)
    y, cache = m.depformer.decode(x, cache, k)
    logits = jnp.einsum("bd,dc->bc", y[:, 0], m.linears[k].astype(y.dtype),
                        preferred_element_type=jnp.float32)
    return logits, cache


def step_fn(config: MoshiConfig, sampling, params, state: GenState, user_codes):
    """One frame, a pure function: (params, state, user codes int [B, n_q - dep_q, 1]) ->
    (state, output int32 [B, 1 + dep_q, 1], valid bool [B]). ``output`` is meaningful only
    where ``valid`` (after ``max(delays)`` steps); see the module docstring. ``sampling``:
    :class:`Sampling` (static) or :class:`SlotSampling` (traced)."""
    cfg = config
    draw = _sampler(sampling)
    model = MoshiLM(cfg)
    run = lambda fn, *args: model.apply({"params": params}, *args, method=fn)
    dq, K = cfg.dep_q, cfg.num_codebooks
    delays = np.asarray(cfg.delays, np.int32)
    CT = state.tokens.shape[2]
    B = state.tokens.shape[0]
    o = state.offset  # [B]
    b = jnp.arange(B)[:, None]

    # User codes enter the ring delayed (their own delays), as LMGen writes them.
    user_rows = np.arange(1 + dq, K)
    tokens = state.tokens.at[b, user_rows[None], (o[:, None] + delays[user_rows]) % CT].set(
        jnp.asarray(user_codes, jnp.int32)[:, :len(user_rows), 0])
    initial = jnp.asarray(model.initial_tokens())
    now = jnp.take_along_axis(tokens, jnp.broadcast_to((o % CT)[:, None, None], (B, K, 1)),
                              axis=2)[:, :, 0]
    column = jnp.where(o[:, None] <= jnp.asarray(delays)[None], initial[None], now)

    z, text_logits, kv = run(_temporal_step, column, state.kv, o)
    key, k_text, k_audio = jax.random.split(state.key, 3)
    text = draw(k_text, text_logits, True)
    new = [text]
    if dq:
        dcfg = cfg.depformer_config()
        dcache = init_cache(dcfg, B, dq, dtype=z.dtype)
        audio_keys = jax.random.split(k_audio, dq)
        prev = text
        for k in range(dq):
            logits, dcache = run(functools.partial(_depformer_step, k=k), z, prev, dcache)
            prev = draw(audio_keys[k], logits, False)
            new.append(prev)

    o = o + 1
    rows = np.arange(1 + dq)[None]
    tokens = tokens.at[b, rows, (o % CT)[:, None]].set(jnp.stack(new, axis=1))
    out_pos = (o[:, None] - max_delay(cfg) + delays[None, :1 + dq]) % CT
    output = tokens[b, rows, out_pos][:, :, None]
    return GenState(kv, tokens, o, key), output, o > max_delay(cfg)


@functools.lru_cache(maxsize=32)
def compiled_step(config: MoshiConfig, sampling: Sampling):
    """The jitted :func:`step_fn` for a config and sampling options (shared by generators
    with the same ones; the state is donated, so a step updates the caches in place)."""
    return jax.jit(functools.partial(step_fn, config, sampling), donate_argnums=(1,))


# ----------------------------------------------------------------------------- user API


class MoshiGenerator:
    """Streaming generation, one frame per :meth:`step` (``LMGen.step``'s contract).

    ``params``: MoshiLM params (boxed or not; unscanned or ``scan_layers``). ``sampling``,
    ``temperature``, ``top_k``, ``text_temperature``, ``text_top_k``: LMGen's
    ``use_sampling``, ``temp``, ``top_k``, ``temp_text``, ``top_k_text`` (its defaults, but
    greedy unless asked). ``max_steps``: only for ``context=None``. ``state`` is donated to
    each step: read it, but keep no references across steps.
    """

    def __init__(self, config: MoshiConfig, params, batch_size: int = 1,
                 sampling: bool = False, temperature: float = 0.8, top_k: int = 250,
                 text_temperature: float = 0.7, text_top_k: int = 25, seed: int = 0,
                 max_steps: Optional[int] = None):
        self.config = config
        self.params = inference_params(config, jax.tree.map(jnp.asarray, nn.meta.unbox(params)))
        self.batch_size = int(batch_size)
        self.sampling = Sampling(bool(sampling), float(temperature), int(top_k),
                                 float(text_temperature), int(text_top_k))
        self.seed = seed
        self.max_steps = max_steps
        self.max_delay = max_delay(config)
        self._step = compiled_step(config, self.sampling)
        self.reset()

    def reset(self, seed: Optional[int] = None) -> None:
        """Back to the start of a conversation (fresh caches; the PRNG from ``seed``, or the
        constructor's)."""
        if seed is not None:
            self.seed = seed
        self.state = init_state(self.config, self.batch_size, self.seed, self.max_steps)
        self.frames = 0

    @property
    def offset(self) -> int:
        """Steps taken since the last reset (LMGen's ``offset_cpu``)."""
        return self.frames

    def _check(self, user_codes) -> jax.Array:
        cfg = self.config
        need = cfg.n_q - cfg.dep_q
        codes = np.asarray(user_codes)
        if (codes.ndim != 3 or codes.shape[0] != self.batch_size or codes.shape[1] < need
                or codes.shape[2] != 1):
            raise ValueError(f"user_codes must be [B={self.batch_size}, n_q - dep_q = {need}, "
                             f"1], got shape {codes.shape}")
        if self.max_steps is not None and self.frames >= self.max_steps:
            raise ValueError(f"max_steps={self.max_steps} frames already generated")
        return jnp.asarray(codes[:, :need], jnp.int32)

    def step(self, user_codes) -> Optional[np.ndarray]:
        """The user's codebooks of one frame, int ``[B, n_q - dep_q, 1]`` -> None for the
        first ``max(delays)`` steps, then int32 ``[B, 1 + dep_q, 1]`` (text token, then the
        model's audio codes) of frame ``offset - 1 - max(delays)``."""
        codes = self._check(user_codes)
        self.state, out, valid = self._step(self.params, self.state, codes)
        self.frames += 1
        if not bool(np.asarray(valid).all()):
            return None
        return np.asarray(out)


def generate(config: MoshiConfig, params, user_codes, **kwargs) -> np.ndarray:
    """:meth:`MoshiGenerator.step` over user codes ``[B, n_q - dep_q, T]`` -> int32
    ``[B, 1 + dep_q, T - max(delays)]``; ``kwargs`` go to :class:`MoshiGenerator`."""
    user_codes = np.asarray(user_codes)
    gen = MoshiGenerator(config, params, batch_size=user_codes.shape[0], **kwargs)
    outs = [out for t in range(user_codes.shape[2])
            if (out := gen.step(user_codes[:, :, t:t + 1])) is not None]
    if not outs:
        return np.zeros((user_codes.shape[0], 1 + config.dep_q, 0), np.int32)
    return np.concatenate(outs, axis=2)
