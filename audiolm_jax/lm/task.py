"""Language-model training as a task for the shared loop.

Codes arrive as ``{'codes': int [B, S, K, frames]}`` (S streams, K levels). The token layout
(:mod:`audiolm_jax.lm.patterns`, the registered one that ``model.layout`` names) is applied on
the host, so the compiled step only sees ``inputs``/``targets``/``weights``: next-token
cross-entropy weighted per position, where the weights carry the per-level loss weights and
mask the empty slots of delayed layouts. The task never branches on the layout: the layout
says how long a training window is, how it is laid out and weighted, and which model
(:mod:`audiolm_jax.lm.model_kinds`) reads it -- e.g. layout 'depth' trains Moshi's depth
transformer, whose depth half reads the targets of the lower levels of the same step.
"""

from __future__ import annotations

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
from audiolm_jax.lm.model_kinds import make_model_kind
from audiolm_jax.lm.patterns import pattern_from_config
from audiolm_jax.lm.transformer import LMConfig
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


class LMTask(Task):
    name = "lm"
    program = "lm_train"  # tuned XLA:CPU kernels (audiolm_jax/runtime/xla_options.py)

    def __init__(self, config: Any):
        super().__init__(config)
        m, t = config.model, config.tokens
        self.num_levels, self.num_streams = int(t.num_levels), int(t.num_streams)
        codebook = int(t.codebook_size)
        self.pattern = pattern_from_config(config)
        self.rows = self.pattern.total_levels  # levels x streams
        self.context = int(m.context)
        # The embedding/head vocabulary is padded (e.g. 1025 delay ids -> 1152) so the 'vocab'
        # axis divides over the tensor axis; padded ids are masked out of the softmax.
        self.vocab_size = int(self.pattern.embed_vocab_size)
        multiple = max(int(m.get("vocab_multiple", 128)), 1)
        model_config = LMConfig(
            vocab_size=-(-self.vocab_size // multiple) * multiple, num_layers=int(m.num_layers),
            num_heads=int(m.num_heads), width=int(m.width), context=self.context,
            mlp_ratio=int(m.mlp_ratio), dropout=float(m.dropout), positions=m.positions,
            tie_embeddings=bool(m.tie_embeddings), bias=bool(m.bias),
            dtype=_DTYPES[m.dtype],
            remat=m.get("remat_policy", "full") if m.remat else "none",
            attention=m.get("attention", "blocked"), scan_layers=bool(m.get("scan_layers", False)),
            num_levels=self.pattern.model_levels)
        # The model the layout asks for; model_config is its transformer over the steps.
        self.lm = make_model_kind(self.pattern.model_kind, model_config, config, codebook)
        self.model, self.model_config = self.lm.model, self.lm.model_config
        self.optimizer, self.schedule = make_optimizer(config.optim, int(config.train.num_steps))
        weights = tuple(config.loss.get("level_weights", ()) or ()) or None
        if weights is not None and len(weights) not in (self.num_levels, self.rows):
            raise ValueError(f"config key 'loss.level_weights' holds {len(weights)} weights; "
                             f"this LM has {self.num_levels} levels x {self.num_streams} "
                             f"stream(s): give {self.num_levels} (or {self.rows}) weights")
        # Loss weights of the target positions (a window's steps 1..context).
        self._weights = self.pattern.position_weights(weights, self.context + 1)[..., 1:]
        # > 0: the LM head and the loss run this many positions at a time (large vocabularies).
        self.logits_chunk = int(config.loss.get("logits_chunk", 0))
        # > 1: each step's batch runs as this many microbatches with summed gradients.
        self.accumulation = int(config.train.get("gradient_accumulation_steps", 1))
        # The microbatch loop as straight-line code (XLA's cost analysis counts a loop's body
        # once; `audiolm-jax compile` estimates the step from an unrolled copy).
        self.unroll_accumulation = False

    # ---------------------------------------------------------------- layout
    @property
    def frames_per_example(self) -> int:
        """Codec frames a training window needs for ``context + 1`` tokens."""
        return self.pattern.frames_to_fill(self.context + 1)

    @property
    def window_frames(self) -> int:
        """Codec frames one model context holds (prompt + generated, when sampling)."""
        return self.pattern.frames_that_fit(self.context)

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
        return np.asarray(self.pattern.build(codes))[..., : self.context + 1]

    def prepare_batch(self, host_batch: Any) -> dict:
        seq = self.sequences(host_batch["codes"]).astype(np.int32)
        return {"inputs": seq[..., :-1], "targets": seq[..., 1:],
                "weights": np.broadcast_to(self._weights, seq[..., 1:].shape).copy()}

    # ---------------------------------------------------------------- state
    def init_state(self, rng: jax.Array) -> LMState:
        k_params, k_state = jax.random.split(rng)
        params = self.lm.init_params(k_params)  # boxed with logical axis names
        return LMState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=self.optimizer.init(params), rng=k_state)

    # ---------------------------------------------------------------- loss
    def loss_sums(self, params, batch, train: bool, rng=None) -> dict:
        """The batch's weighted cross-entropy sum and weight sum, and per level the unweighted
        cross-entropy sum and count of the positions it occupies: sums, so microbatches add."""
        rngs = {"dropout": rng} if train and rng is not None else None
        ce = self.lm.cross_entropy(params, batch, train, rngs, self.vocab_size,
                                   self.logits_chunk)
        w = batch["weights"]
        valid = (w > 0).astype(jnp.float32)
        return {"loss": jnp.sum(ce * w), "weight": jnp.sum(w),
                "level_ce": self.pattern.level_sums(ce * valid, first_step=1),
                "level_count": self.pattern.level_sums(valid, first_step=1),
                "tokens": jnp.sum(valid)}

    @staticmethod
    def _normalise(sums: dict) -> tuple[jnp.ndarray, dict]:
        loss = sums["loss"] / jnp.maximum(sums["weight"], 1e-9)
        return loss, {"level_losses": sums["level_ce"] / jnp.maximum(sums["level_count"], 1.0),
                      "tokens": sums["tokens"]}

    def losses(self, params, batch, train: bool, rng=None) -> tuple[jnp.ndarray, dict]:
        """(weighted mean cross-entropy, {'level_losses': unweighted mean per level,
        'tokens'})."""
        return self._normalise(self.loss_sums(params, batch, train, rng))

    def _gradients(self, params, batch: dict, rng) -> tuple[jnp.ndarray, dict, Any]:
        """(loss, aux, grads) of the whole batch; with accumulation, microbatch by microbatch
        (the same loss: each microbatch's weighted sum over the whole batch's weight)."""
        n = self.accumulation
        if n == 1:
            (loss, aux), grads = jax.value_and_grad(
                lambda p: self.losses(p, batch, True, rng), has_aux=True)(params)
            return loss, aux, grads
        total = jnp.maximum(jnp.sum(batch["weights"]), 1e-9)
        # Microbatch i takes rows i, i + n, ...: every data shard gives each microbatch its
        # share, so a microbatch stays spread over all devices.
        micro = jax.tree.map(
            lambda a: jnp.swapaxes(a.reshape((a.shape[0] // n, n) + a.shape[1:]), 0, 1), batch)

        def one(carry, xs):
            grads, sums = carry
            mb, i = xs
            def loss_fn(p):
                s = self.loss_sums(p, mb, True, jax.random.fold_in(rng, i))
                return s["loss"] / total, s
            (_, s), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s)), None

        # The sums start at zero; their per-level shapes come from the weights alone (no
        # extra trace of the model).
        levels = jnp.zeros_like(self.pattern.level_sums(micro["weights"][0], first_step=1),
                                jnp.float32)
        zero = jnp.zeros((), jnp.float32)
        zero_sums = {"loss": zero, "weight": zero, "level_ce": levels, "level_count": levels,
                     "tokens": zero}
        (grads, sums), _ = jax.lax.scan(
            one, (jax.tree.map(jnp.zeros_like, params), zero_sums), (micro, jnp.arange(n)),
            unroll=n if self.unroll_accumulation else 1)
        loss, aux = self._normalise(sums)
        return loss, aux, grads

    def train_step(self, state: LMState, batch: dict) -> tuple[LMState, dict]:
        rng, k_drop = jax.random.split(state.rng)
        loss, aux, grads = self._gradients(state.params, batch, k_drop)
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
        codec = export_codec(workdir, out, tokens, export_workdir)
        workdir_lib.write_tokens_metadata(out, tokens)
        return {"codec": codec}


def export_codec(workdir: str, out: str, tokens: dict,
                 export_workdir: Callable[[str, str, int | None], dict]) -> str | None:
    """The codec a token model's ``tokens`` name, exported into ``out/codec/`` (an export is
    copied); ``tokens`` is pointed there. Returns 'codec', or None without a codec."""
    codec = tokens.get("codec")
    if not codec or not codec.get("workdir"):
        return None
    source = workdir_lib.resolve_path(workdir, codec["workdir"])
    target = os.path.join(out, "codec")
    if workdir_lib.is_export(source):
        shutil.copytree(source, target)
    else:
        export_workdir(source, target, _codec_step(source, codec))
    codec["workdir"] = "codec"
    return "codec"


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
