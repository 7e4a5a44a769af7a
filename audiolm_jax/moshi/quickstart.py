"""``audiolm-jax quickstart --task=moshi``: a talking Moshi from nothing, in CPU minutes.

1. the built-in aligned dialogue corpus (made-up lexicon, two speakers, alignment JSONs) and
   a text tokenizer trained on its lexicon;
2. a tiny Mimi-like codec at Moshi's 12.5 Hz, trained on the built-in speech corpus
   (``DIR/codec/``);
3. the dialogues tokenized as two streams with the aligned text stream;
4. ``configs/lm/moshi.py:tiny`` trained on them (``DIR/lm/``, naming its codec and tokenizer);
5. ``converse`` on a held-out dialogue's user channel: ``DIR/reply.wav`` (stereo: the model,
   then the user) and ``DIR/reply.txt`` (its words with times).
"""

from __future__ import annotations

import json
import os

# Dialogue lengths and counts: enough text for the tiny Moshi to learn the lexicon's
# exchanges in a few hundred steps, small enough to synthesise and tokenize in seconds.
NUM_DIALOGUES = 160
DIALOGUE_SECONDS = 10.0
SAMPLE_RATE = 16000


def _log(msg: str) -> None:
    print(f"[quickstart moshi] {msg}", flush=True)


def run_quickstart(workdir: str, train_codec, steps: int | None = None,
                   codec_steps: int | None = None) -> dict:
    """``train_codec(config, workdir)``: the codec trainer (the CLI's, with its data)."""
    from audiolm_jax.codec.config import quickstart_mimi_config
    from audiolm_jax.data.audio_io import load_audio, save_wav
    from audiolm_jax.data.lexicon import (lexicon_words, write_aligned_dialogues,
                                          write_lexicon_tokenizer)
    from audiolm_jax.lm.run import tokenize
    from audiolm_jax.moshi.converse import converse
    from audiolm_jax.moshi.experiment import base_config, tiny_variant
    from audiolm_jax.moshi.run import train_moshi

    workdir = os.path.abspath(workdir)
    corpus = os.path.join(workdir, "dialogues")
    _log(f"writing {NUM_DIALOGUES} aligned dialogues of {DIALOGUE_SECONDS:g} s -> {corpus}")
    paths = write_aligned_dialogues(corpus, NUM_DIALOGUES, sample_rate=SAMPLE_RATE,
                                    seconds=DIALOGUE_SECONDS)
    spm = write_lexicon_tokenizer(corpus)
    heldout = write_aligned_dialogues(os.path.join(workdir, "heldout"), 1,
                                      sample_rate=SAMPLE_RATE, seconds=DIALOGUE_SECONDS,
                                      split="eval")[0]

    codec_config = quickstart_mimi_config()
    if codec_steps:
        codec_config.train.num_steps = int(codec_steps)
    codec_dir = os.path.join(workdir, "codec")
    _log(f"training a 12.5 Hz Mimi-like codec for {codec_config.train.num_steps} steps "
         f"-> {codec_dir}")
    train_codec(codec_config, codec_dir)

    tokens_dir = os.path.join(workdir, "tokens")
    _log(f"tokenizing the dialogues (two streams + the text stream) -> {tokens_dir}")
    tokenize(paths, tokens_dir, tokenizer="codec", codec_workdir=codec_dir,
             files_per_shard=64, stereo_streams=True, text_tokenizer=spm)

    config = tiny_variant(base_config())
    config.data.tokens = tokens_dir
    if steps:
        config.train.num_steps = int(steps)
    config.train.update(checkpoint_every=int(config.train.num_steps), log_every=25)
    lm_dir = os.path.join(workdir, "lm")
    _log(f"training moshi.py:tiny for {config.train.num_steps} steps -> {lm_dir}")
    summary = train_moshi(config, lm_dir)

    user = os.path.join(workdir, "user.wav")
    save_wav(user, load_audio(heldout, SAMPLE_RATE, mono=False)[1], SAMPLE_RATE)
    reply, transcript = os.path.join(workdir, "reply.wav"), os.path.join(workdir, "reply.txt")
    _log(f"conversing with the held-out dialogue's user channel ({user})")
    talk = converse(lm_dir, user, reply, transcript=transcript, stereo=True, seed=0)
    lexicon = set(lexicon_words())
    in_lexicon = [w for w in talk["words"] if w in lexicon]
    result = {"text_loss_first": summary["first_text_loss"],
              "text_loss_last": summary["text_loss"], "audio_loss_last": summary["audio_loss"],
              "codec": codec_dir, "lm": lm_dir, "reply": reply, "transcript": transcript,
              "words": talk["words"][:20], "lexicon_words_in_reply": len(in_lexicon),
              "ms_per_frame": talk["ms_per_frame"]}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    _log("done.\n"
         f"  codec workdir:  {codec_dir}\n  moshi workdir:  {lm_dir}\n"
         f"  text loss:      {summary['first_text_loss']:.3f} -> {summary['text_loss']:.3f}\n"
         f"  reply:          {reply} (left: the model, right: the user)\n"
         f"  transcript:     {transcript}\n"
         f"  tensorboard:    tensorboard --logdir {workdir}")
    return result

