"""Milliseconds per 80 ms frame of a Moshi conversation on this machine, as ``converse`` and
a server run it: Mimi's streaming encoder on the user's frame, the generator's step (temporal
transformer with its ring KV cache, text token, depformer steps: one compiled call), Mimi's
streaming decoder on the model's codes. Real time needs the sum under 80 ms.

    python benchmarks/moshi_frame.py [--frames 100] [--setups tiny,full_mimi] [--batches 1]
        [--sessions 1,2,4,8]

``--batches 1,2,4,8``: that many conversations per step, Mimi and the generator batched
(one compiled call each per frame). ``--sessions 1,2,4,8``: the server's own step
(:class:`audiolm_jax.serve.engine.MoshiEngine`: that many session slots, each with its own
states and sampling, Mimi encode + Moshi step + Mimi decode in one compiled call), all
slots active.

Setups (random weights: timing does not depend on them):
* ``tiny``: ``configs/lm/moshi.py:tiny`` with the quickstart's codec (12.5 Hz Mimi-like,
  16 kHz, 4 levels of 256), 4 + 4 codebooks, the quickstart's text vocabulary;
* ``full_mimi``: the released Mimi's sizes (24 kHz, 8 levels of 2048) with
  ``moshi.py:tiny``'s transformer sizes over 8 + 8 codebooks of 2048;
* ``moshi7b`` (``--sessions`` only; an accelerator: ~16 GB of bf16 weights): the released
  Mimi's and Moshi's sizes, the server's step.

Prints one JSON object: per setup, median and 95th-percentile milliseconds of each part and of
the whole frame, after ``--warmup`` frames (compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _codec(config, batch: int = 1):
    from audiolm_jax.codec.mimi.streaming import MimiStreamer
    import flax.linen as nn

    from audiolm_jax.codec.model import build_codec, hop_length

    model = build_codec(config)
    hop = hop_length(config)
    audio = jnp.zeros((1, 2 * hop), jnp.float32)
    v = nn.meta.unbox(jax.jit(lambda k: model.init({"params": k, "vq": k}, audio))(
        jax.random.PRNGKey(0)))
    return MimiStreamer(config, v["params"], v["vq_stats"], batch=batch), hop


def _moshi(levels: int, card: int, text_card: int):
    from audiolm_jax.moshi.experiment import base_config, tiny_variant
    from audiolm_jax.moshi.model import param_shapes
    from audiolm_jax.moshi.task import model_config

    c = tiny_variant(base_config())
    c.model.update(card=card, text_card=text_card, n_q=2 * levels, dep_q=levels)
    cfg = model_config(c)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), jnp.float32),
                          param_shapes(cfg))
    return cfg, params


def _moshi_7b():
    """Moshi's released sizes (``configs/lm/moshi.py``: 4096 x 32 temporal layers, context
    3000, depformer 1024 x 6 over 8 steps, 8 + 8 codebooks of 2048, a 32,000-piece text
    vocabulary), bf16 compute. Random weights are drawn on the device, matrices directly in
    bf16 (as ``moshi.model.inference_params`` holds them), norm scales 1."""
    from audiolm_jax.moshi.experiment import base_config
    from audiolm_jax.moshi.model import param_shapes
    from audiolm_jax.moshi.task import model_config

    c = base_config()
    c.model.update(card=2048, text_card=32000, n_q=16, dep_q=8, dtype="bfloat16")
    cfg = model_config(c)
    leaves, tree = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))

    def draw(key, i, path, s):
        if getattr(path[-1], "key", "") == "scale":
            return jnp.ones(s.shape, jnp.float32)
        x = jax.random.normal(jax.random.fold_in(key, i), s.shape, jnp.float32) * 0.02
        return x.astype(cfg.dtype if len(s.shape) >= 2 else jnp.float32)

    make = jax.jit(lambda key: [draw(key, i, p, s) for i, (p, s) in enumerate(leaves)])
    return cfg, jax.tree_util.tree_unflatten(tree, make(jax.random.PRNGKey(0)))


def run_setup(name: str, codec_config, levels: int, card: int, text_card: int,
              frames: int, warmup: int, batch: int = 1) -> dict:
    from audiolm_jax.moshi.generate import MoshiGenerator

    streamer, hop = _codec(codec_config, batch)
    cfg, params = _moshi(levels, card, text_card)
    gen = MoshiGenerator(cfg, params, batch_size=batch, sampling=True, seed=0)
    enc, dec = streamer.init_encoder_state(), streamer.init_decoder_state()
    audio = np.random.default_rng(1).standard_normal((batch, (frames + warmup) * hop)).astype(
        np.float32) * 0.1
    times = {"encode": [], "lm": [], "decode": [], "frame": []}
    for t in range(frames + warmup):
        t0 = time.perf_counter()
        enc, codes = streamer.encode_step(enc, audio[:, t * hop:(t + 1) * hop])
        user = np.asarray(codes)[:, 0, :levels][:, :, None]
        t1 = time.perf_counter()
        out = gen.step(user)
        t2 = time.perf_counter()
        if out is not None:
            dec, pcm = streamer.decode_step(dec, np.asarray(out)[:, 1:, 0][:, None, :])
            np.asarray(pcm)
        t3 = time.perf_counter()
        if t >= warmup:
            for part, s in (("encode", t1 - t0), ("lm", t2 - t1), ("decode", t3 - t2),
                            ("frame", t3 - t0)):
                times[part].append(1000 * s)
    summary = {part: {"median_ms": round(float(np.median(v)), 3),
                      "p95_ms": round(float(np.percentile(v, 95)), 3)}
               for part, v in times.items()}
    return {"setup": name, "sessions": batch, "sample_rate": int(codec_config.data.sample_rate), "hop": hop,
            "frame_ms": round(1000 * hop / int(codec_config.data.sample_rate), 1),
            "levels_per_stream": levels, "card": card, "moshi_dim": cfg.dim,
            "moshi_layers": cfg.num_layers, "context": cfg.context, **summary,
            "real_time": summary["frame"]["p95_ms"] < 80.0}


def run_engine(name: str, codec_config, levels: int, card: int, text_card: int,
               frames: int, warmup: int, slots: int, moshi_fn=None) -> dict:
    """The server's batched frame (:class:`MoshiEngine.step`), every slot active and
    sampling with its own seed. ``moshi_fn() -> (config, params)``: default the tiny sizes
    over ``levels`` / ``card`` / ``text_card``."""
    from types import SimpleNamespace

    from audiolm_jax.moshi.generate import Sampling
    from audiolm_jax.serve.engine import MoshiEngine

    streamer, hop = _codec(codec_config)
    cfg, params = moshi_fn() if moshi_fn else _moshi(levels, card, text_card)
    rate = int(codec_config.data.sample_rate)
    codec = SimpleNamespace(config=codec_config, params=streamer.variables["params"],
                            vq_stats=streamer.variables["vq_stats"], num_levels=levels,
                            sample_rate=rate, hop_length=hop, frame_rate=rate / hop)
    moshi = SimpleNamespace(path=name, codec=codec, model_config=cfg, params=params,
                            text_tokenizer=None)
    engine = MoshiEngine(moshi, slots=slots)
    for s in range(slots):
        engine.join(s, Sampling(sampling=True), seed=s)
    audio = np.random.default_rng(1).standard_normal((slots, (frames + warmup) * hop)).astype(
        np.float32) * 0.1
    active = np.ones(slots, bool)
    times = []
    for t in range(frames + warmup):
        t0 = time.perf_counter()
        engine.step(audio[:, t * hop:(t + 1) * hop], active)
        if t >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    frame = {"median_ms": round(float(np.median(times)), 3),
             "p95_ms": round(float(np.percentile(times, 95)), 3)}
    return {"setup": name, "mode": "server_engine", "device": str(jax.devices()[0].device_kind),
            "sessions": slots, "sample_rate": rate,
            "hop": hop, "frame_ms": round(1000 * hop / rate, 1), "levels_per_stream": levels,
            "card": card, "moshi_dim": cfg.dim, "moshi_layers": cfg.num_layers,
            "context": cfg.context, "frame": frame, "real_time": frame["p95_ms"] < 80.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--setups", default="tiny,full_mimi")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--sessions", default="",
                        help="session slot counts of the server's engine step, e.g. 1,2,4,8")
    args = parser.parse_args()
    from audiolm_jax.codec.config import mimi_config, quickstart_mimi_config

    setups = {
        "tiny": lambda b: run_setup("tiny", quickstart_mimi_config(), 4, 256, 64, args.frames,
                                    args.warmup, b),
        "full_mimi": lambda b: run_setup("full_mimi", mimi_config(8), 8, 2048, 64,
                                         args.frames, args.warmup, b),
    }
    specs = {"tiny": (quickstart_mimi_config, 4, 256, 64),
             "full_mimi": (lambda: mimi_config(8), 8, 2048, 64),
             "moshi7b": (lambda: mimi_config(8), 8, 2048, 32000)}
    if args.sessions:
        results = [run_engine(s, specs[s][0](), *specs[s][1:], args.frames, args.warmup, int(n),
                              _moshi_7b if s == "moshi7b" else None)
                   for s in args.setups.split(",") for n in args.sessions.split(",")]
    else:
        results = [setups[s](int(b)) for s in args.setups.split(",")
                   for b in args.batches.split(",")]
    print(json.dumps({"benchmark": "moshi_frame", "cpu_count": os.cpu_count(),
                      "machine": platform.machine(), "jax": jax.__version__,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
