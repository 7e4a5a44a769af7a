"""Moshi's commands and Python API: train (``train-lm`` with a Moshi config), load
(:func:`load_moshi`), import Kyutai's or Hugging Face's released weights (``import-moshi``).

A Moshi *workdir* is laid out like an LM's (:mod:`audiolm_jax.workdir`): ``config.json``
(``task: 'moshi'``; ``model`` holds Kyutai's keywords), ``tokens.json`` (the token
directory's metadata; what :func:`load_moshi` reads of it is ``codec.workdir``, the Mimi,
and ``text.tokenizer``, the SentencePiece model: relative paths lie inside the workdir),
``checkpoints/``. ``import-moshi`` and ``export`` write an export directory (weights only,
``export.json``) with the same two files, readable wherever a workdir is.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax import workdir as workdir_lib
from audiolm_jax.moshi.config import MoshiConfig
from audiolm_jax.moshi.model import MoshiOutput, logits as moshi_logits
from audiolm_jax.moshi.task import (TEXT_TOKENIZER_FILE, EXECUTION_KEYS, MoshiTask,
                                    fill_from_tokens, load_weights, model_config)



# ----------------------------------------------------------------------------- training
def adopt_source_model(config: Any, source: str) -> None:
    """Fine-tuning: the model section of ``source`` (a Moshi workdir, export or import)
    replaces ``config.model``'s architecture keys (the execution keys stay the config's)."""
    saved = workdir_lib.read_config_json(source)
    if saved is None:
        raise FileNotFoundError(f"config key 'train.init_from': {source!r} is not a Moshi "
                                "workdir (no config.json)")
    if saved.get("task") != "moshi":
        raise ValueError(f"config key 'train.init_from': {source!r} holds "
                         f"{workdir_lib.KINDS.get(saved.get('task'), 'another model')}, not "
                         "a Moshi")
    for key, value in saved["model"].items():
        if key not in EXECUTION_KEYS and key in config.model:
            setattr(config.model, key, value)


def train_moshi(config: Any, workdir: str) -> dict:
    from audiolm_jax.config_check import check_mesh
    from audiolm_jax.lm.tokens import load_token_dir, make_window_iterator
    from audiolm_jax.train.loop import train_loop

    if not config.data.tokens:
        raise ValueError("config key 'data.tokens' must name a token directory "
                         "(made by `audiolm-jax tokenize --stereo_streams --text_tokenizer=...`)")
    check_mesh(config, jax.device_count())
    source = config.train.get("init_from", "")
    if source:
        adopt_source_model(config, source)
    token_dir = load_token_dir(config.data.tokens)
    fill_from_tokens(config, token_dir.metadata)
    if config.train.batch_size % jax.process_count():
        raise ValueError("config key 'train.batch_size' must divide by the process count")
    # What fixes the weights' shapes must match a run already in the workdir.
    workdir_lib.check_resume_matches(workdir, config, ("model", "lora"), views={
        "model": lambda m: {k: v for k, v in dict(m).items() if k not in EXECUTION_KEYS},
        "lora": lambda l: {k: v for k, v in dict(l).items() if k != "scaling"}})
    task = MoshiTask(config)
    workdir_lib.save_config(config, workdir)
    workdir_lib.write_tokens_metadata(workdir, token_dir.metadata)
    iterator = make_window_iterator(
        token_dir, frames=int(config.data.frames),
        batch_size=int(config.train.batch_size) // jax.process_count(),
        seed=int(config.train.seed), shard_index=jax.process_index(),
        shard_count=jax.process_count(), eval_fraction=float(config.data.eval_fraction))
    state, history = train_loop(task, config, workdir, iterator)
    first = history[0] if history else {}
    last = history[-1] if history else {}
    return {"workdir": workdir, "step": int(jax.device_get(state.step)),
            "loss": last.get("loss"), "text_loss": last.get("loss/text"),
            "audio_loss": last.get("loss/audio"),
            "first_text_loss": first.get("loss/text"), "lora": task.uses_lora}


# ----------------------------------------------------------------------------- loading
# One jitted forward for every loaded Moshi (compiled once per config and shape).
_jit_logits = jax.jit(moshi_logits, static_argnums=0)


class LoadedMoshi:
    """A Moshi workdir, export or import: its config, weights, codec and text tokenizer."""

    def __init__(self, path: str, step: int | None = None):
        self.path = path
        self.config = workdir_lib.load_config(path)
        self.model_config = model_config(self.config)
        self.params, self.step = load_weights(path, step=step)
        tokens_file = os.path.join(path, workdir_lib.TOKENS_FILE)
        self.tokens = workdir_lib.read_tokens_metadata(path) if os.path.exists(
            tokens_file) else {}
        self._codec = None
        self._text_tokenizer = None

    # -------------------------------------------------------------- companions
    @property
    def codec_workdir(self) -> str | None:
        codec = self.tokens.get("codec") or {}
        return workdir_lib.resolve_path(self.path, codec["workdir"]) if codec.get(
            "workdir") else None

    @property
    def text_tokenizer_path(self) -> str | None:
        text = self.tokens.get("text") or {}
        return workdir_lib.resolve_path(self.path, text["tokenizer"]) if text.get(
            "tokenizer") else None

    @property
    def codec(self):
        """The Mimi (or other codec) the model's audio codes come from; None if not named."""
        if self._codec is None and self.codec_workdir:
            from audiolm_jax.codec.inference import load_codec

            self._codec = load_codec(self.codec_workdir)
        return self._codec

    @property
    def text_tokenizer(self):
        if self._text_tokenizer is None and self.text_tokenizer_path:
            from audiolm_jax.text.tokenizer import TextTokenizer

            self._text_tokenizer = TextTokenizer.load(self.text_tokenizer_path)
        return self._text_tokenizer

    # -------------------------------------------------------------- the model
    def logits(self, codes) -> MoshiOutput:
        """``LMModel.forward``: undelayed codes int [B, 1 + n_q, T] (text row, the model's
        rows, the user's rows) -> logits and masks aligned with them."""
        return _jit_logits(self.model_config, self.params, jnp.asarray(codes, jnp.int32))

    def generator(self, batch_size: int = 1, sampling: bool = False, **kw):
        """``LMGen``: ``step(user_codes [B, n_q - dep_q, 1])`` -> None for the first
        max(delays) frames, then [B, 1 + dep_q, 1] (see :mod:`audiolm_jax.moshi.generate`)."""
        from audiolm_jax.moshi.generate import MoshiGenerator

        return MoshiGenerator(self.model_config, self.params, batch_size=batch_size,
                              sampling=sampling, **kw)


def load_moshi(path: str, step: int | None = None) -> LoadedMoshi:
    """An imported, trained or exported Moshi workdir -> :class:`LoadedMoshi`."""
    return LoadedMoshi(path, step)


# ----------------------------------------------------------------------------- import
def _read_state(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--weights: {path!r} does not exist")
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # pylint: disable=broad-except -- name the file, one line
        # bfloat16 tensors need the torch reader (numpy has no bfloat16).
        try:
            from safetensors.torch import load_file as load_torch

            return {k: v.float().numpy() for k, v in load_torch(path).items()}
        except Exception:  # pylint: disable=broad-except
            raise ValueError(f"--weights: {path!r} is not a readable safetensors file "
                             f"({type(e).__name__}: {e})") from None


def _read_json(path: str, flag: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag}: {path!r} does not exist") from None
    except ValueError as e:
        raise ValueError(f"{flag}: {path!r} is not JSON ({e})") from None


def _import_embedded_mimi(state: dict, config: dict, folder: str, levels: int) -> str:
    """The ``audio_encoder.*`` Mimi of a Hugging Face Moshi file -> a codec workdir at
    ``folder`` (through ``import-mimi``'s reader: its tensors and its config, written aside),
    keeping the ``levels`` codebooks the LM reads. Returns the path relative to the Moshi."""
    import tempfile

    from safetensors.numpy import save_file

    from audiolm_jax.codec.mimi.importer import import_mimi

    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
                  os.path.join(tmp, "model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        import_mimi(os.path.join(tmp, "model.safetensors"), folder, max(2, int(levels)))
    return os.path.basename(folder)


def import_moshi(weights: str, workdir: str, *, config_json: str | None = None,
                 mimi: str | None = None, text_tokenizer: str | None = None,
                 lora: str | None = None, lora_scaling: float | None = None,
                 fmt: str = "safetensors") -> dict:
    """``import-moshi``: Kyutai's (``LMModel`` state dict) or Hugging Face's
    (``MoshiForConditionalGeneration``) released weights -> a Moshi export directory.

    ``config_json``: Kyutai's ``config.json`` (LM keywords; absent: Moshi 7B) or Hugging
    Face's (required for that layout; default: the ``config.json`` beside the weights).
    ``lora``: moshi-finetune's ``lora.safetensors``, merged as ``W + scaling * B @ A``
    (``lora_scaling`` default: the config's ``lora_scaling``, else Kyutai's 2.0)."""
    from audiolm_jax.export import _write_weights
    from audiolm_jax.moshi.experiment import base_config
    from audiolm_jax.moshi.kyutai_weights import from_kyutai, to_kyutai
    from audiolm_jax.moshi.lora import kyutai_lora_deltas

    out = os.path.abspath(workdir)
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"--workdir {workdir!r} exists and is not empty; import into a new one")
    from audiolm_jax.moshi import hf_weights

    state = _read_state(weights)
    hf = hf_weights.is_hf_layout(state)
    beside = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    if config_json is None and os.path.isfile(beside):
        config_json = beside
    raw = _read_json(config_json, "--config") if config_json else {}
    mimi_state = {}
    if hf:
        if not raw:
            raise ValueError(f"--weights {weights!r} is in Hugging Face's layout: give its "
                             "config.json with --config")
        cfg = hf_weights.config_from_hf(raw)
        lm_state, mimi_state = hf_weights.split_hf_state(state)
        params = hf_weights.from_hf(lm_state, cfg)
    else:
        kw = dict(raw)
        # A LoRA model's config (moshi-finetune): its adapters come with --lora, merged here.
        if kw.pop("lora", False) and not lora:
            raise ValueError(f"--config {config_json!r} describes a LoRA model (lora: true): "
                             "give its lora.safetensors with --lora")
        try:
            cfg = MoshiConfig.from_kyutai_json(kw) if raw else MoshiConfig()
        except ValueError as e:
            raise ValueError(f"--config {config_json!r}: {e}") from None
        params = from_kyutai(state, cfg)
    if lora:
        scaling = lora_scaling if lora_scaling is not None else float(
            raw.get("lora_scaling", 2.0))
        deltas = kyutai_lora_deltas(_read_state(lora), scaling)
        kyutai = to_kyutai(params, cfg)
        for key, d in deltas.items():
            if key not in kyutai:
                raise ValueError(f"--lora {lora!r}: {key} is not a weight of this Moshi")
            if tuple(kyutai[key].shape) != tuple(d.shape):
                raise ValueError(f"--lora {lora!r}: {key} has shape {tuple(d.shape)}, the "
                                 f"weight {tuple(kyutai[key].shape)}")
            kyutai[key] = np.asarray(kyutai[key], np.float32) + d
        params = from_kyutai(kyutai, cfg)
    config = base_config(**cfg.kyutai_kwargs())
    os.makedirs(out, exist_ok=True)
    from etils import epath

    _write_weights(epath.Path(out), {"params": params}, fmt)
    workdir_lib.save_config(config, out)
    tokens: dict = {}
    if mimi:
        workdir_lib.check_workdir_holds(mimi, "codec", "--mimi")
        tokens["codec"] = {"workdir": os.path.abspath(mimi)}
    elif mimi_state and raw.get("audio_encoder_config"):
        # Hugging Face's file carries its Mimi: imported beside the LM, into DIR/mimi.
        tokens["codec"] = {"workdir": _import_embedded_mimi(
            mimi_state, raw["audio_encoder_config"], os.path.join(out, "mimi"), cfg.dep_q)}
    if text_tokenizer:
        if not os.path.isfile(text_tokenizer):
            raise FileNotFoundError(f"--text_tokenizer: {text_tokenizer!r} does not exist")
        shutil.copyfile(text_tokenizer, os.path.join(out, TEXT_TOKENIZER_FILE))
        tokens["text"] = {"tokenizer": TEXT_TOKENIZER_FILE}
    workdir_lib.write_tokens_metadata(out, tokens)
    n = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    info = {"kind": "moshi", "format": fmt, "step": 0, "source": os.path.abspath(weights),
            "layout": "huggingface" if hf else "kyutai", "lora": os.path.abspath(lora)
            if lora else None}
    workdir_lib.write_export_info(out, info)
    return {"workdir": out, **info, "params": n, "dim": cfg.dim, "num_layers": cfg.num_layers,
            "n_q": cfg.n_q, "dep_q": cfg.dep_q}


# ----------------------------------------------------------------------------- LoRA export
def export_lora(workdir: str, out: str) -> dict:
    """``export --lora_only``: a LoRA run's adapters alone, as moshi-finetune writes them
    (``lora.safetensors`` + Kyutai's ``config.json`` with ``lora``, ``lora_rank``,
    ``lora_scaling``), for Kyutai's loader or ``import-moshi --lora`` on the base model."""
    from safetensors.numpy import save_file

    from audiolm_jax.moshi.lora import to_kyutai_lora
    from audiolm_jax.train.loop import restore_for_inference

    workdir_lib.check_workdir_holds(workdir, "moshi")
    if workdir_lib.is_export(workdir):
        raise ValueError(f"--workdir {workdir!r} is an export (LoRA merged): give the "
                         "training workdir of the LoRA run")
    task = MoshiTask(workdir_lib.load_config(workdir))
    if not task.uses_lora:
        raise ValueError(f"--workdir {workdir!r} is not a LoRA run (config key lora.rank is 0)")
    state, step = restore_for_inference(task, workdir, what="Moshi")
    tensors = to_kyutai_lora(jax.device_get(state.lora), task.model_config)
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"--out {out!r} exists and is not empty; choose a new folder")
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "lora.safetensors"),
              metadata={"writer": "audiolm_jax.moshi.run.export_lora", "step": str(step)})
    kyutai = {**task.model_config.kyutai_kwargs(), "lora": True, "lora_rank": task.lora_rank,
              "lora_scaling": task.lora_scaling}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(kyutai, f, indent=2)
    return {"out": out, "step": int(step), "lora_rank": task.lora_rank,
            "lora_scaling": task.lora_scaling, "tensors": len(tensors),
            "base": task.config.train.get("init_from", "")}
