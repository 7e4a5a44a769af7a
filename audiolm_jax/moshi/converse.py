"""``audiolm-jax converse``: a Moshi conversation over a recorded user, frame by frame.

Each 80 ms frame goes the way a live conversation's would: the user's audio through Mimi's
streaming encoder (:class:`audiolm_jax.codec.mimi.streaming.MimiStreamer`), its codes into
the generator's ``step`` (one compiled call: temporal transformer with its ring KV cache,
text token, depth transformer), the model's codes through Mimi's streaming decoder. The
first ``max(delays)`` steps return nothing (the acoustic codebooks lag one frame); after the
user's file ends, silence is fed for as many frames so the last reply frames come out.

Writes the model's voice (``--stereo``: left the model, right the user, as moshi-finetune's
files) and, with a text tokenizer, its inner monologue as words with start/end times.
A codec without a streaming mode (the CNN / SEANet codecs) is run offline over the whole
file instead, the generator still frame by frame (``"streaming_codec": false``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from audiolm_jax.moshi.run import LoadedMoshi, load_moshi
from audiolm_jax.text.stream import TEXT_EPAD_ID, TEXT_PAD_ID


def words_from_text(tokens: list[tuple[int, int]], tokenizer, frame_rate: float) -> list:
    """(frame, text token) pairs -> ``[(word, start_s, end_s)]``: a word starts at the frame
    of its first piece (SentencePiece's word-start marker), ends where the next word starts or
    at the first PAD / EPAD / end after its last piece."""
    words: list[list] = []
    open_word = None
    for frame, tok in tokens:
        if tok in (TEXT_PAD_ID, TEXT_EPAD_ID) or tok in tokenizer.control_ids:
            if open_word is not None:
                open_word[2] = frame
                open_word = None
            continue
        piece = tokenizer.id_to_piece(tok)
        if piece.startswith("\u2581") or open_word is None:
            if open_word is not None:
                open_word[2] = frame
            open_word = [piece.lstrip("\u2581"), frame, frame + 1]
            words.append(open_word)
        else:
            open_word[0] += piece
            open_word[2] = frame + 1
    return [(w, s / frame_rate, e / frame_rate) for w, s, e in words if w]


def converse(workdir: str, input_path: str, out_path: str, *, transcript: str | None = None,
             stereo: bool = False, sampling: bool = True, temperature: float = 0.8,
             top_k: int = 250, text_temperature: float = 0.7, text_top_k: int = 25,
             seed: int = 0, moshi: LoadedMoshi | None = None) -> dict:
    from audiolm_jax.data.audio_io import load_audio, save_wav

    m = moshi or load_moshi(workdir)
    codec = m.codec
    if codec is None:
        raise ValueError(f"--workdir {workdir!r} names no codec (tokens.json 'codec'): converse "
                         "needs the Mimi its codes come from")
    cfg = m.model_config
    user_levels, model_levels = cfg.n_q - cfg.dep_q, cfg.dep_q
    if max(user_levels, model_levels) > codec.num_levels:
        raise ValueError(f"the Moshi reads {max(user_levels, model_levels)} codebooks per "
                         f"stream; its codec has {codec.num_levels}")
    sr = codec.sample_rate
    audio = load_audio(input_path, sr)
    hop = codec.hop_length
    frames = max(1, math.ceil(len(audio) / hop))
    delay = max(cfg.delays)
    padded = np.zeros((frames + delay) * hop, np.float32)
    padded[:len(audio)] = audio

    streaming = getattr(codec.config.model, "kind", None) == "mimi"
    if streaming:
        from audiolm_jax.codec.mimi.streaming import MimiStreamer

        streamer = MimiStreamer(codec.config, codec.params, codec.vq_stats, batch=1)
        enc_state, dec_state = streamer.init_encoder_state(), streamer.init_decoder_state()
    else:
        offline_user = codec.encode(padded)  # [levels, frames + delay]
    gen = m.generator(batch_size=1, sampling=sampling, temperature=temperature, top_k=top_k,
                      text_temperature=text_temperature, text_top_k=text_top_k, seed=seed)
    reply = np.zeros(frames * hop, np.float32)
    model_codes = np.zeros((model_levels, frames), np.int32)
    text: list[tuple[int, int]] = []
    times = {"encode": [], "lm": [], "decode": []}
    for t in range(frames + delay):
        t0 = time.perf_counter()
        if streaming:
            enc_state, codes = streamer.encode_step(enc_state, padded[None, t * hop:(t + 1) * hop])
            user = np.asarray(codes)[0, 0, :user_levels]
        else:
            user = offline_user[:user_levels, t]
        t1 = time.perf_counter()
        out = gen.step(np.asarray(user, np.int32)[None, :, None])
        out = None if out is None else np.asarray(out)
        t2 = time.perf_counter()
        times["encode"].append(t1 - t0)
        times["lm"].append(t2 - t1)
        if out is None:
            continue
        k = t - delay  # the frame the output belongs to (un-delayed)
        text.append((k, int(out[0, 0, 0])))
        model_codes[:, k] = out[0, 1:, 0]
        if streaming:
            t3 = time.perf_counter()
            dec_state, pcm = streamer.decode_step(dec_state, out[0, 1:, 0][None, None, :])
            reply[k * hop:(k + 1) * hop] = np.asarray(pcm)[0]
            times["decode"].append(time.perf_counter() - t3)
    if not streaming:
        reply = np.asarray(codec.decode(model_codes), np.float32)[:frames * hop]
    reply = reply[:len(audio)]
    wav = np.stack([reply, audio[:len(reply)]], axis=-1) if stereo else reply
    save_wav(out_path, wav, sr)

    words = []
    if m.text_tokenizer is not None:
        words = words_from_text(text, m.text_tokenizer, codec.frame_rate)
    if transcript:
        with open(transcript, "w") as f:
            f.write(" ".join(w for w, _, _ in words) + "\n")
            for w, s, e in words:
                f.write(f"{s:.2f}\t{e:.2f}\t{w}\n")
    # The first steps compile; steady state is what a live conversation sees.
    steady = lambda xs: xs[2:] if len(xs) > 4 else xs
    per_frame = [e + l + d for e, l, d in zip(steady(times["encode"]), steady(times["lm"]),
                                              steady(times["decode"]) or [0.0] * len(
                                                  steady(times["lm"])))]
    ms = lambda xs: round(1000 * float(np.median(xs)), 2) if xs else None
    return {"out": out_path, "transcript": transcript, "seconds": len(audio) / sr,
            "frames": frames, "delay_frames": delay, "streaming_codec": streaming,
            "words": [w for w, _, _ in words][:50],
            "ms_per_frame": {"encode": ms(steady(times["encode"])), "lm": ms(steady(times["lm"])),
                             "decode": ms(steady(times["decode"])), "total": ms(per_frame)},
            "frame_ms": round(1000 / codec.frame_rate, 1)}

