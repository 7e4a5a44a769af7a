"""``audiolm-jax COMMAND [flags]``: the command-line entry point (absl + ml_collections).

Commands: quickstart, train-codec, eval-codec, encode, decode, reconstruct.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Each command imports the package modules it runs inside its function: usage and flag errors
# answer before JAX is imported, and main() restarts the process (host_memory) before that.

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/...py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_string("audio", None, "An audio file or a folder of audio files (eval-codec).")
flags.DEFINE_enum("task", "codec", ["codec", "moshi"],
                  "quickstart: a codec and an LM on its tokens, or a talking Moshi.")
flags.DEFINE_integer("steps", None, "quickstart: number of training steps (default: the preset's).")
flags.DEFINE_integer("num_levels", None, "Use only the first N quantizer levels (reconstruct).")
flags.DEFINE_string("codec-workdir", None, "tokenize: the trained codec's workdir.")
flags.DEFINE_string("out", None, "tokenize: output token directory; generate: output WAV.")
flags.DEFINE_enum("tokenizer", "codec", ["codec", "mulaw"], "tokenize: codec tokens or mu-law.")
flags.DEFINE_integer("sample_rate", 16000, "tokenize --tokenizer=mulaw: audio rate.")
flags.DEFINE_integer("files_per_shard", 64, "tokenize: audio files per token shard.")
flags.DEFINE_boolean("stereo_streams", False, "tokenize: one token stream per stereo channel.")
flags.DEFINE_string("text_tokenizer", None,
                    "tokenize: SentencePiece .model; also writes the aligned text stream from "
                    "the alignment JSON beside each file (moshi-finetune's format).")
flags.DEFINE_string("tokens", None, "eval-lm: token directory.")
flags.DEFINE_string("prompt", None, "generate: prompt audio file.")
flags.DEFINE_float("seconds", 4.0, "generate: seconds of audio to generate after the prompt.")
flags.DEFINE_float("temperature", 1.0, "generate: sampling temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "generate: keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", 1.0, "generate: nucleus sampling mass.")
flags.DEFINE_integer("seed", 0, "generate: sampling seed.")
flags.DEFINE_boolean("keep_semantic", False,
                     "generate: take level 0 from the prompt file through its whole length.")
flags.DEFINE_string("input_stream", None,
                    "generate (duplex LM): the user's audio, fed frame by frame as stream 1.")
flags.DEFINE_integer("num", 64, "make-corpus: number of files to write.")
flags.DEFINE_enum("kind", "speech", ["speech", "dialogue", "aligned_dialogue"],
                  "make-corpus: mono utterances, stereo two-speaker dialogues, or stereo "
                  "dialogues in a made-up lexicon with moshi-finetune alignment JSONs and a "
                  "text tokenizer (Moshi's data).")
flags.DEFINE_integer("corpus_seed", 0, "make-corpus: corpus seed (same seed, same files).")
flags.DEFINE_string("weights", None, "import-mimi: released Mimi weights (.safetensors).")
flags.DEFINE_string("lm_config", None,
                    "import-moshi: the LM's config.json, Kyutai's (its LMModel keywords; "
                    "absent: Moshi 7B) or Hugging Face's; `--config=` is read as this flag "
                    "there. Default: a config.json beside --weights.")
flags.DEFINE_string("mimi", None, "import-moshi: the Mimi workdir (from import-mimi) its audio "
                    "codes come from.")
flags.DEFINE_string("lora", None, "import-moshi: moshi-finetune's lora.safetensors to merge "
                    "(W + scaling * B @ A).")
flags.DEFINE_float("lora_scaling", None, "import-moshi --lora: the LoRA scaling (default: the "
                   "config's lora_scaling, else 2).")
flags.DEFINE_boolean("lora_only", False, "export (a Moshi LoRA run): the adapters alone, as "
                     "moshi-finetune's lora.safetensors + config.json (default: merged).")
flags.DEFINE_string("init_from", None, "train-lm (Moshi): the Moshi workdir, export or import "
                    "to fine-tune (sets config key train.init_from).")
flags.DEFINE_string("input", None, "converse: the user's audio (mono; the model answers it).")
flags.DEFINE_string("transcript", None, "converse: write the model's words with times here.")
flags.DEFINE_boolean("stereo", False, "converse: write the model (left) and the user (right).")
flags.DEFINE_boolean("greedy", False, "converse: argmax tokens instead of sampling.")
flags.DEFINE_float("text_temperature", 0.7, "converse: text sampling temperature (Kyutai's).")
flags.DEFINE_integer("text_top_k", 25, "converse: text top-k (Kyutai's).")
flags.DEFINE_integer("num_codebooks", 8, "import-mimi: codebooks to keep (1 semantic + N-1 acoustic).")
flags.DEFINE_enum("format", "orbax", ["orbax", "safetensors"], "export: weight file format.")
flags.DEFINE_string("topology", None, "compile: Cloud TPU accelerator type, e.g. v5p-8, v5e-16.")
flags.DEFINE_integer("num_slices", 1, "compile: number of slices (multi-slice over DCN).")
flags.DEFINE_enum("what", "train", ["train", "decode"],
                  "compile: the training step, or the LM's one-token decoding step.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process run: HOST:PORT of process 0 (else $AUDIOLM_JAX_COORDINATOR; "
                    "Cloud TPU slices and SLURM are detected without flags).")
flags.DEFINE_integer("num_processes", None, "Multi-process run: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index.")
flags.DEFINE_string("host", "127.0.0.1", "serve: interface to listen on.")
flags.DEFINE_integer("port", 8998, "serve: TCP port (0: a free one).")
flags.DEFINE_integer("max_sessions", 4, "serve: conversations at once; one more gets a busy error.")
flags.DEFINE_float("idle_timeout", 30.0, "serve: close a session whose client sends nothing "
                   "for this many seconds.")
flags.DEFINE_string("auth_token", None, "serve: clients must pass ?token=THIS (else HTTP 401).")
flags.DEFINE_list("allowed_origins", [], "serve: web pages of other origins that may open the "
                  "websocket (e.g. https://host:port of a separately hosted client; '*': any). "
                  "Default: only this server's own page and non-browser clients.")
flags.DEFINE_string("ssl_cert", None, "serve: TLS certificate (PEM; with --ssl_key: wss://).")
flags.DEFINE_string("ssl_key", None, "serve: TLS private key (PEM).")
flags.DEFINE_string("url", None, "chat: the server, ws://HOST:PORT/api/chat[?token=...].")
flags.DEFINE_boolean("fast", False, "chat: send the input as fast as possible, not in real time.")

USAGE = """usage: audiolm-jax COMMAND [--flags]

commands:
  quickstart   --workdir=DIR [--task=moshi]   train a small codec and an LM on the built-in
               corpus (CPU minutes); --task=moshi: a Mimi-like codec and a tiny Moshi on the
               built-in aligned dialogues, then a conversation with a held-out user
  train-codec  --config=FILE --workdir=DIR [--config.key=value ...]
  train-vqvae  --config=configs/vqvae_fashion_mnist.py --workdir=DIR   the article's VQ-VAE detour
  eval-codec   --workdir=DIR --audio=PATH  print spectral/mel/SI-SNR/bitrate/usage as JSON
  tokenize     --codec-workdir=DIR --audio=PATH --out=TOKDIR [--tokenizer=mulaw]
  train-lm     --config=configs/lm/NAME.py --workdir=DIR --config.data.tokens=TOKDIR
               [--init_from=MOSHIDIR]   (configs/lm/moshi.py: fine-tune, full or LoRA)
  eval-lm      --workdir=DIR --tokens=TOKDIR     print loss, per-level losses, tokens as JSON
  generate     --workdir=LMDIR --prompt=IN.wav --seconds=S --out=OUT.wav
               [--temperature T --top_k K --top_p P --seed N --keep_semantic]
               [--input_stream=USER.wav]    duplex LM: the user's side, fed frame by frame
  converse     --workdir=MOSHIDIR --input=USER.wav --out=REPLY.wav [--transcript=REPLY.txt
               --stereo --greedy --temperature T --top_k K --seed N]   Moshi answers a
               recorded user frame by frame, as a live conversation would
  serve        --workdir=MOSHIDIR|DUPLEXLMDIR [--host=127.0.0.1 --port=8998 --max_sessions=4
               --idle_timeout=30 --auth_token=T --ssl_cert=C --ssl_key=K --greedy
               --temperature T --top_k K --text_temperature T --text_top_k K --seed N]
               real-time duplex server, Kyutai's websocket protocol at /api/chat
  chat         --url=ws://HOST:PORT/api/chat --input=USER.wav --out=REPLY.wav
               [--transcript=REPLY.txt --fast]   talk to a server from a WAV; prints latency
  make-corpus  --out=DIR [--kind=speech|dialogue --num=N --seconds=S --sample_rate=SR]
               write the built-in synthetic corpus as WAVs (dialogue: stereo, for duplex)
  precompute-teacher --config=FILE --audio=DIR   write each file's semantic-distillation teacher
               features beside it (<name>.<distill.features_suffix>.npy), from config.distill
  import-mimi  --weights=FILE.safetensors --workdir=DIR [--num_codebooks=8]   released Mimi
               weights (transformers or Kyutai layout) -> a codec workdir
  import-moshi --weights=model.safetensors --workdir=DIR [--config=config.json]
               [--mimi=MIMIDIR --text_tokenizer=SPM.model --lora=lora.safetensors]
               released Moshi weights (Kyutai or Hugging Face layout) -> a Moshi workdir
  export       --workdir=DIR --out=EXPORT [--format=orbax|safetensors]   inference weights +
               config only; encode/decode/reconstruct/tokenize/generate/eval-lm take EXPORT as
               their workdir (a Moshi LoRA run: merged; --lora_only: moshi-finetune's files)
  compile      --config=FILE --topology=v5p-8 [--num_slices=N --what=train|decode]
               [--config.key=value ...]   compile the step for a TPU slice on this machine
               (needs the tpu extra) and print memory, FLOPs, estimated step time, MFU as JSON
  encode       --workdir=DIR IN.wav OUT.npy
  decode       --workdir=DIR IN.npy OUT.wav
  reconstruct  --workdir=DIR IN.wav OUT.wav
"""


class UsageError(Exception):
    pass


def _require(value, name: str):
    if not value:
        raise UsageError(f"--{name} is required")
    return value


def _positional(argv, names):
    if len(argv) != len(names):
        raise UsageError(f"expected arguments {' '.join(names)}, got {argv or 'none'}")
    return argv


def train_codec(config, workdir: str) -> dict:
    """Validates the config, trains (resuming if the workdir has checkpoints), returns a summary."""
    import jax

    from audiolm_jax.codec.data import eval_clips, make_train_iterator
    from audiolm_jax.codec.task import CodecTask
    from audiolm_jax.config_check import check_codec_config
    from audiolm_jax.quantization import quantizer_settings
    from audiolm_jax.train.loop import train_loop
    from audiolm_jax.workdir import check_resume_matches, save_config

    check_codec_config(config, jax.device_count())
    check_resume_matches(workdir, config, ("model", "quantizer"),
                         views={"quantizer": quantizer_settings})
    save_config(config, workdir)
    iterator = make_train_iterator(config)
    task = CodecTask(config, eval_audio=eval_clips(config))
    state, history = train_loop(task, config, workdir, iterator)
    last = history[-1] if history else {}
    skipped = iterator.skipped.as_dict()
    if skipped["count"]:
        logging.warning("Skipped %d malformed items (%d distinct files): %s", skipped["count"],
                        len(skipped["files"]),
                        "; ".join(f"{k}: {v}" for k, v in sorted(skipped["files"].items())))
    return {"workdir": workdir, "step": int(jax.device_get(state.step)),
            "loss": last.get("loss"), "skipped": skipped}


def _model_dir(path: str | None, expected, flag: str = "workdir") -> str:
    """A trained model's folder: it must exist and hold the expected kind of model."""
    from audiolm_jax.workdir import check_workdir_holds

    return check_workdir_holds(_require(path, flag), expected, f"--{flag}")


def _audio_paths(path: str) -> list[str]:
    from audiolm_jax.data.audio_io import AUDIO_EXTENSIONS

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UsageError(f"--audio: {path!r} does not exist")
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files
                   if f.lower().endswith(AUDIO_EXTENSIONS))
    if not found:
        raise UsageError(f"--audio: no audio files under {path!r}")
    return found


def cmd_train_codec(argv):
    _positional(argv, [])
    config = FLAGS.config
    if config is None:
        raise UsageError("--config is required (e.g. --config=configs/codec/article_cnn.py)")
    summary = train_codec(config, _require(FLAGS.workdir, "workdir"))
    print(json.dumps(summary))


def cmd_train_vqvae(argv):
    from audiolm_jax.vqvae.run import train_vqvae

    _positional(argv, [])
    if FLAGS.config is None:
        raise UsageError("--config is required (e.g. --config=configs/vqvae_fashion_mnist.py)")
    print(json.dumps(train_vqvae(FLAGS.config, _require(FLAGS.workdir, "workdir"))))


def cmd_tokenize(argv):
    from audiolm_jax.lm.run import tokenize

    _positional(argv, [])
    paths = _audio_paths(_require(FLAGS.audio, "audio"))
    out = _require(FLAGS.out, "out")
    if FLAGS.tokenizer == "codec":
        _model_dir(FLAGS["codec-workdir"].value, "codec", "codec-workdir")
    print(json.dumps(tokenize(paths, out, tokenizer=FLAGS.tokenizer,
                              codec_workdir=FLAGS["codec-workdir"].value,
                              sample_rate=FLAGS.sample_rate,
                              files_per_shard=FLAGS.files_per_shard,
                              stereo_streams=FLAGS.stereo_streams,
                              text_tokenizer=(_require_file(FLAGS.text_tokenizer)
                                              if FLAGS.text_tokenizer else None))))


def cmd_train_lm(argv):
    import jax

    from audiolm_jax.config_check import check_lm_config
    from audiolm_jax.lm.config import model_settings
    from audiolm_jax.lm.run import train_lm
    from audiolm_jax.workdir import check_resume_matches

    _positional(argv, [])
    if FLAGS.config is None:
        raise UsageError("--config is required (e.g. --config=configs/lm/article_codec_flat.py)")
    workdir = _require(FLAGS.workdir, "workdir")
    if FLAGS.config.get("task") == "moshi":
        _train_moshi(FLAGS.config, workdir)
        return
    if FLAGS.init_from:
        raise UsageError("--init_from fine-tunes a Moshi (configs/lm/moshi.py)")
    check_lm_config(FLAGS.config, jax.device_count())
    check_resume_matches(workdir, FLAGS.config, ("model",), views={"model": model_settings})
    print(json.dumps(train_lm(FLAGS.config, workdir)))


def _train_moshi(config, workdir: str) -> None:
    import jax

    from audiolm_jax.config_check import check_moshi_config
    from audiolm_jax.moshi.run import train_moshi

    if FLAGS.init_from:
        config.train.init_from = FLAGS.init_from
    check_moshi_config(config, jax.device_count())
    print(json.dumps(train_moshi(config, workdir)))


def cmd_import_moshi(argv):
    from audiolm_jax.moshi.run import import_moshi

    _positional(argv, [])
    print(json.dumps(import_moshi(
        _require_file(_require(FLAGS.weights, "weights")), _require(FLAGS.workdir, "workdir"),
        config_json=_require_file(FLAGS.lm_config) if FLAGS.lm_config else None,
        mimi=FLAGS.mimi, lora=_require_file(FLAGS.lora) if FLAGS.lora else None,
        text_tokenizer=_require_file(FLAGS.text_tokenizer) if FLAGS.text_tokenizer else None,
        lora_scaling=FLAGS.lora_scaling,
        fmt="orbax" if FLAGS["format"].present and FLAGS.format == "orbax" else "safetensors")))


def cmd_converse(argv):
    from audiolm_jax.moshi.converse import converse

    _positional(argv, [])
    # Kyutai's LMGen defaults (0.8, top 250) unless the flags are given.
    temperature = FLAGS.temperature if FLAGS["temperature"].present else 0.8
    top_k = FLAGS.top_k if FLAGS["top_k"].present else 250
    print(json.dumps(converse(
        _model_dir(FLAGS.workdir, "moshi"), _require_file(_require(FLAGS.input, "input")),
        _require(FLAGS.out, "out"), transcript=FLAGS.transcript, stereo=FLAGS.stereo,
        sampling=not FLAGS.greedy, temperature=temperature, top_k=top_k,
        text_temperature=FLAGS.text_temperature, text_top_k=FLAGS.text_top_k,
        seed=FLAGS.seed)))


def cmd_serve(argv):
    import logging as std_logging

    from audiolm_jax.serve.server import SamplingOptions, ServeOptions, serve

    _positional(argv, [])
    workdir = _model_dir(FLAGS.workdir, ("moshi", "lm"))
    for name in ("ssl_cert", "ssl_key"):
        if FLAGS[name].value:
            _require_file(FLAGS[name].value)
    # Kyutai's LMGen defaults (0.8, top 250) unless the flags are given, as converse.
    sampling = SamplingOptions(
        sampling=not FLAGS.greedy,
        temperature=FLAGS.temperature if FLAGS["temperature"].present else 0.8,
        top_k=FLAGS.top_k if FLAGS["top_k"].present else 250,
        text_temperature=FLAGS.text_temperature, text_top_k=FLAGS.text_top_k, seed=FLAGS.seed)
    options = ServeOptions(max_sessions=FLAGS.max_sessions, idle_timeout=FLAGS.idle_timeout,
                           auth_token=FLAGS.auth_token,
                           allowed_origins=tuple(FLAGS.allowed_origins), sampling=sampling)
    logger = std_logging.getLogger("audiolm_jax.serve")
    logger.setLevel(std_logging.INFO)
    if not logger.handlers:
        handler = std_logging.StreamHandler(sys.stderr)
        handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    serve(workdir, FLAGS.host, FLAGS.port, options=options, ssl_cert=FLAGS.ssl_cert,
          ssl_key=FLAGS.ssl_key)


def cmd_chat(argv):
    from audiolm_jax.serve.client import chat

    _positional(argv, [])
    url = _require(FLAGS.url, "url")
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"--url={url!r} must start with ws:// or wss://")
    print(json.dumps(chat(url, _require_file(_require(FLAGS.input, "input")),
                          _require(FLAGS.out, "out"), transcript=FLAGS.transcript,
                          fast=FLAGS.fast)))


def cmd_eval_lm(argv):
    from audiolm_jax.lm.run import evaluate_lm

    _positional(argv, [])
    print(json.dumps(evaluate_lm(_model_dir(FLAGS.workdir, "lm"),
                                 _require(FLAGS.tokens, "tokens"))))


def cmd_generate(argv):
    from audiolm_jax.lm.run import generate_audio

    _positional(argv, [])
    prompt = _require_file(_require(FLAGS.prompt, "prompt"))
    print(json.dumps(generate_audio(
        _model_dir(FLAGS.workdir, "lm"), prompt, FLAGS.seconds, _require(FLAGS.out, "out"),
        temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed,
        keep_semantic=FLAGS.keep_semantic,
        input_stream=_require_file(FLAGS.input_stream) if FLAGS.input_stream else None)))


def cmd_make_corpus(argv):
    from audiolm_jax.data.synthetic import write_synthetic_dialogues, write_synthetic_wavs

    _positional(argv, [])
    out = _require(FLAGS.out, "out")
    if FLAGS.num <= 0:
        raise UsageError(f"--num must be positive, got {FLAGS.num}")
    if FLAGS.seconds <= 0:
        raise UsageError(f"--seconds must be positive, got {FLAGS.seconds}")
    if FLAGS.kind == "aligned_dialogue":
        from audiolm_jax.data.lexicon import write_aligned_dialogues, write_lexicon_tokenizer

        paths = write_aligned_dialogues(out, FLAGS.num, sample_rate=FLAGS.sample_rate,
                                        seed=FLAGS.corpus_seed, seconds=FLAGS.seconds)
        extra = {"text_tokenizer": write_lexicon_tokenizer(out)}
    else:
        write = write_synthetic_dialogues if FLAGS.kind == "dialogue" else write_synthetic_wavs
        paths = write(out, FLAGS.num, sample_rate=FLAGS.sample_rate, seed=FLAGS.corpus_seed,
                      seconds=FLAGS.seconds)
        extra = {}
    print(json.dumps({"out": out, "files": len(paths), "kind": FLAGS.kind,
                      "channels": 1 if FLAGS.kind == "speech" else 2,
                      "sample_rate": FLAGS.sample_rate, "seconds": FLAGS.seconds, **extra}))


def cmd_eval_codec(argv):
    from audiolm_jax.codec.inference import evaluate_files, load_codec

    _positional(argv, [])
    paths = _audio_paths(_require(FLAGS.audio, "audio"))
    codec = load_codec(_model_dir(FLAGS.workdir, "codec"))
    print(json.dumps(evaluate_files(codec, paths)))


def _require_file(path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"input file {path!r} does not exist")
    return path


def _load_input_audio(path: str, sample_rate: int):
    from audiolm_jax.data.audio_io import load_audio

    return load_audio(_require_file(path), sample_rate)


def cmd_encode(argv):
    import numpy as np

    from audiolm_jax.codec.inference import load_codec

    src, dst = _positional(argv, ["IN.wav", "OUT.npy"])
    _require_file(src)
    codec = load_codec(_model_dir(FLAGS.workdir, "codec"))
    codes = codec.encode(_load_input_audio(src, codec.sample_rate))
    np.save(dst, codes)
    print(json.dumps({"out": dst, "shape": list(codes.shape), "frame_rate_hz": codec.frame_rate}))


def _load_codes(path: str):
    """The codes of ``encode``'s output file: a .npy array of numbers, [levels, frames]; never
    unpickled (a .npy may hold pickled objects, i.e. code to run)."""
    import numpy as np

    def bad(why: str) -> UsageError:
        return UsageError(f"{path} is not a code array (.npy of integers): {' '.join(why.split())}")

    with open(_require_file(path), "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise bad("not a .npy file")
    try:
        codes = np.load(path, allow_pickle=False)
    except ValueError as e:  # object (pickled) data, a damaged header
        raise bad(str(e)) from None
    except (OSError, EOFError) as e:  # truncated
        raise bad(f"{type(e).__name__}: {e}") from None
    if codes.dtype.kind not in "biuf":
        raise bad(f"its dtype is {codes.dtype}")
    return codes


def cmd_decode(argv):
    from audiolm_jax.codec.inference import load_codec
    from audiolm_jax.data.audio_io import save_wav

    src, dst = _positional(argv, ["IN.npy", "OUT.wav"])
    codes = _load_codes(src)
    codec = load_codec(_model_dir(FLAGS.workdir, "codec"))
    audio = codec.decode(codes)
    save_wav(dst, audio, codec.sample_rate)
    print(json.dumps({"out": dst, "seconds": len(audio) / codec.sample_rate}))


def cmd_reconstruct(argv):
    from audiolm_jax.codec.inference import load_codec
    from audiolm_jax.data.audio_io import save_wav

    src, dst = _positional(argv, ["IN.wav", "OUT.wav"])
    _require_file(src)
    codec = load_codec(_model_dir(FLAGS.workdir, "codec"))
    audio = _load_input_audio(src, codec.sample_rate)
    save_wav(dst, codec.reconstruct(audio, FLAGS.num_levels), codec.sample_rate)
    print(json.dumps({"out": dst, "seconds": len(audio) / codec.sample_rate}))


def cmd_quickstart(argv):
    if FLAGS.task == "moshi":
        from audiolm_jax.moshi.quickstart import run_quickstart

        _positional(argv, [])
        run_quickstart(_require(FLAGS.workdir, "workdir"), train_codec, steps=FLAGS.steps)
        return
    from audiolm_jax.codec.config import quickstart_config
    from audiolm_jax.codec.inference import evaluate_files, load_codec
    from audiolm_jax.data.audio_io import save_wav
    from audiolm_jax.data.synthetic import write_synthetic_wavs

    _positional(argv, [])
    workdir = os.path.abspath(_require(FLAGS.workdir, "workdir"))
    config = quickstart_config()
    if FLAGS.steps:
        config.train.num_steps = int(FLAGS.steps)
    codec_dir = os.path.join(workdir, "codec")
    print(f"[quickstart] training a {config.quantizer.num_levels}-level codec on the built-in "
          f"synthetic speech corpus for {config.train.num_steps} steps -> {codec_dir}")
    train_codec(config, codec_dir)
    eval_dir = os.path.join(workdir, "eval_audio")
    paths = write_synthetic_wavs(eval_dir, n=config.data.num_eval,
                                 sample_rate=config.data.sample_rate, seed=10_000,
                                 seconds=config.data.eval_seconds)
    codec = load_codec(codec_dir)
    report = evaluate_files(codec, paths)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    recon_dir = os.path.join(workdir, "reconstructions")
    os.makedirs(recon_dir, exist_ok=True)
    from audiolm_jax.data.audio_io import load_audio

    for path in paths[:2]:
        audio = load_audio(path, codec.sample_rate)
        name = os.path.splitext(os.path.basename(path))[0]
        save_wav(os.path.join(recon_dir, f"{name}_original.wav"), audio, codec.sample_rate)
        save_wav(os.path.join(recon_dir, f"{name}_reconstruction.wav"),
                 codec.reconstruct(audio), codec.sample_rate)
    print(json.dumps(report))

    # The language model on the codec's tokens, then a continuation of a held-out prompt.
    from audiolm_jax.lm.config import tiny_lm_config
    from audiolm_jax.lm.run import generate_audio, tokenize, train_lm

    corpus = write_synthetic_wavs(os.path.join(workdir, "corpus"), n=64,
                                  sample_rate=config.data.sample_rate, seed=1, seconds=2.0)
    tokens_dir = os.path.join(workdir, "tokens")
    print(f"[quickstart] tokenizing {len(corpus)} utterances with the codec -> {tokens_dir}")
    tokenize(corpus, tokens_dir, tokenizer="codec", codec_workdir=codec_dir, files_per_shard=32)
    lm_config = tiny_lm_config()
    lm_config.model.context = 512  # 128 frames x 4 levels: about 1 s of audio
    lm_config.data.tokens = tokens_dir
    lm_config.train.update(num_steps=300, checkpoint_every=300, name="quickstart-lm")
    lm_dir = os.path.join(workdir, "lm")
    print(f"[quickstart] training a {lm_config.model.num_layers}-layer LM on the flattened "
          f"tokens for {lm_config.train.num_steps} steps -> {lm_dir}")
    lm_summary = train_lm(lm_config, lm_dir)
    continuation = os.path.join(workdir, "continuation.wav")
    gen = generate_audio(lm_dir, paths[0], 0.5, continuation, temperature=0.8, top_k=50, seed=0)
    print(json.dumps({"lm_loss": lm_summary["loss"], **gen}))
    print(f"[quickstart] done.\n  codec workdir:   {codec_dir}\n"
          f"  metrics:         {os.path.join(workdir, 'eval.json')}\n"
          f"  reconstructions: {recon_dir}\n"
          f"  samples:         {os.path.join(codec_dir, 'samples')}\n"
          f"  lm workdir:      {lm_dir}\n"
          f"  continuation:    {continuation} (prompt: {paths[0]})\n"
          f"  tensorboard:     tensorboard --logdir {workdir}")


def cmd_precompute_teacher(argv):
    from audiolm_jax.codec.teachers import check_teacher_files, make_teacher
    from audiolm_jax.codec.teachers import precompute_teacher_features

    _positional(argv, [])
    config = FLAGS.config
    if config is None or "distill" not in config:
        raise UsageError("--config must name a codec config with a 'distill' section "
                         "(e.g. --config=configs/codec/mimi.py)")
    folder = _require(FLAGS.audio, "audio")
    if not os.path.isdir(folder):
        raise UsageError(f"--audio: folder {folder!r} does not exist")
    check_teacher_files(config.distill)
    summary = precompute_teacher_features(
        folder, make_teacher(config.distill), int(config.data.sample_rate),
        suffix=str(config.distill.features_suffix))
    print(json.dumps(summary))


def cmd_import_mimi(argv):
    from audiolm_jax.codec.mimi.importer import import_mimi

    _positional(argv, [])
    print(json.dumps(import_mimi(_require(FLAGS.weights, "weights"),
                                 _require(FLAGS.workdir, "workdir"), FLAGS.num_codebooks)))


def cmd_export(argv):
    from audiolm_jax.export import export
    from audiolm_jax.tasks import TASKS

    _positional(argv, [])
    if FLAGS.lora_only:
        from audiolm_jax.moshi.run import export_lora

        print(json.dumps(export_lora(_require(FLAGS.workdir, "workdir"),
                                     _require(FLAGS.out, "out"))))
        return
    print(json.dumps(export(_require(FLAGS.workdir, "workdir"), _require(FLAGS.out, "out"),
                            fmt=FLAGS.format, tasks=TASKS)))


def cmd_compile(argv):
    _positional(argv, [])
    if FLAGS.config is None:
        raise UsageError("--config is required (e.g. --config=configs/lm/mulaw_baseline.py)")
    topology = _require(FLAGS.topology, "topology")
    from audiolm_jax.aot.topology import quiet_libtpu

    quiet_libtpu()  # before JAX starts: this machine only compiles for the slice
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from audiolm_jax.aot.report import compile_experiment
    from audiolm_jax.aot.topology import TPUUnavailable

    try:
        report = compile_experiment(FLAGS.config, topology, what=FLAGS.what,
                                    num_slices=FLAGS.num_slices)
    except TPUUnavailable as e:
        raise UsageError(str(e)) from None
    print(json.dumps(report, indent=1))


COMMANDS = {
    "quickstart": cmd_quickstart,
    "make-corpus": cmd_make_corpus,
    "train-codec": cmd_train_codec,
    "train-vqvae": cmd_train_vqvae,
    "eval-codec": cmd_eval_codec,
    "tokenize": cmd_tokenize,
    "train-lm": cmd_train_lm,
    "eval-lm": cmd_eval_lm,
    "generate": cmd_generate,
    "encode": cmd_encode,
    "decode": cmd_decode,
    "reconstruct": cmd_reconstruct,
    "export": cmd_export,
    "precompute-teacher": cmd_precompute_teacher,
    "import-mimi": cmd_import_mimi,
    "import-moshi": cmd_import_moshi,
    "converse": cmd_converse,
    "serve": cmd_serve,
    "chat": cmd_chat,
    "compile": cmd_compile,
}


def _main(command, argv):
    from audiolm_jax.data.audio_io import AudioDecodeError
    from audiolm_jax.errors import ConfigError
    from audiolm_jax.train.distributed import maybe_initialize
    from audiolm_jax.train.loop import EXIT_PREEMPTED, Preempted

    try:
        # Before anything touches a JAX backend: joins a multi-process job if this is one.
        maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        COMMANDS[command](argv[1:])
    except Preempted as e:  # SIGTERM: the checkpoint is written; rerunning resumes
        print(f"audiolm-jax {command}: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except (UsageError, ConfigError, AudioDecodeError, FileNotFoundError, ValueError) as e:
        # Bad input of any kind: one line naming the problem. Set AUDIOLM_JAX_TRACEBACK=1 for
        # the full traceback when debugging.
        if os.environ.get("AUDIOLM_JAX_TRACEBACK"):
            raise
        print(f"audiolm-jax {command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def _parse_flags_or_exit(command: str, argv: list[str]) -> list[str]:
    """Parses flags now so a bad flag or config override is one line, before any JAX work."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]
            if not os.path.isfile(path):
                print(f"audiolm-jax {command}: error: config file {path!r} does not exist",
                      file=sys.stderr)
                sys.exit(2)
    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        print(f"audiolm-jax {command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown key
        detail = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "")
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        print(f"audiolm-jax {command}: error: unknown config key ({detail}) "
              f"in {' '.join(overrides)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a config file that cannot be loaded
        if os.environ.get("AUDIOLM_JAX_TRACEBACK"):
            raise
        print(f"audiolm-jax {command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    return remaining


def main():
    """The ``audiolm-jax`` program: restarts once under glibc's huge-page malloc tunable where
    that helps (XLA:CPU's per-step temporaries, audiolm_jax/runtime/host_memory.py), then ``run()``.
    Only the program's own entry point may re-execute the interpreter: code that calls
    ``run()`` in a running process (tests, notebooks) keeps its process."""
    from audiolm_jax.runtime.host_memory import maybe_reexec

    maybe_reexec()
    run()


def run():
    argv = sys.argv
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"audiolm-jax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    rest = argv[2:]
    if command == "import-moshi":  # its --config is a JSON file, not an experiment config
        rest = ["--lm_config=" + a.split("=", 1)[1] if a.startswith("--config=") else a
                for a in rest]
    sys.argv = [f"{os.path.basename(argv[0])} {command}"] + rest
    remaining = _parse_flags_or_exit(command, sys.argv)
    logging.set_verbosity(logging.WARNING)
    # Flags are parsed once, above (config_flags cannot parse its overrides twice).
    app.run(lambda a: _main(command, a), flags_parser=lambda _: remaining)


if __name__ == "__main__":
    main()
