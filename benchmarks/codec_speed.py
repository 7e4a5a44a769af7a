"""Encode/decode real-time factors of each codec config (random weights: speed only).

    python benchmarks/codec_speed.py [--seconds 10] [--batch 1] [--configs article_cnn,soundstream]

Prints one JSON object. Real-time factor = compute seconds / audio seconds (lower is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.codec.model import build_codec, frame_rate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
    path = os.path.join(REPO, "configs", "codec", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def timed(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(name: str, seconds: float, batch: int) -> dict:
    config = load_config(name)
    model = build_codec(config)
    sr = int(config.data.sample_rate)
    audio = jnp.asarray(np.random.default_rng(0).standard_normal((batch, int(seconds * sr)))
                        .astype(np.float32) * 0.1)
    variables = jax.jit(lambda k: model.init({"params": k, "vq": k}, audio[:, :sr], train=False))(
        jax.random.PRNGKey(0))
    encode = jax.jit(lambda a: model.apply(variables, a, method="encode"))
    decode = jax.jit(lambda c: model.apply(variables, c, method="decode"))
    codes = encode(audio)
    t_enc = timed(encode, audio)
    t_dec = timed(decode, codes)
    audio_seconds = seconds * batch
    return {"encode_rtf": t_enc / audio_seconds, "decode_rtf": t_dec / audio_seconds,
            "encode_seconds": t_enc, "decode_seconds": t_dec, "sample_rate": sr,
            "frame_rate_hz": frame_rate(config), "levels": int(config.quantizer.num_levels)}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--configs", default="article_cnn,soundstream")
    p.add_argument("--platform", default=None, help="cpu, gpu or tpu (default: JAX's default)")
    args = p.parse_args()
    if args.platform:
        jax.config.update("jax_platforms", args.platform)
    results = {name: bench(name, args.seconds, args.batch) for name in args.configs.split(",")}
    print(json.dumps({"benchmark": "codec_speed", "device": str(jax.devices()[0].device_kind),
                      "machine": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count(), "seconds": args.seconds, "batch": args.batch,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
