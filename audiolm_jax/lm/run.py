"""The language-model commands: tokenize a corpus, train, evaluate, and generate audio.

An LM workdir holds ``config.json`` (the LM config, its ``tokens`` section filled from the
token directory), ``tokens.json`` (that directory's metadata: tokenizer, rates, levels, and the
codec's workdir and checkpoint identity, so ``generate`` can turn tokens back into audio),
``checkpoints/`` and ``tensorboard/``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from audiolm_jax import workdir as workdir_lib
from audiolm_jax.codec.inference import load_codec
from audiolm_jax.config_check import check_mesh
from audiolm_jax.data.audio_io import load_audio, save_wav
from audiolm_jax.export import load_inference_weights
from audiolm_jax.lm.task import LMTask
from audiolm_jax.lm.tokens import (_load_channels, iter_eval_windows, load_token_dir,
                                   make_window_iterator, tokenize_corpus)
from audiolm_jax.tokenizers.mulaw import mulaw_decode, mulaw_encode
from audiolm_jax.train.loop import train_loop


# ------------------------------------------------------------------------------ tokenize
def tokenize(audio_paths: Sequence[str], out_dir: str, *, tokenizer: str = "codec",
             codec_workdir: str | None = None, sample_rate: int = 16000,
             files_per_shard: int = 64, stereo_streams: bool = False,
             text_tokenizer: str | None = None) -> dict:
    codec = None
    if tokenizer == "codec":
        if not codec_workdir:
            raise ValueError("--codec-workdir is required with --tokenizer=codec")
        codec = load_codec(codec_workdir)
    elif tokenizer != "mulaw":
        raise ValueError(f"--tokenizer must be 'codec' or 'mulaw', got {tokenizer!r}")
    return tokenize_corpus(list(audio_paths), out_dir, tokenizer=tokenizer, codec=codec,
                           sample_rate=sample_rate, files_per_shard=files_per_shard,
                           process_index=jax.process_index(),
                           process_count=jax.process_count(), stereo_streams=stereo_streams,
                           codec_workdir=os.path.abspath(codec_workdir) if codec_workdir else None,
                           text_tokenizer=text_tokenizer)


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
    if not config.data.tokens:
        raise ValueError("config key 'data.tokens' must name a token directory "
                         "(made by `audiolm-jax tokenize`)")
    check_mesh(config, jax.device_count())
    token_dir = load_token_dir(config.data.tokens)
    fill_tokens_config(config, token_dir.metadata)
    if config.train.batch_size % jax.process_count():
        raise ValueError("config key 'train.batch_size' must divide by the process count")
    task = LMTask(config)
    workdir_lib.save_config(config, workdir)
    workdir_lib.write_tokens_metadata(workdir, token_dir.metadata)
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
        self.workdir = workdir
        self.config = workdir_lib.load_config(workdir)
        self.tokens = workdir_lib.read_tokens_metadata(workdir)
        if (self.tokens.get("codec") or {}).get("workdir"):  # an export's codec is relative
            self.tokens["codec"]["workdir"] = workdir_lib.resolve_path(
                workdir, self.tokens["codec"]["workdir"])
        self.task = LMTask(self.config)
        # A training workdir or an export directory (audiolm_jax/export.py).
        weights, self.step = load_inference_weights(workdir, self.task, step, what="LM")
        self.params = weights["params"]
        self._codec = None

    @property
    def codec(self):
        """The codec the LM's tokens come from (loaded on first use); None if none is named
        (mu-law tokens)."""
        if self._codec is None and (self.tokens.get("codec") or {}).get("workdir"):
            self._codec = load_codec(self.tokens["codec"]["workdir"])
        return self._codec


def evaluate_lm(workdir: str, tokens_dir: str, batch_size: int = 8, max_batches: int = 50) -> dict:
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
    """Audio [T] -> (codes [K_all, F] of the LM's tokenizer, decode function, frame rate)."""
    meta = lm.tokens
    if meta["tokenizer"] == "mulaw":
        return (np.asarray(mulaw_encode(audio), np.int32)[None],
                lambda c: np.asarray(mulaw_decode(c[0]), np.float32), float(meta["sample_rate"]))
    codec = lm.codec
    return codec.encode(audio), codec.decode, codec.frame_rate


def _window_frames(task) -> int:
    """Codec frames one model context holds (prompt + generated)."""
    return task.window_frames


def _streams(task, codes: np.ndarray) -> np.ndarray:
    """[B, S, K, F] -> what the layout builds from: [B, K, F] (one stream) or [B, S, K, F]."""
    return codes[:, 0] if task.num_streams == 1 else codes


def _layout(task, codes: np.ndarray) -> np.ndarray:
    """[B, S, K, F] codes -> the model's token sequence ([B, L] flat, [B, rows, L] otherwise)."""
    return np.asarray(task.pattern.build(_streams(task, codes)))


def _unlayout(task, seq: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_layout`: -> [B, S, K, F]."""
    codes = np.asarray(task.pattern.revert(seq))
    return codes[:, None] if task.num_streams == 1 else codes


def _sample_window(task, params, prompt: np.ndarray, new_frames: int, forced: np.ndarray,
                   mask: np.ndarray, rng, sampling: dict) -> np.ndarray:
    """One context window: prompt codes [S, K, P] + ``new_frames`` sampled frames, with the
    frame-space forcing (``forced``/``mask`` [S, K, P + new_frames]: e.g. the user's stream in
    duplex, level 0 with --keep_semantic) applied inside the compiled sampler, so forced
    tokens condition everything sampled after them. Returns codes [S, K, P + new_frames]."""
    P, F = prompt.shape[-1], prompt.shape[-1] + new_frames
    full = np.zeros(prompt.shape[:-1] + (F,), np.int32)
    full[..., :P] = prompt
    full = np.where(mask, forced, full)
    # The prompt is given, all of it: in a delayed layout its last frames' delayed levels sit
    # past the prompt steps, where they would otherwise be sampled.
    mask = mask.copy()
    mask[..., :P] = True
    # The layout lays the window out: the sampler's prompt steps, how many steps to sample,
    # and the forcing in sequence space (the given frames' slots and the special slots).
    prompt_seq, num_new, seq_codes, seq_mask = task.pattern.sampling_inputs(
        _streams(task, full[None]), _streams(task, mask[None]), P)
    forcing = bool(seq_mask.any())
    tokens = task.lm.generate(params, prompt_seq, num_new, rng,
                              forced=seq_codes if forcing else None,
                              forced_mask=seq_mask if forcing else None,
                              allowed_vocab=task.pattern.sample_vocab_size, **sampling)
    return _unlayout(task, np.asarray(tokens))[0]


def sample_frames(task, params, prompt: np.ndarray, new_frames: int, rng, *,
                  forced: np.ndarray | None = None, mask: np.ndarray | None = None,
                  window_frames: int | None = None, keep_fraction: float = 0.75,
                  **sampling) -> np.ndarray:
    """Continue prompt codes [S, K, P] by ``new_frames`` frames, past the model's context
    with a sliding window: each window re-lays out the last ``keep_fraction`` of a context
    (so every window starts the way training windows do) and samples the rest. The steady
    state is one compiled shape. Returns codes [S, K, P + new_frames]."""
    S, K, P = prompt.shape
    total = P + new_frames
    window = window_frames or _window_frames(task)
    if forced is None:
        forced = np.zeros((S, K, total), np.int32)
        mask = np.zeros((S, K, total), bool)
    if P + new_frames <= window:
        return _sample_window(task, params, prompt, new_frames, forced, mask, rng, sampling)
    keep = min(max(1, int(window * keep_fraction)), window - 1)
    chunk = window - keep
    out = np.zeros((S, K, total + chunk), np.int32)  # + chunk: the last window may overrun
    out[..., :P] = np.where(mask[..., :P], forced[..., :P], prompt)  # forcing wins, as in generate
    forced = np.concatenate([forced, np.zeros((S, K, chunk), np.int32)], -1)
    mask = np.concatenate([mask, np.zeros((S, K, chunk), bool)], -1)
    pos, i = P, 0
    while pos < total:
        start = max(0, pos - keep)
        n = window - (pos - start)
        got = _sample_window(task, params, out[..., start:pos], n, forced[..., start:pos + n],
                             mask[..., start:pos + n], jax.random.fold_in(rng, i), sampling)
        out[..., pos:pos + n] = got[..., pos - start:]
        pos, i = pos + n, i + 1
    return out[..., :total]


def _load_prompt_channels(path: str, sample_rate: int, streams: int) -> list[np.ndarray]:
    """A one-stream LM takes any prompt (mixed to mono); a duplex LM takes a stereo prompt as
    both streams' past (channel 0 = the generated stream) or a mono one as stream 0's."""
    if streams == 1:
        return [load_audio(path, sample_rate)]
    import soundfile as sf

    try:
        channels = sf.info(path).channels
    except Exception:  # pylint: disable=broad-except -- load_audio names the problem
        channels = 1
    if channels == 2:
        return list(_load_channels(path, sample_rate))
    return [load_audio(path, sample_rate)]


def _silence_codes(lm: LoadedLM, sample_rate: int, frame_rate: float, levels: int) -> np.ndarray:
    n = int(round(sample_rate / frame_rate)) * 2
    return _prompt_codes(lm, np.zeros(n, np.float32))[0][:levels]


def generate_audio(workdir: str, prompt_path: str, seconds: float, out_path: str, *,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   keep_semantic: bool = False, input_stream: str | None = None) -> dict:
    """Prompt WAV -> tokens -> compiled KV-cache sampling -> tokens -> WAV.

    Longer than the model's context: a sliding window (see :func:`sample_frames`).
    Two-stream (duplex) LMs: stream 0 is generated; ``input_stream`` (a WAV) supplies stream 1
    (the user) frame by frame through the whole length, as a live full-duplex conversation
    would; without it the model plays both sides. A stereo prompt gives both streams' past.
    The output WAV is stereo for duplex LMs (channel 0 = generated stream, 1 = the user).
    """
    lm = LoadedLM(workdir)
    task, meta = lm.task, lm.tokens
    S, K = task.num_streams, task.num_levels
    if lm.config.tokens.drop_semantic:
        raise ValueError("an LM trained without the semantic level cannot be decoded to audio")
    if input_stream is not None and S != 2:
        raise ValueError("--input_stream needs a two-stream (duplex) LM; this LM has "
                         f"{S} stream(s)")
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    sr = int(meta["sample_rate"])
    channels = _load_prompt_channels(prompt_path, sr, S)
    full, decode, frame_rate = [], None, None
    for audio in channels:
        c, decode, frame_rate = _prompt_codes(lm, audio)
        full.append(c[:K])
    F = min(c.shape[1] for c in full)
    new_frames = max(1, int(round(seconds * frame_rate)))
    end = F
    if keep_semantic:  # re-voice the file's last --seconds: level 0 stays the file's
        end = F - new_frames
        if end < 1:
            raise ValueError(f"--keep_semantic re-generates the prompt file's last --seconds; "
                             f"{prompt_path!r} is only {F / frame_rate:.2f} s long")
    window = _window_frames(task)
    prompt_frames = end if end < window else max(1, window * 3 // 4)
    start = end - prompt_frames
    total = prompt_frames + new_frames
    prompt = np.zeros((S, K, prompt_frames), np.int32)
    for s_, c in enumerate(full):
        prompt[s_] = c[:, start:end]
    forced = np.zeros((S, K, total), np.int32)
    mask = np.zeros((S, K, total), bool)
    if S == 2 and len(full) == 1 and input_stream is None:
        prompt[1] = _silence_codes(lm, sr, frame_rate, K)[:, :1]  # no user past: silence
    if keep_semantic:
        forced[0, 0], mask[0, 0] = full[0][0, start:start + total], True
    if input_stream is not None:
        user = _prompt_codes(lm, load_audio(input_stream, sr))[0][:K]
        n = min(total, user.shape[1])
        forced[1, :, :n], mask[1, :, :n] = user[:, :n], True
        if n < total:  # the user went quiet: silence's codes, not the model's guess
            forced[1, :, n:], mask[1, :, n:] = _silence_codes(lm, sr, frame_rate, K)[:, :1], True
    params = task.lm.inference_params(lm.params)  # 16-bit models: matrices cast once
    out_codes = sample_frames(task, params, prompt, new_frames, jax.random.PRNGKey(seed),
                              forced=forced, mask=mask, temperature=temperature, top_k=top_k,
                              top_p=top_p)
    out_codes = np.clip(out_codes, 0, int(lm.config.tokens.codebook_size) - 1)
    wavs = [decode(out_codes[s]) for s in range(S)]
    wav = wavs[0] if S == 1 else np.stack(wavs, axis=-1)
    save_wav(out_path, wav, sr)
    return {"out": out_path, "prompt_seconds": prompt_frames / frame_rate,
            "generated_seconds": new_frames / frame_rate, "frames": int(out_codes.shape[-1]),
            "levels": K, "streams": S, "context_frames": window,
            "sliding_window": total > window, "keep_semantic": keep_semantic,
            "input_stream": input_stream}
