"""Sampling throughput of our compiled KV-cache sampler vs Hugging Face GPT-2 ``generate``.

    python benchmarks/sampling_speed.py [--layers 6 --width 384 --heads 6 --vocab 2048]
        [--prompt 64 --new 256 --batch 1,8 --repeats 3] [--platform cpu|gpu|tpu] [--no_torch]

Random weights and prompts (speed only). Ours: ``audiolm_jax.lm.sampling.generate`` with
temperature 1, top_k 0 (pure sampling), one jitted prefill + ``lax.scan`` decode; a warm-up
call with the same shapes compiles first and is not timed. Peer: ``GPT2LMHeadModel(GPT2Config(
n_layer, n_embd, n_head, vocab_size, n_positions))`` ``.generate(do_sample=True, top_k=0,
max_new_tokens=new, min_new_tokens=new, use_cache=True)`` under ``torch.no_grad()`` (also warmed
up once). tokens/s = batch * new / median wall time of a call (prefill included on both sides).

Prints one JSON object; ``"torch": null`` when transformers/torch are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side and batch")
    p.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default=None)
    p.add_argument("--no_torch", action="store_true")
    return p.parse_args(argv)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_ours(args, batches):
    import flax.linen as nn
    import jax
    import numpy as np

    from audiolm_jax.lm.sampling import generate
    from audiolm_jax.lm.transformer import Transformer, TransformerConfig, init_params

    cfg = TransformerConfig(vocab_size=args.vocab, num_layers=args.layers, num_heads=args.heads,
                            width=args.width, context=args.prompt + args.new)
    model = Transformer(cfg)
    params = nn.meta.unbox(jax.jit(lambda k: init_params(model, k))(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        prompt = jax.numpy.asarray(rng.integers(0, args.vocab, (b, args.prompt), dtype=np.int32))

        def call(seed=[0]):
            seed[0] += 1
            toks = generate(model, params, prompt, args.new, jax.random.PRNGKey(seed[0]),
                            temperature=1.0, top_k=0)
            jax.block_until_ready(toks)
            return toks

        t0 = time.perf_counter()
        toks = call()  # compile + warm-up, same shapes
        compile_s = time.perf_counter() - t0
        assert toks.shape == (b, args.prompt + args.new), toks.shape
        med, times = median_time(call, args.repeats)
        out[str(b)] = {"tokens_per_s": round(b * args.new / med, 1), "call_s_median": round(med, 4),
                       "call_s": [round(t, 4) for t in times],
                       "compile_plus_first_call_s": round(compile_s, 3)}
    dev = jax.devices()[0]
    from audiolm_jax.xla_options import lm_cpu_options

    # what generate() compiles with (CPU matmul kernels, audiolm_jax/xla_options.py)
    return out, f"{dev.platform}: {dev.device_kind}", lm_cpu_options("sample")


def bench_torch(args, batches):
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    dev = torch.device("cuda" if args.platform == "gpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads,
                        vocab_size=args.vocab, n_positions=args.prompt + args.new,
                        # GPT-2's 50256 lies outside a small vocab; min_new_tokens keeps it unsampled
                        bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1)
    model = GPT2LMHeadModel(config).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    out = {}
    for b in batches:
        prompt = torch.randint(0, args.vocab, (b, args.prompt), generator=g).to(dev)
        attn = torch.ones_like(prompt)

        def call():
            with torch.no_grad():
                toks = model.generate(prompt, attention_mask=attn, do_sample=True, top_k=0,
                                      temperature=1.0, max_new_tokens=args.new,
                                      min_new_tokens=args.new, use_cache=True,
                                      pad_token_id=config.eos_token_id)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return toks

        toks = call()  # warm-up
        assert toks.shape == (b, args.prompt + args.new), tuple(toks.shape)
        med, times = median_time(call, args.repeats)
        out[str(b)] = {"tokens_per_s": round(b * args.new / med, 1), "call_s_median": round(med, 4),
                       "call_s": [round(t, 4) for t in times]}
    import transformers
    out["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    out["torch_threads"] = torch.get_num_threads()
    out["device"] = str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.platform is not None:
        os.environ["JAX_PLATFORMS"] = {"gpu": "cuda"}.get(args.platform, args.platform)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    ours, device, options = bench_ours(args, batches)
    peer = None if args.no_torch else bench_torch(args, batches)
    result = {
        "config": {"layers": args.layers, "width": args.width, "heads": args.heads,
                   "vocab": args.vocab, "prompt": args.prompt, "new": args.new,
                   "repeats": args.repeats},
        "device": device,
        "compiler_options": options,
        "ours_tokens_per_s": {b: ours[b]["tokens_per_s"] for b in ours},
        "torch_tokens_per_s": None if peer is None else {b: peer[b]["tokens_per_s"] for b in ours},
        "ratio_ours_over_torch": None if peer is None else {
            b: round(ours[b]["tokens_per_s"] / peer[b]["tokens_per_s"], 3) for b in ours},
        "ours": ours,
        "torch": peer,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
