"""Input pipeline alone: audio seconds (codecs) and tokens (LMs) delivered per second.

Measures what one host CPU core feeds, so it can be set beside what a compiled step consumes
on a TPU host (``audiolm-jax compile`` figures, docs/benchmarks.md):

* ``synthetic``: the built-in speech corpus, first epoch (every item synthesised) and later
  epochs (items kept by the corpus's cache);
* ``flac``: a folder of FLAC files written here from the corpus at ``--file_rate`` and
  resampled to ``--sample_rate`` by the loader (what a real corpus costs: decode + resample);
* ``tokens``: LM windows read from a token directory (memory-mapped shards).

Each audio source runs with threads only (``worker_processes=0``, one reading thread: one
core's worth) and with grain worker processes (1..``--max_workers``), which is how the
pipeline scales on a many-core TPU host. Prints one JSON object; ``cores_needed`` divides the
consumption of a v5p host (4 chips) by the one-core rate.

    python benchmarks/input_pipeline.py                # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# What the compiled steps consume per chip (docs/benchmarks.md, `audiolm-jax compile`).
MIMI_V5P_AUDIO_S_PER_S_PER_CHIP = 449.0    # configs/codec/mimi.py, 16 x 10 s per chip
LM151M_V5P_TOKENS_PER_S_PER_CHIP = 8 * 2048 / 0.0619   # splash, minimal remat + FSDP
V5P_CHIPS_PER_HOST = 4
V5P_HOST_VCPUS = 208  # Cloud TPU v5p VM (ct5p-hightpu-4t): 208 vCPUs for 4 chips


def _rate(iterator, units_of, seconds: float, warmup: int = 2) -> dict:
    for _ in range(warmup):  # worker start-up and first reads are not the steady state
        next(iterator)
    count, units, start = 0, 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        units += units_of(next(iterator))
        count += 1
    elapsed = time.perf_counter() - start
    return {"batches": count, "per_second": round(units / elapsed, 1),
            "batches_per_second": round(count / elapsed, 2)}


def _audio_rates(name, make_source, args, cold: bool) -> dict:
    from audiolm_jax.data import make_audio_iterator

    out = {}
    for workers in [0] + list(range(1, args.max_workers + 1)):
        source = make_source()
        it = make_audio_iterator(
            source, crop_length=int(args.crop_seconds * args.sample_rate),
            batch_size=args.batch_size, seed=0, shard_index=0, shard_count=1,
            num_threads=1 if workers == 0 else None, worker_processes=workers)
        seconds_per_batch = args.batch_size * args.crop_seconds
        try:
            r = _rate(it, lambda b: seconds_per_batch, args.seconds)
        finally:
            it.close()
        r["audio_seconds_per_second"] = r.pop("per_second")
        out["threads_1" if workers == 0 else f"workers_{workers}"] = r
        print(f"[{name}{' cold' if cold else ''}] workers={workers}: {r}", file=sys.stderr)
    return out


def _token_rate(args, tmp: str) -> dict:
    """Windows of 2048 frames, 32 a batch, from a one-shard token directory of random μ-law
    tokens written in the documented format (lm/tokens.py)."""
    from audiolm_jax.lm import tokens as tokens_lib

    frames = 4_000_000
    shard_dir = os.path.join(tmp, "tokens")
    os.makedirs(shard_dir)
    name = tokens_lib.shard_file_name(0, 1)
    codes = np.random.default_rng(0).integers(0, 256, size=(1, 1, frames), dtype=np.int16)
    np.savez(os.path.join(shard_dir, name), tokens=codes, starts=np.zeros((1,), np.int64),
             names=np.asarray(["synthetic"]), skipped=np.zeros((0,), str))
    with open(os.path.join(shard_dir, tokens_lib.METADATA_FILE), "w") as f:
        json.dump({"format": tokens_lib.FORMAT_VERSION, "tokenizer": "mulaw",
                   "sample_rate": 16000, "frame_rate": 16000.0, "num_levels": 1,
                   "codebook_size": 256, "num_streams": 1, "codec": None, "num_files": 1,
                   "files_per_shard": 1, "num_shards": 1, "shard_files": [name],
                   "skipped": {"count": 0, "files": {}}}, f)
    token_dir = tokens_lib.load_token_dir(shard_dir)
    it = tokens_lib.make_window_iterator(token_dir, frames=2048, batch_size=32, seed=0)
    r = _rate(it, lambda b: b["codes"].size, args.seconds)
    r["tokens_per_second"] = r.pop("per_second")
    print(f"[tokens] {r}", file=sys.stderr)
    return r


def _write_flac(folder: str, args) -> None:
    import soundfile as sf

    from audiolm_jax.data.synthetic import SyntheticSpeechCorpus

    corpus = SyntheticSpeechCorpus(sample_rate=args.file_rate, num_utterances=args.files,
                                   utterance_seconds=args.file_seconds, cache_bytes=0)
    os.makedirs(folder)
    for i in range(args.files):
        sf.write(os.path.join(folder, f"utt_{i:04d}.flac"), corpus[i]["audio"], args.file_rate,
                 subtype="PCM_16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample_rate", type=int, default=24000)
    p.add_argument("--crop_seconds", type=float, default=10.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per setting")
    p.add_argument("--max_workers", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--file_seconds", type=float, default=12.0)
    p.add_argument("--file_rate", type=int, default=48000,
                   help="rate of the FLAC files; the loader resamples to --sample_rate")
    p.add_argument("--sources", default="synthetic,flac,tokens")
    args = p.parse_args()
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from audiolm_jax.data import make_source
    from audiolm_jax.data.synthetic import SyntheticSpeechCorpus

    sources = args.sources.split(",")
    result = {"benchmark": "input_pipeline", "cpu_count": os.cpu_count(),
              "sample_rate": args.sample_rate, "crop_seconds": args.crop_seconds,
              "batch_size": args.batch_size}
    utterance = max(args.crop_seconds, 4.0)
    big = 100_000  # no item repeats within a measurement: every read synthesises
    with tempfile.TemporaryDirectory() as tmp:
        if "synthetic" in sources:
            result["synthetic_first_epoch"] = _audio_rates(
                "synthetic", lambda: SyntheticSpeechCorpus(
                    args.sample_rate, num_utterances=big, utterance_seconds=utterance),
                args, cold=True)
            small = max(args.batch_size, 32)

            def cached():
                corpus = SyntheticSpeechCorpus(args.sample_rate, num_utterances=small,
                                               utterance_seconds=utterance)
                for i in range(small):  # a later epoch: everything already synthesised
                    corpus[i]
                return corpus

            result["synthetic_later_epochs"] = _audio_rates("synthetic", cached, args, False)
        if "flac" in sources:
            folder = os.path.join(tmp, "flac")
            _write_flac(folder, args)
            result["flac"] = {"files": args.files, "file_seconds": args.file_seconds,
                              "file_rate": args.file_rate,
                              **_audio_rates("flac", lambda: make_source(folder, args.sample_rate),
                                             args, cold=False)}
        if "tokens" in sources:
            result["tokens"] = _token_rate(args, tmp)

    host = {"chips": V5P_CHIPS_PER_HOST, "vcpus": V5P_HOST_VCPUS,
            "mimi_audio_seconds_per_second": MIMI_V5P_AUDIO_S_PER_S_PER_CHIP * V5P_CHIPS_PER_HOST,
            "lm151m_tokens_per_second": round(LM151M_V5P_TOKENS_PER_S_PER_CHIP
                                              * V5P_CHIPS_PER_HOST)}
    needed = {}
    for key in ("synthetic_first_epoch", "synthetic_later_epochs", "flac"):
        if key in result:
            one_core = result[key]["threads_1"]["audio_seconds_per_second"]
            needed[key] = round(host["mimi_audio_seconds_per_second"] / one_core, 1)
    if "tokens" in result:
        needed["tokens"] = round(host["lm151m_tokens_per_second"]
                                 / result["tokens"]["tokens_per_second"], 3)
    result["v5p_host"] = host
    result["cores_needed"] = needed
    print(json.dumps(result))


if __name__ == "__main__":
    main()
