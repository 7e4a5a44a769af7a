"""Mimi encode/decode speed: transformers ``MimiModel`` (PyTorch eager) against ours (JAX, jit),
same config and the same random weights, in the same run. Needs the ``peers`` extra.

    python benchmarks/mimi_speed.py [--seconds 10] [--batches 1,8] [--codebooks 8] [--repeats 5]

Prints one JSON object. Real-time factor = compute seconds / audio seconds (lower is faster);
``*_speedup`` = reference seconds / our seconds (above 1: ours is faster). Timings are medians
after a warm-up call (which, for ours, includes compilation). The two sides are timed in
alternation (reference call, our call, reference call, ...), so a burst of load from another
tenant of a shared machine slows both rather than one; ``*_speedup_per_round`` is the median
of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # the shared randomised reference


def interleaved_seconds(ref_fn, our_fn, repeats: int) -> tuple[float, float, float]:
    """(median reference seconds, median our seconds, median per-round ratio) over ``repeats``
    alternating rounds, after one warm-up call of each."""
    ref_fn()
    our_fn()
    ref_times, our_times = [], []
    for _ in range(repeats):
        for fn, times in ((ref_fn, ref_times), (our_fn, our_times)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    ratios = [r / o for r, o in zip(ref_times, our_times)]
    return float(np.median(ref_times)), float(np.median(our_times)), float(np.median(ratios))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--codebooks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import jax
    import torch

    from mimi_reference import make_reference

    from audiolm_jax.codec.mimi.importer import load_mimi_variables
    from audiolm_jax.codec.model import build_codec

    with tempfile.TemporaryDirectory() as tmp:
        reference = make_reference(tmp, seed=0)  # transformers' default config = the release
        config, params, vq_stats = load_mimi_variables(os.path.join(tmp, "model.safetensors"),
                                                       args.codebooks)
    model = build_codec(config)
    variables = {"params": params, "vq_stats": vq_stats}
    encode = jax.jit(lambda v, a: model.apply(v, a, method="encode"))
    decode = jax.jit(lambda v, c: model.apply(v, c, method="decode"))
    sr = int(config.data.sample_rate)

    results = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        audio = (np.random.default_rng(batch).standard_normal((batch, int(args.seconds * sr)))
                 * 0.1).astype(np.float32)
        audio_torch = torch.from_numpy(audio)[:, None]
        with torch.inference_mode():
            ref_codes = reference.encode(audio_torch, num_quantizers=args.codebooks).audio_codes
        codes = np.asarray(encode(variables, audio))  # [B, frames, levels]
        same = bool(np.array_equal(codes.transpose(0, 2, 1), ref_codes.numpy()))

        def ref_encode():
            with torch.inference_mode():
                reference.encode(audio_torch, num_quantizers=args.codebooks)

        def ref_decode():
            with torch.inference_mode():
                reference.decode(ref_codes)

        t_ref_enc, t_enc, enc_rounds = interleaved_seconds(
            ref_encode, lambda: jax.block_until_ready(encode(variables, audio)), args.repeats)
        t_ref_dec, t_dec, dec_rounds = interleaved_seconds(
            ref_decode, lambda: jax.block_until_ready(decode(variables, codes)), args.repeats)
        total = args.seconds * batch
        results[f"batch_{batch}"] = {
            "transformers_encode_rtf": t_ref_enc / total, "ours_encode_rtf": t_enc / total,
            "transformers_decode_rtf": t_ref_dec / total, "ours_decode_rtf": t_dec / total,
            "encode_speedup": t_ref_enc / t_enc, "decode_speedup": t_ref_dec / t_dec,
            "encode_speedup_per_round": enc_rounds, "decode_speedup_per_round": dec_rounds,
            "codes_identical": same,
        }
    print(json.dumps({
        "config": "transformers MimiConfig() (the release), random weights",
        "seconds": args.seconds, "codebooks": args.codebooks, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average": os.getloadavg(), **results}, indent=1))


if __name__ == "__main__":
    main()
