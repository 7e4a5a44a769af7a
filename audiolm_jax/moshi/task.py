"""Moshi training as a task for the shared loop: from scratch, full fine-tuning, or LoRA.

A batch from a token directory made with ``--stereo_streams --text_tokenizer`` is
``{'codes': [B, 2, K, F], 'text': [B, F]}``; :meth:`MoshiTask.prepare_batch` lays it out as
Kyutai's ``LMModel`` takes it, ``[B, 1 + n_q, F]``: the text row, the model's ``dep_q``
codebooks (stream 0, the left channel) and the user's ``n_q - dep_q`` (stream 1). A directory
without text gives a text row of zero tokens (-1: no input, no loss).

The loss is moshi-finetune's (``finetune/loss.py``)::

    text  = sum(ce * w) / sum(w),  w = mask * (text_padding_weight if target in {PAD, EPAD})
    audio = sum(ce * w) / sum(w),  w = mask * (first_codebook_weight on the model's first
                                               codebook: the semantic one)
    loss  = text_weight * text + audio_weight * audio

over the logits :class:`audiolm_jax.moshi.model.MoshiLM` returns aligned with the codes (the
delays are applied inside). The user's codebooks are input only.

Fine-tuning starts from another Moshi workdir, export or import (``train.init_from``):
``lora.rank > 0`` freezes those weights and trains low-rank adapters only
(:mod:`audiolm_jax.moshi.lora`); otherwise every weight trains.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from audiolm_jax import workdir as workdir_lib
from audiolm_jax.moshi import lora as lora_lib
from audiolm_jax.moshi.config import MoshiConfig
from audiolm_jax.moshi.model import MoshiLM, init_params, param_shapes
from audiolm_jax.train.optim import make_optimizer
from audiolm_jax.train.task import Task

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# config.model keys that say how the model runs, not what it is (may change on resume).
EXECUTION_KEYS = ("dtype", "attention", "remat", "scan_layers")
TEXT_EPAD = 0  # end of padding: the frame before a word (audiolm_jax/text/stream.py)
TEXT_TOKENIZER_FILE = "text_tokenizer.model"  # an export's copy of the text tokenizer


def moshi_delays(n_q: int, dep_q: int) -> tuple[int, ...]:
    """Moshi's delay pattern for any sizes: text 0; per stream, the first (semantic)
    codebook 0 and the acoustic ones 1."""
    def stream(n):
        return [0] + [1] * (n - 1) if n else []
    return tuple([0] + stream(dep_q) + stream(n_q - dep_q))


def model_config(config: Any) -> MoshiConfig:
    """The :class:`MoshiConfig` of a Moshi experiment config's ``model`` section (Kyutai's
    keywords, plus dtype / attention / remat / scan_layers)."""
    m = dict(config.model)
    fields = {f.name for f in dataclasses.fields(MoshiConfig)}
    unknown = sorted(set(m) - fields)
    if unknown:
        raise ValueError(f"unknown config keys {['model.' + k for k in unknown]} for Moshi")
    if m.get("dtype") is not None:
        if m["dtype"] not in DTYPES:
            raise ValueError(f"config key 'model.dtype' must be one of {tuple(DTYPES)}, "
                             f"got {m['dtype']!r}")
        m["dtype"] = DTYPES[m["dtype"]]
    for key in ("delays", "depformer_weights_per_step_schedule"):
        if m.get(key) is not None:
            m[key] = tuple(m[key])
    if not m.get("delays"):
        m["delays"] = moshi_delays(int(m["n_q"]), int(m["dep_q"]))
    try:
        return MoshiConfig(**m)
    except ValueError as e:
        raise ValueError(f"config section 'model': {e}") from None


def fill_from_tokens(config: Any, metadata: dict) -> None:
    """Sizes left at 0 in ``config.model`` come from the token directory: ``card`` (its
    codebook), ``dep_q`` (its levels), ``n_q`` (levels x streams), ``text_card`` (its text
    tokenizer's vocabulary); then checks the directory can feed the model."""
    m = config.model
    levels, streams = int(metadata["num_levels"]), int(metadata["num_streams"])
    if not m.card:
        m.card = int(metadata["codebook_size"])
    if not m.dep_q:
        m.dep_q = levels
    if not m.n_q:
        m.n_q = int(m.dep_q) + (levels if streams > 1 else 0)
    text = metadata.get("text") or {}
    if not m.text_card:
        if not text.get("vocab_size"):
            raise ValueError("config key 'model.text_card' is 0 (from the token directory) but "
                             "the token directory has no text stream: tokenize with "
                             "--text_tokenizer, or set model.text_card")
        m.text_card = int(text["vocab_size"])
    if int(metadata["codebook_size"]) > int(m.card):
        raise ValueError(f"config key 'model.card' ({m.card}) is smaller than the token "
                         f"directory's codebook ({metadata['codebook_size']})")
    if text.get("vocab_size") and int(text["vocab_size"]) > int(m.text_card):
        raise ValueError(f"config key 'model.text_card' ({m.text_card}) is smaller than the "
                         f"text tokenizer's vocabulary ({text['vocab_size']})")
    user = int(m.n_q) - int(m.dep_q)
    if int(m.dep_q) > levels or user > levels:
        raise ValueError(f"the model reads {m.dep_q} + {user} codebooks per stream (model.dep_q"
                         f", model.n_q - dep_q); the token directory has {levels} levels")
    if user and streams < 2:
        raise ValueError("model.n_q > model.dep_q needs the user's stream: tokenize stereo "
                         "dialogues with --stereo_streams")


@struct.dataclass
class MoshiState:
    step: jnp.ndarray
    params: Any  # the model's weights (frozen with LoRA)
    lora: Any  # the adapters ({} without LoRA)
    opt_state: Any
    rng: jnp.ndarray


class MoshiTask(Task):
    name = "moshi"
    program = "lm_train"

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_config = model_config(config)
        self.model = MoshiLM(self.model_config)
        lcfg = config.get("lora") or ml_collections.ConfigDict(dict(rank=0))
        self.lora_rank = int(lcfg.get("rank", 0) or 0)
        self.lora_scaling = float(lcfg.get("scaling", 2.0))
        self.lora_heads = bool(lcfg.get("heads", True))
        self.lora_embeddings = bool(lcfg.get("embeddings", False))
        self.optimizer, self.schedule = make_optimizer(config.optim, int(config.train.num_steps))
        loss = config.loss
        self.text_weight = float(loss.get("text_weight", 1.0))
        self.audio_weight = float(loss.get("audio_weight", 1.0))
        self.text_padding_weight = float(loss.get("text_padding_weight", 0.5))
        self.first_codebook_weight = float(loss.get("first_codebook_weight", 100.0))

    @property
    def uses_lora(self) -> bool:
        return self.lora_rank > 0

    # ---------------------------------------------------------------- data
    def layout_codes(self, codes: np.ndarray, text: np.ndarray | None) -> np.ndarray:
        """codes [B, S, K, F] and text [B, F] (None: no transcript) -> [B, 1 + n_q, F]."""
        c = self.model_config
        codes = np.asarray(codes)
        B, F = codes.shape[0], codes.shape[-1]
        rows = [np.full((B, 1, F), c.zero_token_id, np.int32) if text is None
                else np.asarray(text, np.int32)[:, None]]
        rows.append(codes[:, 0, :c.dep_q])
        user = c.n_q - c.dep_q
        if user:
            rows.append(codes[:, 1, :user])
        return np.concatenate(rows, axis=1).astype(np.int32)

    def prepare_batch(self, host_batch: Any) -> dict:
        return {"codes": self.layout_codes(host_batch["codes"], host_batch.get("text"))}

    # ---------------------------------------------------------------- state
    def init_state(self, rng: jax.Array) -> MoshiState:
        k_params, k_lora, k_state = jax.random.split(rng, 3)
        params = init_params(self.model, k_params)  # boxed with logical axis names
        if self.uses_lora:
            adapters = lora_lib.init_lora(_unbox(params), self.lora_rank, k_lora, self.lora_heads,
                                          self.lora_embeddings)
            opt_state = self.optimizer.init(adapters)
        else:
            adapters, opt_state = {}, self.optimizer.init(params)
        return MoshiState(step=jnp.zeros((), jnp.int32), params=params, lora=adapters,
                          opt_state=opt_state, rng=k_state)

    def effective_params(self, params, adapters) -> Any:
        """The weights the model runs with: the adapters merged in (LoRA) or as they are."""
        if not self.uses_lora:
            return params
        return lora_lib.merge(params, adapters, self.lora_scaling)

    # ---------------------------------------------------------------- loss
    def loss_terms(self, params, codes) -> dict:
        """Weighted sums of the text and audio cross-entropies (see the module docstring)."""
        c = self.model_config
        out = self.model.apply({"params": params}, codes)
        text_target = codes[:, :1]
        tw = out.text_mask.astype(jnp.float32)
        padding = (text_target == c.existing_text_padding_id) | (text_target == TEXT_EPAD)
        tw = tw * jnp.where(padding, self.text_padding_weight, 1.0)
        text_ce = _masked_ce(out.text_logits, text_target, out.text_mask)
        audio_target = codes[:, 1:1 + c.dep_q]
        level = jnp.ones((c.dep_q,), jnp.float32).at[0].set(self.first_codebook_weight) \
            if c.dep_q else jnp.ones((0,), jnp.float32)
        valid = out.audio_mask.astype(jnp.float32)
        aw = valid * level[None, :, None]
        audio_ce = _masked_ce(out.audio_logits, audio_target, out.audio_mask)
        return {"text": jnp.sum(text_ce * tw), "text_weight": jnp.sum(tw),
                "audio": jnp.sum(audio_ce * aw), "audio_weight": jnp.sum(aw),
                "level_ce": jnp.sum(audio_ce * valid, axis=(0, 2)),
                "level_count": jnp.sum(valid, axis=(0, 2)),
                "text_ce": jnp.sum(text_ce * out.text_mask),
                "text_count": jnp.sum(out.text_mask.astype(jnp.float32))}

    def losses(self, params, batch: dict) -> tuple[jnp.ndarray, dict]:
        s = self.loss_terms(params, batch["codes"])
        text = s["text"] / jnp.maximum(s["text_weight"], 1e-9)
        audio = s["audio"] / jnp.maximum(s["audio_weight"], 1e-9)
        loss = self.text_weight * text + self.audio_weight * audio
        return loss, {"loss/text": text, "loss/audio": audio,
                      "loss/audio_level": s["level_ce"] / jnp.maximum(s["level_count"], 1.0),
                      "text_tokens": s["text_count"]}

    def train_step(self, state: MoshiState, batch: dict) -> tuple[MoshiState, dict]:
        rng, _ = jax.random.split(state.rng)
        if self.uses_lora:
            def loss_fn(adapters):
                return self.losses(self.effective_params(state.params, adapters), batch)
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lora)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.lora)
            state = state.replace(lora=optax.apply_updates(state.lora, updates))
        else:
            (loss, aux), grads = jax.value_and_grad(
                lambda p: self.losses(p, batch), has_aux=True)(state.params)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            state = state.replace(params=optax.apply_updates(state.params, updates))
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": self.schedule(state.step)}
        return state.replace(step=state.step + 1, opt_state=opt_state, rng=rng), metrics

    def eval_step(self, params, batch: dict) -> dict:
        loss, aux = self.losses(params, batch)
        return {"loss": loss, **aux}

    # ---------------------------------------------------------------- inference / export
    def inference_state(self, state: Any) -> dict:
        """The weights with the adapters merged in: an export of a LoRA run is a plain Moshi."""
        return {"params": self.effective_params(_unbox(state.params), state.lora)}

    def warm_start(self, state: MoshiState) -> MoshiState:
        """A fresh run with ``train.init_from`` starts from that Moshi's weights."""
        source = self.config.train.get("init_from", "")
        if not source:
            return state
        weights = load_weights(source, self.model_config)
        params = jax.tree.map(lambda old, new: jax.device_put(
            jnp.asarray(new, old.dtype), old.sharding), state.params, weights)
        return state.replace(params=params)

    def export_files(self, workdir: str, out: str, export_workdir) -> dict:
        return copy_companions(workdir, out, export_workdir)


def _unbox(tree):
    """Boxed params -> their values, without a sharding constraint (as the loop's
    ``strip_boxes``: the boxes only name axes)."""
    import flax.linen as nn

    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                        is_leaf=is_box)


def _masked_ce(logits, targets, mask) -> jax.Array:
    """Cross-entropy per position, 0 where ``mask`` is False (the logits there may be NaN:
    the delay cut, and the targets -1 or -2)."""
    logits = jnp.where(mask[..., None], logits, 0.0)
    safe = jnp.where(mask, targets, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.where(mask, ce, 0.0)


# ----------------------------------------------------------------------------- weights
def load_weights(path: str, expected: MoshiConfig | None = None, step: int | None = None
                 ) -> tuple[dict, int] | dict:
    """The (LoRA-merged) params of a Moshi workdir or export; with ``expected``, checked
    against that config's shapes (naming the first leaf that differs) and returned alone."""
    from audiolm_jax.export import load_inference_weights
    from audiolm_jax.train.checkpoint import leaf_name

    workdir_lib.check_workdir_holds(path, "moshi")
    task = MoshiTask(workdir_lib.load_config(path))
    weights, got_step = load_inference_weights(path, task, step, what="Moshi")
    params = weights["params"]
    if expected is None:
        return params, got_step
    want = {leaf_name(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(param_shapes(expected))}
    have = {leaf_name(p): tuple(np.shape(x))
            for p, x in jax.tree_util.tree_leaves_with_path(params)}
    diffs = [f"{k} {have.get(k)} -> {v}" for k, v in want.items() if have.get(k) != v]
    diffs += [f"{k} is not in this model" for k in have if k not in want]
    if diffs:
        raise ValueError(f"{path!r} holds a Moshi of another shape: {'; '.join(diffs[:4])}")
    return params


def copy_companions(workdir: str, out: str, export_workdir) -> dict:
    """An export's tokens.json with the codec exported into ``codec/`` and the text
    tokenizer copied beside it (paths relative, so the export can move)."""
    from audiolm_jax.lm.task import export_codec

    path = os.path.join(workdir, workdir_lib.TOKENS_FILE)
    if not os.path.exists(path):
        return {}
    tokens = workdir_lib.read_tokens_metadata(workdir)
    codec = export_codec(workdir, out, tokens, export_workdir)
    text = tokens.get("text") or {}
    if text.get("tokenizer"):
        shutil.copyfile(workdir_lib.resolve_path(workdir, text["tokenizer"]),
                        os.path.join(out, TEXT_TOKENIZER_FILE))
        text["tokenizer"] = TEXT_TOKENIZER_FILE
    workdir_lib.write_tokens_metadata(out, tokens)
    return {"codec": codec,
            "text_tokenizer": TEXT_TOKENIZER_FILE if text.get("tokenizer") else None}
