"""Depth transformer decoding on CPU: KV cache over the levels vs recomputing levels 0..k.

    python benchmarks/depth_decode_speed.py [--levels 8 --depth_layers 6 --depth_width 1024
        --depth_heads 16 --width 1024 --batch 1,8 --frames 32 --repeats 3]

Random weights (speed only). Times ``DepthTransformerLM.decode_frame`` alone (the temporal
transformer is not run: one hidden state per frame is drawn at random), ``frames`` frames inside
one jitted ``lax.scan`` with greedy choice of every level; a warm-up call compiles first.
Prints one JSON object: frames/s for each variant and batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", type=int, default=8)
    p.add_argument("--width", type=int, default=1024, help="temporal width (projection input)")
    p.add_argument("--depth_layers", type=int, default=6)
    p.add_argument("--depth_width", type=int, default=1024)
    p.add_argument("--depth_heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1152)
    p.add_argument("--batch", default="1,8")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from audiolm_jax.lm.depth import DepthTransformerLM, init_depth_params, make_depth_lm_config
    from audiolm_jax.lm.transformer import LMConfig

    temporal = LMConfig(vocab_size=args.vocab, num_layers=1, num_heads=8,
                                 width=args.width, context=16, num_levels=args.levels)
    cfg = make_depth_lm_config(temporal, num_layers=args.depth_layers,
                               num_heads=args.depth_heads, width=args.depth_width,
                               codebook_size=args.vocab - 1)
    model = DepthTransformerLM(cfg)
    params = nn.meta.unbox(jax.jit(lambda k: init_depth_params(model, k))(jax.random.PRNGKey(0)))

    def frames_fn(kv_cache):
        def run(params, hiddens):
            def step(_, h):
                greedy = lambda k, logits: jnp.argmax(logits, -1)
                tokens, _ = model.apply({"params": params}, h, greedy, kv_cache,
                                        method=DepthTransformerLM.decode_frame)
                return None, tokens
            return jax.lax.scan(step, None, hiddens)[1]
        return jax.jit(run)

    results = {"levels": args.levels, "depth_layers": args.depth_layers,
               "depth_width": args.depth_width, "frames": args.frames, "frames_per_s": {}}
    for batch in [int(b) for b in args.batch.split(",")]:
        hiddens = jax.random.normal(jax.random.PRNGKey(1), (args.frames, batch, args.width))
        for name, kv in (("kv_cache", True), ("recompute", False)):
            fn = frames_fn(kv)
            jax.block_until_ready(fn(params, hiddens))  # compile
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, hiddens))
                times.append(time.perf_counter() - t0)
            results["frames_per_s"][f"{name}_batch{batch}"] = round(
                args.frames / statistics.median(times), 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
