"""Language-model training as a task for the shared loop.

Codes arrive as ``{'codes': int [B, S, K, frames]}`` (S streams, K levels). The token layout
(:mod:`audiolm_jax.lm.patterns`) is applied on the host, so the compiled step only sees
``inputs``/``targets``/``weights``: next-token cross-entropy weighted per position, where the
weights carry the per-level loss weights and mask the empty slots of delayed layouts.

Layout 'depth' trains Moshi's depth transformer (:mod:`audiolm_jax.lm.depth`) on the same
``[B, rows, T]`` batches: its depth half reads the targets of the lower levels of the same step
(teacher forcing), and with two streams it predicts all S*K rows of each frame; the per-level
weights decide which of them count.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct

from audiolm_jax import workdir as workdir_lib
from audiolm_jax.lm.depth import DepthTransformerLM, init_depth_params, make_depth_lm_config
from audiolm_jax.lm.patterns import make_pattern
from audiolm_jax.lm.transformer import Transformer, LMConfig, init_params
from audiolm_jax.train.checkpoint import Checkpointer
from audiolm_jax.train.optim import make_optimizer
from audiolm_jax.train.task import Task

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@struct.dataclass
class LMState:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray


def mask_padded_vocab(logits: jnp.ndarray, vocab_size: int) -> jnp.ndarray:
    """Sets the logits of padding ids (>= vocab_size) to a large negative value."""
    if logits.shape[-1] == vocab_size:
        return logits
    keep = jnp.arange(logits.shape[-1]) < vocab_size
    return jnp.where(keep, logits, jnp.finfo(logits.dtype).min / 2)


class LMTask(Task):
    name = "lm"
    program = "lm_train"  # tuned XLA:CPU kernels (audiolm_jax/runtime/xla_options.py)

    def __init__(self, config: Any):
        super().__init__(config)
        m, t = config.model, config.tokens
        self.num_levels, self.num_streams = int(t.num_levels), int(t.num_streams)
        codebook = int(t.codebook_size)
        kw = {}
        if m.layout == "flat":
            kw["level_offsets"] = bool(m.level_offsets)
        if m.layout == "delay" and m.get("delays"):
            kw["delays"] = tuple(int(d) for d in m.delays)
        if m.layout == "depth":  # Moshi: semantic level undelayed, acoustic levels late
            kw["acoustic_delay"] = int(m.acoustic_delay)
            kw["num_semantic"] = 0 if t.get("drop_semantic", False) else 1
        self.pattern = make_pattern(m.layout, self.num_levels, codebook,
                                    num_streams=self.num_streams, **kw)
        self.rows = self.num_levels * self.num_streams
        self.flat = m.layout == "flat"
        self.depth = m.layout == "depth"
        self.context = int(m.context)
        # The embedding/head vocabulary is padded (e.g. 1025 delay ids -> 1152) so the 'vocab'
        # axis divides over the tensor axis; padded ids are masked out of the softmax.
        self.vocab_size = int(self.pattern.embed_vocab_size)
        multiple = max(int(m.get("vocab_multiple", 128)), 1)
        self.model_config = LMConfig(
            vocab_size=-(-self.vocab_size // multiple) * multiple, num_layers=int(m.num_layers),
            num_heads=int(m.num_heads), width=int(m.width), context=self.context,
            mlp_ratio=int(m.mlp_ratio), dropout=float(m.dropout), positions=m.positions,
            tie_embeddings=bool(m.tie_embeddings), bias=bool(m.bias),
            dtype=_DTYPES[m.dtype], remat=bool(m.remat),
            num_levels=1 if self.flat else self.rows)
        if self.depth:
            d = config.depth
            if int(d.width) % int(d.num_heads):
                raise ValueError(f"config key 'depth.width' ({d.width}) must be divisible by "
                                 f"'depth.num_heads' ({d.num_heads})")
            # model_config stays the temporal transformer's; the depth LM holds both.
            self.depth_config = make_depth_lm_config(
                self.model_config, num_layers=int(d.num_layers), num_heads=int(d.num_heads),
                width=int(d.width), codebook_size=codebook)
            self.model_config = self.depth_config.temporal
            self.model = DepthTransformerLM(self.depth_config)
        else:
            self.model = Transformer(self.model_config)
        self.optimizer, self.schedule = make_optimizer(config.optim, int(config.train.num_steps))
        weights = tuple(config.loss.get("level_weights", ()) or ()) or None
        if weights is not None and len(weights) not in (self.num_levels, self.rows):
            raise ValueError(f"config key 'loss.level_weights' holds {len(weights)} weights; "
                             f"this LM has {self.num_levels} levels x {self.num_streams} "
                             f"stream(s): give {self.num_levels} (or {self.rows}) weights")
        self._weights, self._level_ids = self._position_weights(weights)

    # ---------------------------------------------------------------- layout
    @property
    def frames_per_example(self) -> int:
        """Codec frames a training window needs for ``context + 1`` tokens."""
        if self.flat:
            return math.ceil((self.context + 1) / self.rows)
        return self.context + 1 - self.max_delay

    @property
    def max_delay(self) -> int:
        """Steps the layout adds after the last frame (delay/depth layouts; 0 otherwise)."""
        inner = getattr(self.pattern, "inner", self.pattern)  # two streams: the widened layout
        return int(getattr(inner, "max_delay", 0))

    def _position_weights(self, weights):
        """(weights, level ids) of the target positions, from the per-level loss weights."""
        n = self.context + 1
        if self.flat:
            w = self.pattern.level_weights(weights, n)[1:]
            ids = self.pattern.level_ids(n)[1:] if hasattr(self.pattern, "level_ids") else None
            return w.astype(np.float32), np.asarray(ids) % self.rows
        per_row = self.pattern.level_weights(weights)  # [rows]
        valid = np.asarray(self.pattern.valid_mask(self.frames_per_example))
        valid = valid.reshape(self.rows, -1)[:, 1:]
        return (per_row[:, None] * valid).astype(np.float32), np.arange(self.rows)

    def sequences(self, codes: np.ndarray) -> np.ndarray:
        """[B, S, K, frames] codes -> laid-out token sequences of context + 1 tokens."""
        codes = np.asarray(codes)
        lo = 1 if self.config.tokens.get("drop_semantic", False) else 0
        codes = codes[:, :, lo:lo + self.num_levels]  # e.g. the first 8 of 32 Mimi levels
        if codes.shape[2] != self.num_levels:
            raise ValueError(f"codes have {codes.shape[2]} levels from level {lo}; the LM "
                             f"needs {self.num_levels}")
        if self.num_streams == 1:
            codes = codes[:, 0]
        seq = np.asarray(self.pattern.build(codes))
        if self.flat:
            return seq[:, : self.context + 1]
        return seq.reshape(seq.shape[0], self.rows, -1)[..., : self.context + 1]

    def prepare_batch(self, host_batch: Any) -> dict:
        seq = self.sequences(host_batch["codes"]).astype(np.int32)
        return {"inputs": seq[..., :-1], "targets": seq[..., 1:],
                "weights": np.broadcast_to(self._weights, seq[..., 1:].shape).copy()}

    # ---------------------------------------------------------------- state
    def init_state(self, rng: jax.Array) -> LMState:
        k_params, k_state = jax.random.split(rng)
        init = init_depth_params if self.depth else init_params
        params = init(self.model, k_params)  # boxed with logical axis names
        return LMState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=self.optimizer.init(params), rng=k_state)

    # ---------------------------------------------------------------- loss
    def losses(self, params, batch, train: bool, rng=None) -> tuple[jnp.ndarray, dict]:
        rngs = {"dropout": rng} if train and rng is not None else None
        if self.depth:  # the depth half is teacher forced with the lower levels' targets
            logits = self.model.apply({"params": params}, batch["inputs"], batch["targets"],
                                      train=train, rngs=rngs)
        else:
            logits = self.model.apply({"params": params}, batch["inputs"], train=train,
                                      rngs=rngs)
        logits = mask_padded_vocab(logits, self.vocab_size)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        w = batch["weights"]
        loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1e-9)
        # Unweighted mean cross-entropy per level (over the positions that level occupies).
        valid = (w > 0).astype(jnp.float32)
        if self.flat:
            onehot = jax.nn.one_hot(self._level_ids, self.rows, dtype=jnp.float32)  # [T, R]
            per = jnp.einsum("bt,tr->r", ce * valid, onehot)
            cnt = jnp.einsum("bt,tr->r", valid, onehot)
        else:
            per, cnt = jnp.sum(ce * valid, axis=(0, 2)), jnp.sum(valid, axis=(0, 2))
        return loss, {"level_losses": per / jnp.maximum(cnt, 1.0), "tokens": jnp.sum(valid)}

    def train_step(self, state: LMState, batch: dict) -> tuple[LMState, dict]:
        rng, k_drop = jax.random.split(state.rng)
        (loss, aux), grads = jax.value_and_grad(
            lambda p: self.losses(p, batch, True, k_drop), has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "loss/level": aux["level_losses"],
                   "grad_norm": optax.tree.norm(grads), "learning_rate": self.schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             rng=rng), metrics

    def eval_step(self, params, batch: dict) -> dict:
        loss, aux = self.losses(params, batch, False)
        return {"loss": loss, "level_losses": aux["level_losses"], "tokens": aux["tokens"]}

    # ---------------------------------------------------------------- export
    def export_files(self, workdir: str, out: str,
                     export_workdir: Callable[[str, str, int | None], dict]) -> dict:
        """tokens.json; a codec-token LM's codec is exported beside it into ``codec/``, and
        tokens.json points there (a relative path: resolved against the export's folder)."""
        tokens = workdir_lib.read_tokens_metadata(workdir)
        codec = tokens.get("codec")
        if codec and codec.get("workdir"):
            source = workdir_lib.resolve_path(workdir, codec["workdir"])
            target = os.path.join(out, "codec")
            if workdir_lib.is_export(source):
                shutil.copytree(source, target)
            else:
                export_workdir(source, target, _codec_step(source, codec))
            codec["workdir"] = "codec"
        workdir_lib.write_tokens_metadata(out, tokens)
        return {"codec": "codec" if codec else None}


def _codec_step(codec_dir: str, codec: dict) -> int | None:
    """The codec checkpoint the tokens were made with, if it is still kept; else the latest
    (what ``generate`` uses for a workdir)."""
    step = codec.get("checkpoint_step")
    kept = Checkpointer(workdir_lib.checkpoints_dir(codec_dir), async_save=False).all_steps()
    if step is not None and step not in kept:
        logging.warning("codec step %s (used for the tokens) is no longer kept in %s; exporting "
                        "its latest step", step, codec_dir)
        return None
    return step
