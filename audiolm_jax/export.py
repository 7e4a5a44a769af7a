"""Inference exports: a trained model's weights and config, without training state.

``export(workdir, out)`` writes an *export directory*::

    EXPORT/export.json      {"kind": "codec" | "lm", "format": "orbax" | "safetensors",
                             "step": N, "source": the training workdir}
    EXPORT/config.json      the training config, unchanged
    EXPORT/weights/         orbax (format orbax), or
    EXPORT/weights.safetensors   flat "params/encoder/.../kernel" keys (format safetensors)
    EXPORT/tokens.json      LM only: its token metadata; a codec-token LM's codec is exported
    EXPORT/codec/           beside it, and tokens.json points there (relative path "codec")

A codec keeps ``params`` and ``vq_stats`` (the codebooks live in the EMA statistics); an LM keeps
``params``. Optimizer state, the discriminator and the balancer are left behind.
:func:`load_inference_weights` is the one loader every inference command uses, so a command that
takes a workdir takes an export directory too.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from etils import epath

from audiolm_jax.train.checkpoint import absolute

EXPORT_FILE = "export.json"
FORMATS = ("orbax", "safetensors")
# What inference needs from each kind of train state.
INFERENCE_KEYS = {"codec": ("params", "vq_stats"), "lm": ("params",)}


def is_export(path: str) -> bool:
    return (epath.Path(path) / EXPORT_FILE).exists()


def _read_json(path: epath.Path) -> dict:
    return json.loads(path.read_text())


def _kind(workdir: str) -> str:
    from audiolm_jax.codec.inference import load_config

    task = load_config(workdir).get("task")
    if task in INFERENCE_KEYS:
        return task
    return "lm" if (epath.Path(workdir) / "tokens.json").exists() else "codec"


# ----------------------------------------------------------------------------- loading
def load_inference_weights(path: str, task: Any, kind: str, step: int | None = None,
                           what: str = "model") -> tuple[dict, int]:
    """({'params': ..., ['vq_stats': ...]}, step) from a training workdir or an export dir."""
    if is_export(path):
        info = _read_json(epath.Path(path) / EXPORT_FILE)
        if info.get("kind") != kind:
            raise ValueError(f"{path!r} is an export of a {info.get('kind')}, not of a {kind}")
        if step is not None and step != info["step"]:
            raise ValueError(f"{path!r} holds step {info['step']} only, not step {step}")
        return _read_weights(epath.Path(path), info["format"]), int(info["step"])
    from audiolm_jax.train.loop import restore_for_inference

    state, step = restore_for_inference(task, path, step, what=what)
    return {k: getattr(state, k) for k in INFERENCE_KEYS[kind]}, step


def _read_weights(folder: epath.Path, fmt: str) -> dict:
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        flat = load_file(os.fspath(folder / "weights.safetensors"))
        tree: dict = {}
        for key, value in flat.items():
            node = tree
            *parents, leaf = key.split("/")
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = jax.numpy.asarray(value)
        return tree
    if fmt != "orbax":
        raise ValueError(f"{folder / EXPORT_FILE}: unknown format {fmt!r}")
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    location = folder / "weights"
    meta = checkpointer.metadata(location)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    # Restore onto this machine's first device, whatever devices wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    return checkpointer.restore(location, target)


# ----------------------------------------------------------------------------- writing
def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, key + "/"))
        elif value is not None:
            flat[key] = np.ascontiguousarray(np.asarray(value))
    return flat


def _write_weights(out: epath.Path, weights: dict, fmt: str) -> None:
    weights = jax.tree.map(np.asarray, jax.device_get(weights))
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(_flatten(weights), os.fspath(out / "weights.safetensors"),
                  metadata={"writer": "audiolm_jax.export"})
        return
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "weights", weights)
    checkpointer.wait_until_finished()


def export(workdir: str, out: str, fmt: str = "orbax", step: int | None = None) -> dict:
    """Writes the inference export of ``workdir``'s latest (or given) checkpoint to ``out``."""
    from audiolm_jax.codec.inference import load_config, save_config

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if not (epath.Path(workdir) / "config.json").exists():
        raise FileNotFoundError(f"--workdir {workdir!r} is not a training workdir "
                                "(no config.json)")
    if is_export(workdir):
        raise ValueError(f"--workdir {workdir!r} is already an export")
    out_path = absolute(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise ValueError(f"--out {out!r} exists and is not empty; choose a new folder")
    kind = _kind(workdir)
    config = load_config(workdir)
    if kind == "codec":
        from audiolm_jax.codec.task import CodecTask

        task = CodecTask(config)
    else:
        from audiolm_jax.lm.task import LMTask

        task = LMTask(config)
    weights, step = load_inference_weights(workdir, task, kind, step, what=kind)
    out_path.mkdir(parents=True, exist_ok=True)
    _write_weights(out_path, weights, fmt)
    save_config(config, os.fspath(out_path))
    summary = {"kind": kind, "format": fmt, "step": int(step),
               "source": os.fspath(absolute(workdir))}
    if kind == "lm":
        summary["codec"] = _export_lm_tokens(workdir, out_path, fmt)
    (out_path / EXPORT_FILE).write_text(json.dumps(summary, indent=2))
    n = sum(int(np.size(x)) for x in jax.tree.leaves(weights))
    return {"out": os.fspath(out_path), **summary, "num_weights": n}


def _export_lm_tokens(workdir: str, out_path: epath.Path, fmt: str) -> str | None:
    """Copies tokens.json; a codec-token LM gets its codec exported into ``codec/``."""
    tokens = _read_json(epath.Path(workdir) / "tokens.json")
    codec = tokens.get("codec")
    if codec and codec.get("workdir"):
        source = resolve_codec_path(workdir, codec["workdir"])
        if is_export(source):
            shutil.copytree(source, os.fspath(out_path / "codec"))
        else:
            export(source, os.fspath(out_path / "codec"), fmt, step=_codec_step(source, codec))
        codec["workdir"] = "codec"  # relative: resolved against the LM export's folder
    (out_path / "tokens.json").write_text(json.dumps(tokens, indent=2))
    return "codec" if codec else None


def _codec_step(codec_dir: str, codec: dict) -> int | None:
    """The codec checkpoint the tokens were made with, if it is still kept; else the latest
    (what ``generate`` uses for a workdir)."""
    from absl import logging

    from audiolm_jax.train.checkpoint import Checkpointer

    step = codec.get("checkpoint_step")
    kept = Checkpointer(os.path.join(codec_dir, "checkpoints"), async_save=False).all_steps()
    if step is not None and step not in kept:
        logging.warning("codec step %s (used for the tokens) is no longer kept in %s; exporting "
                        "its latest step", step, codec_dir)
        return None
    return step


def resolve_codec_path(lm_dir: str, codec_dir: str) -> str:
    """An LM's recorded codec folder; a relative one lies inside the LM's own folder."""
    return codec_dir if os.path.isabs(codec_dir) or "://" in codec_dir else os.path.join(
        os.fspath(lm_dir), codec_dir)
