"""The language-model commands: tokenize a corpus, train, evaluate, and generate audio.

An LM workdir holds ``config.json`` (the LM config, its ``tokens`` section filled from the
token directory), ``tokens.json`` (that directory's metadata: tokenizer, rates, levels, and the
codec's workdir and checkpoint identity, so ``generate`` can turn tokens back into audio),
``checkpoints/`` and ``tensorboard/``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np

TOKENS_FILE = "tokens.json"


# ------------------------------------------------------------------------------ tokenize
def tokenize(audio_paths: Sequence[str], out_dir: str, *, tokenizer: str = "codec",
             codec_workdir: str | None = None, sample_rate: int = 16000,
             files_per_shard: int = 64, stereo_streams: bool = False) -> dict:
    from audiolm_jax.lm.tokens import tokenize_corpus

    codec = None
    if tokenizer == "codec":
        if not codec_workdir:
            raise ValueError("--codec-workdir is required with --tokenizer=codec")
        from audiolm_jax.codec.inference import load_codec

        codec = load_codec(codec_workdir)
    elif tokenizer != "mulaw":
        raise ValueError(f"--tokenizer must be 'codec' or 'mulaw', got {tokenizer!r}")
    return tokenize_corpus(list(audio_paths), out_dir, tokenizer=tokenizer, codec=codec,
                           sample_rate=sample_rate, files_per_shard=files_per_shard,
                           process_index=jax.process_index(),
                           process_count=jax.process_count(), stereo_streams=stereo_streams,
                           codec_workdir=os.path.abspath(codec_workdir) if codec_workdir else None)


# ------------------------------------------------------------------------------ train
def fill_tokens_config(config: Any, metadata: dict) -> None:
    """Levels/codebook/streams from the token directory; refuses more levels than it has."""
    t = config.tokens
    available = int(metadata["num_levels"]) - (1 if t.drop_semantic else 0)
    wanted = int(t.num_levels) if t.num_levels else available
    if wanted > available:
        raise ValueError(f"config key 'tokens.num_levels' ({wanted}) exceeds the "
                         f"{available} levels available in the token directory")
    t.num_levels = wanted
    t.codebook_size = int(metadata["codebook_size"])
    t.num_streams = int(metadata["num_streams"])


def train_lm(config: Any, workdir: str) -> dict:
    from audiolm_jax.codec.inference import save_config
    from audiolm_jax.config_check import check_mesh
    from audiolm_jax.lm.task import LMTask
    from audiolm_jax.lm.tokens import load_token_dir, make_window_iterator
    from audiolm_jax.train.loop import train_loop

    if not config.data.tokens:
        raise ValueError("config key 'data.tokens' must name a token directory "
                         "(made by `audiolm-jax tokenize`)")
    check_mesh(config, jax.device_count())
    token_dir = load_token_dir(config.data.tokens)
    fill_tokens_config(config, token_dir.metadata)
    if config.train.batch_size % jax.process_count():
        raise ValueError("config key 'train.batch_size' must divide by the process count")
    task = LMTask(config)
    save_config(config, workdir)
    with open(os.path.join(workdir, TOKENS_FILE), "w") as f:
        json.dump(token_dir.metadata, f, indent=2)
    iterator = make_window_iterator(
        token_dir, frames=task.frames_per_example,
        batch_size=int(config.train.batch_size) // jax.process_count(),
        seed=int(config.train.seed), shard_index=jax.process_index(),
        shard_count=jax.process_count(), eval_fraction=float(config.data.eval_fraction))
    state, history = train_loop(task, config, workdir, iterator)
    return {"workdir": workdir, "step": int(jax.device_get(state.step)),
            "loss": history[-1]["loss"] if history else None}


# ------------------------------------------------------------------------------ load / eval
class LoadedLM:
    def __init__(self, workdir: str, step: int | None = None):
        from audiolm_jax.codec.inference import load_config
        from audiolm_jax.lm.task import LMTask
        from audiolm_jax.train.loop import restore_for_inference

        self.workdir = workdir
        self.config = load_config(workdir)
        with open(os.path.join(workdir, TOKENS_FILE)) as f:
            self.tokens = json.load(f)
        self.task = LMTask(self.config)
        state, self.step = restore_for_inference(self.task, workdir, step, what="LM")
        self.params = state.params


def evaluate_lm(workdir: str, tokens_dir: str, batch_size: int = 8, max_batches: int = 50) -> dict:
    from audiolm_jax.lm.tokens import iter_eval_windows, load_token_dir

    lm = LoadedLM(workdir)
    token_dir = load_token_dir(tokens_dir)
    eval_step = jax.jit(lm.task.eval_step)
    total, level_sum, tokens = 0.0, None, 0.0
    for batch in iter_eval_windows(token_dir, lm.task.frames_per_example, batch_size,
                                   max_batches, drop_remainder=False):
        m = jax.device_get(eval_step(lm.params, lm.task.prepare_batch(batch)))
        n = float(m["tokens"])
        total += float(m["loss"]) * n
        level_sum = m["level_losses"] * n if level_sum is None else level_sum + m["level_losses"] * n
        tokens += n
    if not tokens:
        raise ValueError(f"{tokens_dir!r} holds fewer frames than one window "
                         f"({lm.task.frames_per_example})")
    return {"loss": total / tokens, "level_losses": [float(x) for x in level_sum / tokens],
            "num_tokens": int(tokens), "step": lm.step}


# ------------------------------------------------------------------------------ generate
def _prompt_codes(lm: LoadedLM, audio: np.ndarray):
    """Audio -> (codes [K_all, F] of the LM's tokenizer, decode function, frame rate)."""
    meta = lm.tokens
    if meta["tokenizer"] == "mulaw":
        from audiolm_jax.tokenizers.mulaw import mulaw_decode, mulaw_encode

        return (np.asarray(mulaw_encode(audio), np.int32)[None],
                lambda c: np.asarray(mulaw_decode(c[0]), np.float32), float(meta["sample_rate"]))
    from audiolm_jax.codec.inference import load_codec

    codec = load_codec(meta["codec"]["workdir"])
    return codec.encode(audio), codec.decode, codec.frame_rate


def generate_audio(workdir: str, prompt_path: str, seconds: float, out_path: str, *,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   keep_semantic: bool = False) -> dict:
    """Prompt WAV -> tokens -> compiled KV-cache sampling -> tokens -> WAV."""
    from audiolm_jax.data.audio_io import load_audio, save_wav
    from audiolm_jax.lm.sampling import delay_special_mask, generate

    lm = LoadedLM(workdir)
    task, meta = lm.task, lm.tokens
    if task.num_streams != 1:
        raise ValueError("two-stream (duplex) generation is not built yet")
    if lm.config.tokens.drop_semantic:
        raise ValueError("an LM trained without the semantic level cannot be decoded to audio")
    sr = int(meta["sample_rate"])
    audio = load_audio(prompt_path, sr)
    all_codes, decode, frame_rate = _prompt_codes(lm, audio)
    K = task.num_levels
    codes = all_codes[:K]
    new_frames = max(1, int(round(seconds * frame_rate)))
    per_frame = K if task.flat else 1
    delay = int(getattr(task.pattern, "max_delay", 0))
    budget = task.context // per_frame - delay
    if new_frames >= budget:
        raise ValueError(f"--seconds={seconds} needs {new_frames} frames; this LM's context "
                         f"holds at most {budget - 1} new frames ({(budget - 1) / frame_rate:.2f} s)")
    prompt_frames = max(1, min(codes.shape[1], budget - new_frames))
    start = codes.shape[1] - prompt_frames
    prompt_codes = codes[:, start:]
    total_frames = prompt_frames + new_frames
    if task.flat:
        prompt = np.asarray(task.pattern.build(prompt_codes[None]))
        num_new = new_frames * K
        allowed = task.vocab_size
    else:
        prompt = np.asarray(task.pattern.build(prompt_codes[None]))[..., :prompt_frames]
        num_new = new_frames + delay
        allowed = int(lm.config.tokens.codebook_size)
    total = prompt.shape[-1] + num_new
    forced = np.zeros(prompt.shape[:-1] + (total,), np.int32)
    mask = np.zeros(forced.shape, bool)
    if not task.flat and delay:
        f, m = delay_special_mask(task.pattern, total, include_tail=True)
        forced[0], mask[0] = np.asarray(f), np.asarray(m)
    if keep_semantic:  # level 0 comes from the prompt file through its whole length
        level0 = codes[0, start:start + total_frames]
        n = len(level0)
        if task.flat:
            forced[0, 0:n * K:K], mask[0, 0:n * K:K] = level0, True
        else:
            forced[0, 0, :n], mask[0, 0, :n] = level0, True
    tokens = generate(task.model, lm.params, prompt, num_new, jax.random.PRNGKey(seed),
                      temperature=temperature, top_k=top_k, top_p=top_p,
                      forced=forced if mask.any() else None,
                      forced_mask=mask if mask.any() else None, allowed_vocab=allowed)
    tokens = np.asarray(tokens)
    if task.flat:
        out_codes = np.asarray(task.pattern.revert(tokens[:, : total_frames * K]))[0]
    else:
        out_codes = np.asarray(task.pattern.revert(tokens))[0]
    out_codes = np.clip(out_codes, 0, int(lm.config.tokens.codebook_size) - 1)
    wav = decode(out_codes)
    save_wav(out_path, wav, sr)
    return {"out": out_path, "prompt_seconds": prompt_frames / frame_rate,
            "generated_seconds": new_frames / frame_rate, "frames": int(out_codes.shape[1]),
            "levels": K, "keep_semantic": keep_semantic}
