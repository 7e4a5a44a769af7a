"""A workdir's files: the one module that knows their names and formats.

A *workdir* is where a command keeps one model (training writes it; the inference commands
and ``export`` read it)::

    WORKDIR/config.json       the experiment config; its ``task`` says what the folder holds
                              ('codec', 'lm', 'vqvae', 'moshi')
    WORKDIR/tokens.json       an LM's token metadata: tokenizer, rates, levels and the codec's
                              workdir (a relative path lies inside this folder)
    WORKDIR/checkpoints/      training checkpoints
    WORKDIR/samples/step_N/   samples written during training
    WORKDIR/tensorboard/      metrics
    WORKDIR/export.json       an *export directory* only (:mod:`audiolm_jax.export`): weights
                              without training state, readable wherever a workdir is

Also here: the checks that a workdir holds the expected kind of model, and that a training
run resumed in it has the same shapes. The lowest layer with the model's files: it imports
nothing of the package but :mod:`audiolm_jax.errors`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import ml_collections
from etils import epath

from audiolm_jax.errors import ConfigError

CONFIG_FILE = "config.json"
TOKENS_FILE = "tokens.json"
EXPORT_FILE = "export.json"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"

# The kinds of model a workdir holds (config.json's ``task``), as messages name them.
KINDS = {"codec": "a codec", "lm": "a language model", "vqvae": "a VQ-VAE",
         "moshi": "a Moshi"}


# ----------------------------------------------------------------------------- paths
def checkpoints_dir(workdir: str) -> str:
    return os.path.join(os.fspath(workdir), CHECKPOINTS_DIR)


def samples_dir(workdir: str, step: int) -> str:
    """Where the samples of training step ``step`` go."""
    return os.path.join(os.fspath(workdir), SAMPLES_DIR, f"step_{int(step):07d}")


def tensorboard_dir(workdir: str) -> str:
    return os.path.join(os.fspath(workdir), TENSORBOARD_DIR)


def resolve_path(workdir: str, path: str) -> str:
    """A folder recorded in a workdir's files (an LM's codec); a relative one lies inside the
    workdir, so an export directory can be moved with what it carries."""
    return path if os.path.isabs(path) or "://" in path else os.path.join(
        os.fspath(workdir), path)


# ----------------------------------------------------------------------------- config.json
def save_config(config: Any, workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    # Written aside and renamed: every process of a multi-process run writes it, and may read
    # it (the resume check) while another writes, so a reader must never see a partial file.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
                else json.dumps(dict(config), default=str, indent=2))
    os.replace(tmp, path)
    return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r} is not a model workdir: {path} is missing")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def read_config_json(workdir: str) -> dict | None:
    """The saved config as plain JSON, None when the folder has no config.json; ConfigError
    when it cannot be read."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"workdir {workdir!r}: cannot read {path} ({e})") from None


def model_kind(workdir: str) -> str:
    """What the workdir holds: 'codec', 'lm' or 'vqvae', from config.json's ``task``. A
    config saved without one: 'lm' when the folder has tokens.json, else 'codec'."""
    task = (read_config_json(workdir) or {}).get("task")
    if task in KINDS:
        return task
    return "lm" if (epath.Path(workdir) / TOKENS_FILE).exists() else "codec"


def codec_kind(workdir: str) -> str | None:
    """A codec workdir's ``model.kind`` ('cnn', 'seanet', 'mimi'), None if not recorded."""
    return ((read_config_json(workdir) or {}).get("model") or {}).get("kind")


# ----------------------------------------------------------------------------- tokens.json
def read_tokens_metadata(workdir: str) -> dict:
    return json.loads((epath.Path(workdir) / TOKENS_FILE).read_text())


def write_tokens_metadata(workdir: str, metadata: dict) -> None:
    (epath.Path(workdir) / TOKENS_FILE).write_text(json.dumps(metadata, indent=2))


# ----------------------------------------------------------------------------- export.json
def is_export(path: str) -> bool:
    return (epath.Path(path) / EXPORT_FILE).exists()


def read_export_info(path: str) -> dict:
    return json.loads((epath.Path(path) / EXPORT_FILE).read_text())


def write_export_info(path: str, info: dict) -> None:
    (epath.Path(path) / EXPORT_FILE).write_text(json.dumps(info, indent=2))


# ----------------------------------------------------------------------------- checks
def _check_task(workdir: str, saved: dict, expected, flag: str) -> None:
    task = saved.get("task")
    kinds = (expected,) if isinstance(expected, str) else tuple(expected)
    if task is not None and task not in kinds:
        wanted = " or ".join(KINDS.get(k, repr(k)) for k in kinds)
        raise ConfigError(
            f"{flag} {workdir!r} holds {KINDS.get(task, repr(task))}, not {wanted}; give "
            f"the {' or '.join(kinds)} workdir")


def check_workdir_holds(workdir: str, expected, flag: str = "--workdir") -> str:
    """For commands that load a trained model: the folder exists and, if it has a
    config.json, that config is of the ``expected`` task ('codec', 'lm'; or a tuple of those
    a command takes). Returns ``workdir``.
    Remote paths (``gs://...``) are left to the loader."""
    if "://" in workdir:
        return workdir
    if not os.path.isdir(workdir):
        raise ConfigError(f"{flag} {workdir!r} does not exist")
    saved = read_config_json(workdir)
    if saved is not None:
        _check_task(workdir, saved, expected, flag)
    return workdir


def check_resume_matches(workdir: str, config: Any, sections: Iterable[str],
                         views: dict | None = None) -> None:
    """For training: a workdir that already holds a run must hold the same task, and the
    same values in ``sections`` (the keys that fix parameter shapes), else ConfigError
    naming the keys that differ. ``views``: per section, a function from its values to what
    they mean (e.g. the quantizer's settings of its kind, defaults filled in), compared
    instead, so keys added to the defaults since the run was saved are no change."""
    saved = read_config_json(workdir)
    if saved is None:
        return
    _check_task(workdir, saved, str(config.get("task", "")), "--workdir")
    changed = []
    for section in sections:
        old, new = saved.get(section) or {}, config.get(section) or {}
        if views and section in views:
            old, new = views[section](old), views[section](new)
        for key in sorted(set(old) | set(new)):
            if json.dumps(old.get(key), default=list) != json.dumps(new.get(key), default=list):
                changed.append(f"{section}.{key}")
    if changed:
        what = KINDS.get(config.get("task"), "a model")
        raise ConfigError(f"workdir {workdir!r} holds {what} with different "
                          f"{', '.join(changed)}; use a new --workdir")
