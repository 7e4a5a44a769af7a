"""Teachers for semantic distillation: the ``distill`` config section, how a teacher is found,
two teachers, and precomputing features for a folder.

A teacher is any Python callable ``teacher(audio, sample_rate, **kwargs) -> features`` with
``audio`` float32 ``[B, T]`` and ``features`` float ``[B, frames, dim]``, named in the config as
``distill.function = 'package.module:name'`` with keyword arguments from
``distill.function_kwargs``. It runs on the host, once per batch (``distill.teacher =
'function'``), or once per file ahead of training (``'precomputed'``: features stored beside the
audio, see ``audiolm_jax/data/features.py``).

* :func:`tiny_random_teacher`: a fixed random projection of log spectra (numpy, seeded) — a
  cheap stand-in with speech-like structure, for tests and the tiny config.
* :func:`hf_ssl_teacher`: a speech SSL model (WavLM, HuBERT, wav2vec 2.0) from a local
  transformers checkpoint; needs the ``peers`` extra (torch + transformers), imported lazily.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from typing import Any, Callable

import ml_collections
import numpy as np

Teacher = Callable[..., np.ndarray]


def distill_config(function_kwargs: dict | None = None, **overrides) -> ml_collections.ConfigDict:
    """The ``distill`` config section (off by default).

    enabled: add the distillation loss. weight: its weight in the generator loss (the
      projection head always learns from the unweighted loss, so weight 0 makes it a probe).
    teacher: 'function' (called per batch) or 'precomputed' (``<audio>.<features_suffix>.npy``
      beside each audio file of a folder ``data.source``).
    teacher_dim: the teacher's feature dimension (the learned projection's output size).
    feature_rate: teacher frames per second of audio; 0 derives it per batch from the frame
      count (function teachers only; precomputed features need it, and
      ``data.sample_rate / feature_rate`` must be a whole number of samples).
    function, function_kwargs: the teacher callable and its keyword arguments (also used by
      ``audiolm-jax precompute-teacher``).
    """
    if function_kwargs is None:
        function_kwargs = dict(dim=16, frame_rate=50.0, seed=0)  # tiny_random_teacher's
    c = ml_collections.ConfigDict(dict(
        enabled=False, weight=1.0, teacher="function", teacher_dim=16, feature_rate=0.0,
        function="audiolm_jax.codec.teachers:tiny_random_teacher",
        function_kwargs=ml_collections.ConfigDict(dict(function_kwargs)),
        features_suffix="teacher"))
    c.update(overrides)
    return c


# ------------------------------------------------------------------ finding the teacher
def resolve_function(spec: str, key: str = "distill.function") -> Teacher:
    """The callable named by ``'module:name'``; ValueError naming ``key`` otherwise."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"config key '{key}' must look like 'package.module:function', "
                         f"got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"config key '{key}': cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"config key '{key}': module {module_name!r} has no function {attr!r}")
    return fn


def _kwargs(distill: Any) -> dict[str, Any]:
    kw = distill.get("function_kwargs", None) or {}
    return dict(kw.to_dict() if hasattr(kw, "to_dict") else kw)


def make_teacher(distill: Any) -> Teacher:
    """``teacher(audio, sample_rate)`` from the config, kwargs bound; signature checked."""
    fn = resolve_function(distill.function)
    kwargs = _kwargs(distill)
    try:
        inspect.signature(fn).bind(np.zeros((1, 1), np.float32), 1, **kwargs)
    except TypeError as e:
        raise ValueError(f"config key 'distill.function_kwargs' does not fit "
                         f"{distill.function}: {e}") from None
    return functools.partial(fn, **kwargs)


def check_teacher_files(distill: Any) -> None:
    """Training-time check that path arguments (``*_path`` kwargs) exist."""
    for name, value in _kwargs(distill).items():
        if name.endswith("_path") and not (value and os.path.exists(os.path.expanduser(value))):
            raise ValueError(f"config key 'distill.function_kwargs.{name}': {value!r} does not "
                             "exist (a local model folder; nothing is downloaded)")


def check_features(features: Any, batch: int, dim: int, what: str) -> np.ndarray:
    """float32 [batch, frames, dim] or a ValueError naming the config key at fault."""
    features = np.asarray(features)
    if features.ndim != 3 or features.shape[0] != batch:
        raise ValueError(f"config key 'distill.function': {what} returned shape "
                         f"{features.shape}, expected [batch={batch}, frames, dim]")
    if features.shape[2] != dim:
        raise ValueError(f"config key 'distill.teacher_dim' is {dim}, but {what} gives "
                         f"{features.shape[2]}-dimensional features")
    return features.astype(np.float32)


# ------------------------------------------------------------------ teachers
def tiny_random_teacher(audio: np.ndarray, sample_rate: int, dim: int = 16,
                        frame_rate: float = 50.0, seed: int = 0) -> np.ndarray:
    """[B, ceil(T / hop), dim] features at ``frame_rate`` Hz (``hop = sample_rate / frame_rate``).

    Each frame (Hann window of ``2 * hop`` samples starting at ``j * hop``) gives a log
    magnitude spectrum, centred over frequency (so loudness alone does not set the direction),
    then ``tanh`` of a fixed Gaussian projection drawn from ``seed``. Deterministic.
    """
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2:
        raise ValueError(f"teacher input must be [batch, samples], got shape {audio.shape}")
    hop = int(round(sample_rate / frame_rate))
    if hop < 1 or abs(hop - sample_rate / frame_rate) > 1e-6:
        raise ValueError(f"tiny_random_teacher: sample_rate / frame_rate = "
                         f"{sample_rate / frame_rate} must be a whole number of samples")
    frames = -(-audio.shape[1] // hop)
    win = 2 * hop
    padded = np.pad(audio, ((0, 0), (0, frames * hop + win - audio.shape[1])))
    idx = np.arange(frames)[:, None] * hop + np.arange(win)[None, :]
    spec = np.abs(np.fft.rfft(padded[:, idx] * np.hanning(win).astype(np.float32), axis=-1))
    logspec = np.log(spec + 1e-4)
    logspec -= logspec.mean(axis=-1, keepdims=True)
    proj = np.random.default_rng(seed).standard_normal((logspec.shape[-1], dim))
    proj /= np.sqrt(logspec.shape[-1])
    return np.tanh(logspec @ proj).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _load_ssl_model(model_path: str):
    try:
        import torch  # pylint: disable=g-import-not-at-top
        from transformers import AutoModel  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise ImportError("hf_ssl_teacher needs torch and transformers: "
                          "pip install audiolm_jax[peers]") from e
    model = AutoModel.from_pretrained(model_path, local_files_only=True)
    model.eval()
    return model, torch


def hf_ssl_teacher(audio: np.ndarray, sample_rate: int, model_path: str = "", layer: int = -1,
                   model_sample_rate: int = 16000, normalize: bool = True) -> np.ndarray:
    """Hidden states of a transformers speech SSL model saved in ``model_path`` (local).

    The audio is resampled to ``model_sample_rate`` (soxr, as the data pipeline), normalised
    per utterance to zero mean and unit variance when ``normalize`` (what WavLM-large's and
    HuBERT-large's feature extractors do), and ``hidden_states[layer]`` is returned as float32
    ``[B, frames, hidden]`` (50 Hz for WavLM/HuBERT: ``feature_rate = 50``).
    """
    if not model_path:
        raise ValueError("config key 'distill.function_kwargs.model_path' is empty: give the "
                         "folder of a saved transformers speech model (e.g. WavLM-large)")
    model, torch = _load_ssl_model(os.path.expanduser(model_path))
    x = np.asarray(audio, np.float32)
    if int(sample_rate) != int(model_sample_rate):
        import librosa  # pylint: disable=g-import-not-at-top

        x = librosa.resample(x, orig_sr=int(sample_rate), target_sr=int(model_sample_rate),
                             res_type="soxr_hq", axis=-1).astype(np.float32)
    if normalize:
        x = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-7)
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x)), output_hidden_states=True)
    return out.hidden_states[layer].float().numpy()


# ------------------------------------------------------------------ precomputing
def precompute_teacher_features(folder: str, teacher: Teacher, sample_rate: int,
                                suffix: str = "teacher", overwrite: bool = False) -> dict:
    """Writes ``<audio>.<suffix>.npy`` [frames, dim] beside every audio file below ``folder``.

    Files whose features already exist are left alone unless ``overwrite``; undecodable files
    are skipped and reported. Writes are atomic (temporary file + rename), so an interrupted run
    can simply be started again. Returns a JSON-able summary, including the measured feature
    rate (frames per second of audio) to put in ``distill.feature_rate``.
    """
    from audiolm_jax.data.audio_io import AudioDecodeError, load_audio
    from audiolm_jax.data.features import features_path
    from audiolm_jax.data.sources import find_audio_files

    paths = find_audio_files(folder)
    if not paths:
        raise ValueError(f"audio folder {folder!r} contains no audio files")
    written, existing, bad, rates, dims = 0, 0, {}, [], set()
    for path in paths:
        out = features_path(path, suffix)
        if os.path.exists(out) and not overwrite:
            existing += 1
            continue
        try:
            audio = load_audio(path, sample_rate)
        except (AudioDecodeError, OSError, ValueError) as e:
            bad[path] = str(e)
            continue
        if audio.size == 0:
            bad[path] = "empty audio"
            continue
        feats = np.asarray(teacher(audio[None, :], sample_rate))
        if feats.ndim != 3 or feats.shape[0] != 1:
            raise ValueError(f"teacher returned shape {feats.shape} for {path!r}, expected "
                             "[1, frames, dim]")
        tmp = out + ".tmp.npy"
        np.save(tmp, feats[0].astype(np.float32))
        os.replace(tmp, out)
        written += 1
        dims.add(int(feats.shape[2]))
        rates.append(feats.shape[1] / (audio.size / sample_rate))
    return {"folder": folder, "files": len(paths), "written": written,
            "already_there": existing, "bad_files": bad, "dims": sorted(dims),
            "frames_per_second": float(np.median(rates)) if rates else None}
