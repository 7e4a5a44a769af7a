"""The article's finding: the codec's loss falls as RVQ levels grow (1 -> 2 -> 4 -> 8).

Trains the article's CNN codec (configs/codec/article_cnn.py, CPU-sized by the flags below)
once per level count with the same seed, data and steps, then evaluates each on held-out audio.

    python benchmarks/codec_levels.py [--steps 400] [--audio DIR] [--levels 1,2,4,8]

Prints {"levels": {"1": {"spectral_loss": ..., "si_snr_db": ..., ...}, ...}}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

from absl import logging

from audiolm_jax.cli import train_codec
from audiolm_jax.codec.inference import evaluate_files, load_codec
from audiolm_jax.data.synthetic import write_synthetic_wavs

from codec_speed import load_config  # same folder


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--levels", default="1,2,4,8")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--crop_length", type=int, default=8192)
    p.add_argument("--channels", type=int, default=16, help="article: 32 (CPU default: 16)")
    p.add_argument("--res_blocks", type=int, default=2, help="article: 4 (CPU default: 2)")
    p.add_argument("--codebook_size", type=int, default=1024)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--audio", default=None, help="held-out audio folder (default: synthetic)")
    p.add_argument("--train_source", default="synthetic")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    logging.set_verbosity(logging.WARNING)
    root = args.workdir or tempfile.mkdtemp(prefix="codec_levels_")
    if args.audio:
        paths = sorted(glob.glob(os.path.join(args.audio, "**", "*.*"), recursive=True))
    else:
        paths = write_synthetic_wavs(os.path.join(root, "held_out"), n=16, sample_rate=16000,
                                     seed=4242, seconds=4.0, split="eval")
    results = {}
    for levels in [int(x) for x in args.levels.split(",")]:
        config = load_config("article_cnn")
        config.model.update(channels=args.channels, res_blocks=args.res_blocks)
        config.quantizer.num_levels = levels
        config.quantizer.codebook_size = args.codebook_size
        config.data.source = args.train_source
        config.data.crop_length = args.crop_length
        config.optim.update(learning_rate=args.learning_rate, warmup_steps=min(100, args.steps // 10),
                            end_learning_rate=args.learning_rate / 10)
        config.train.update(num_steps=args.steps, batch_size=args.batch_size,
                            checkpoint_every=args.steps, sample_every=0, log_every=50,
                            progress=False)
        workdir = os.path.join(root, f"levels_{levels}")
        t0 = time.time()
        train_codec(config, workdir)
        report = evaluate_files(load_codec(workdir), paths)
        results[str(levels)] = {k: report[k] for k in (
            "spectral_loss", "mel_distance", "si_snr_db", "bitrate_bps", "codebook_usage",
            "perplexity")}
        results[str(levels)]["train_seconds"] = round(time.time() - t0, 1)
        print(json.dumps({"done": levels, **results[str(levels)]}), flush=True)
    losses = [results[k]["spectral_loss"] for k in results]
    print(json.dumps({"benchmark": "codec_levels", "steps": args.steps,
                      "channels": args.channels, "res_blocks": args.res_blocks,
                      "batch_size": args.batch_size, "crop_length": args.crop_length,
                      "held_out_files": len(paths), "levels": results,
                      "spectral_loss_falls": all(a > b for a, b in zip(losses, losses[1:]))},
                     indent=2))


if __name__ == "__main__":
    main()
