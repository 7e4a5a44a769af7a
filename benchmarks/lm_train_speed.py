"""Training throughput of our GPT (jitted JAX step) vs a PyTorch eager GPT of the same sizes.

    python benchmarks/lm_train_speed.py [--layers 6 --width 384 --heads 6 --vocab 2048]
        [--batch 8 --seq 512 --steps 10 --platform cpu|gpu|tpu --dtype float32|bfloat16]
        [--peak_tflops X] [--xla_flags "..."] [--no_torch] [--no_hugepages]
        [--attention blocked|xla|dot_product|splash] [--remat none|full|minimal|...]

Both sides: random tokens, next-token cross-entropy, AdamW (lr 3e-4, wd 0.1), same batch and
sequence length; learned positions, pre-norm blocks, tanh-GELU MLP (4x), tied embeddings,
biases. Each side is warmed up first (JAX: compile; torch: allocator/first-call costs), then
``--steps`` steps of each are timed one by one (JAX: ``block_until_ready`` of the whole train
state; torch: ``cuda.synchronize`` on GPU), in ``--rounds`` blocks of consecutive steps per side,
the sides taking turns. tokens/s = batch * seq / median step time (the mean is reported too);
``ratio_per_round`` holds each round's ratio of median step times.

Like the ``audiolm-jax`` command, the script restarts itself under glibc's huge-page malloc
tunable (``audiolm_jax/runtime/host_memory.py``; ``"glibc_tunables"`` in the output records
it). It is process-wide, so the peer runs under it too; ``--no_hugepages`` runs without it.

Prints one JSON object. If torch is not installed, ``"torch": null``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import statistics
import time

# Peak dense TFLOP/s by (device-kind substring, dtype), for MFU when --peak_tflops is not given.
PEAK_TFLOPS = {
    ("H100", "bfloat16"): 989.0,
    ("H200", "bfloat16"): 989.0,
    ("H100", "float32"): 494.5,  # TF32 tensor cores (dense); true fp32 is ~67
    ("H200", "float32"): 494.5,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float32"): 156.0,  # TF32
}


def model_arg_parser(description: str) -> argparse.ArgumentParser:
    """An LM benchmark's argument parser with the model's size flags (``sampling_speed.py``
    uses it too)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=2048)
    return p


def parse_args(argv=None):
    p = model_arg_parser(__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side (after compile)")
    p.add_argument("--rounds", type=int, default=2,
                   help="the timed steps are split into this many blocks per side, the sides "
                        "taking turns")
    p.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default=None,
                   help="JAX platform (default: JAX's choice); torch uses cuda for gpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (params stay float32; torch uses autocast for bf16)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="peak FLOP/s of the device in TFLOP/s, for MFU")
    p.add_argument("--xla_flags", default=None,
                   help="appended to XLA_FLAGS before JAX is imported")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--no_hugepages", action="store_true",
                   help="do not restart under glibc's huge-page malloc tunable, which the "
                        "audiolm-jax command uses (audiolm_jax/runtime/host_memory.py); it "
                        "applies to the whole process, so to both sides")
    p.add_argument("--attention_block", type=int, default=128,
                   help="our causal attention's query block (0: one full T x T block)")
    p.add_argument("--attention", default="blocked",
                   help="our attention kernel (layers/attention.py): blocked, xla, dot_product "
                        "(jax.nn.dot_product_attention: cuDNN's fused attention on a GPU when "
                        "it applies; 'cudnn_attention' in the output says whether it did) or "
                        "splash (TPU)")
    p.add_argument("--remat", default="none", help="our remat policy (layers/transformer.py)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after timing, trace 3 of our steps with jax.profiler into DIR\n"
                        "(open with xprof / TensorBoard's profile plugin)")
    p.add_argument("--hlo_out", default=None, metavar="FILE",
                   help="write our compiled step's optimised HLO text to FILE")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- ours (JAX)


def prepare_ours(args):
    """(one_step, info, final_loss): our compiled step, warmed up."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import flax.linen as nn

    from audiolm_jax.lm.transformer import (Transformer, LMConfig, flops_per_token,
                                            init_params, num_params)

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    cfg = LMConfig(vocab_size=args.vocab, num_layers=args.layers, num_heads=args.heads,
                            width=args.width, context=args.seq, dtype=dtype,
                            attention_block=args.attention_block, attention=args.attention,
                            remat=args.remat)
    model = Transformer(cfg)
    device = jax.devices()[0]
    params = nn.meta.unbox(jax.jit(lambda k: init_params(model, k))(jax.random.PRNGKey(0)))
    params = jax.device_put(params, device)
    tx = optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)
    opt_state = tx.init(params)

    def loss_fn(p, tokens):
        logits = model.apply({"params": p}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def step(p, o, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    from audiolm_jax.runtime.xla_options import compiler_options

    # The compiler options the library's LM train step uses (CPU matmul kernels).
    options = compiler_options("lm_train")
    # seq + 1 tokens per row: seq inputs, seq targets.
    tokens = jax.device_put(jnp.asarray(np.random.default_rng(0).integers(
        0, args.vocab, (args.batch, args.seq + 1), dtype=np.int32)), device)

    t0 = time.perf_counter()
    train_step = jax.jit(step, donate_argnums=(0, 1), compiler_options=options).lower(
        params, opt_state, tokens).compile()
    hlo = train_step.as_text()
    if args.hlo_out:
        with open(args.hlo_out, "w") as f:
            f.write(hlo)
    params, opt_state, loss = train_step(params, opt_state, tokens)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        params, opt_state, loss = train_step(params, opt_state, tokens)
    jax.block_until_ready((params, loss))
    state = {"params": params, "opt_state": opt_state, "loss": loss}

    def one_step():
        state["params"], state["opt_state"], state["loss"] = train_step(
            state["params"], state["opt_state"], tokens)
        # The whole state, not just the loss: the optimizer update must not spill into the
        # next timed call (the peer's, when the two sides alternate).
        jax.block_until_ready(state)

    info = {
        "params": num_params(cfg),
        "flops_per_token": flops_per_token(cfg, args.seq),
        "device": f"{device.platform}: {device.device_kind}",
        "device_kind": device.device_kind,
        "jax_version": jax.__version__,
        "compile_plus_first_step_s": round(compile_s, 3),
        "compiler_options": options,
        "attention": args.attention,
        "remat": args.remat,
        # XLA's cuDNN fused attention appears as custom calls named __cudnn$fmha...
        "cudnn_attention": "__cudnn$fmha" in hlo,
        "peak_memory_gib": _peak_memory_gib(device),
    }
    return one_step, info, lambda: float(state["loss"])


def _peak_memory_gib(device):
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return round(stats["peak_bytes_in_use"] / 2 ** 30, 3)


# ----------------------------------------------------------------------------- torch peer


def build_torch_gpt(torch, vocab, layers, width, heads, context):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)
            self.ln_2 = nn.LayerNorm(width)
            self.fc = nn.Linear(width, 4 * width)
            self.fc_out = nn.Linear(4 * width, width)

        def forward(self, x):
            B, T, W = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(W, dim=-1)
            q, k, v = (t.view(B, T, heads, W // heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, W))
            return x + self.fc_out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, width)
            self.wpe = nn.Embedding(context, width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(width)
            for name, prm in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(prm)
                elif prm.dim() >= 2:
                    std = 0.02 / (2 * layers) ** 0.5 if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                    nn.init.normal_(prm, std=std)

        def forward(self, idx):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            return self.ln_f(x) @ self.wte.weight.t()  # tied LM head

    return GPT()


def prepare_torch(args):
    """(one_step, info, final_loss) of the PyTorch peer, warmed up; Nones without torch."""
    try:
        import torch
    except ImportError:
        return None, None, None
    dev = torch.device("cuda" if args.platform == "gpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_torch_gpt(torch, args.vocab, args.layers, args.width, args.heads, args.seq).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g).to(dev)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    use_bf16 = args.dtype == "bfloat16"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, args.vocab),
                                                 targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for _ in range(max(1, args.warmup)):
        step()
    sync()
    last = {}

    def one_step():
        last["loss"] = step()
        sync()

    info = {
        "torch_version": torch.__version__,
        "torch_device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "torch_params": sum(p.numel() for p in model.parameters()),
    }
    return one_step, info, lambda: last["loss"].item()


# ----------------------------------------------------------------------------- main


def summarize(times, tokens_per_step):
    med = statistics.median(times)
    return {"tokens_per_s": round(tokens_per_step / med, 1),
            "tokens_per_s_mean": round(tokens_per_step * len(times) / sum(times), 1),
            "step_s_median": round(med, 4), "step_s_min": round(min(times), 4),
            "step_s_max": round(max(times), 4), "steps": len(times)}


def peak_for(device_kind, dtype, given):
    if given is not None:
        return given
    for (kind, dt), tf in PEAK_TFLOPS.items():
        if kind.lower() in device_kind.lower() and dt == dtype:
            return tf
    return None


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None):
    args = parse_args(argv)
    if not args.no_hugepages:
        # As the audiolm-jax command runs: restarts this process under the tunable (same
        # arguments) unless it is already set, opted out of, or useless on this host.
        from audiolm_jax.runtime.host_memory import maybe_reexec

        maybe_reexec()
    if args.platform is not None:
        os.environ["JAX_PLATFORMS"] = {"gpu": "cuda"}.get(args.platform, args.platform)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()

    tokens_per_step = args.batch * args.seq
    ours_step, info, ours_loss = prepare_ours(args)
    torch_step, tinfo, torch_loss = (None, None, None) if args.no_torch else prepare_torch(args)

    # The two sides take turns in blocks of consecutive steps (peer block, our block, ...), so
    # a slow change in a shared machine's load falls on both; within a block steps follow each
    # other as in a training loop (a step's cleanup spills into the next, as it would there),
    # and each block's first step, which follows the other side's, is not timed.
    ours_times, torch_times = [], []
    faults = {"ours": 0, "torch": 0}  # minor page faults during the timed steps, per side
    rounds = max(1, min(args.rounds, args.steps))
    ratios = []
    for r in range(rounds):
        per_block = args.steps // rounds + (r < args.steps % rounds)
        block = {}
        for name, fn, times in (("torch", torch_step, torch_times), ("ours", ours_step,
                                                                     ours_times)):
            if fn is None:
                continue
            fn()
            block[name] = []
            f0 = minor_faults()
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                block[name].append(time.perf_counter() - t0)
            faults[name] += minor_faults() - f0
            times.extend(block[name])
        if torch_step is not None:
            ratios.append(statistics.median(block["torch"]) / statistics.median(block["ours"]))

    if args.profile:
        import jax

        with jax.profiler.trace(args.profile):
            for _ in range(3):
                ours_step()

    ours = summarize(ours_times, tokens_per_step)
    ours["compile_plus_first_step_s"] = info.pop("compile_plus_first_step_s")
    ours["final_loss"] = ours_loss()
    ours["minor_page_faults_per_step"] = round(faults["ours"] / len(ours_times))
    torch_res = None
    torch_threads = None
    if torch_step is not None:
        torch_res = summarize(torch_times, tokens_per_step)
        torch_threads = tinfo.pop("torch_threads")
        torch_res.update(tinfo)
        torch_res["final_loss"] = torch_loss()
        torch_res["minor_page_faults_per_step"] = round(faults["torch"] / len(torch_times))

    fpt = info["flops_per_token"]
    achieved = fpt * ours["tokens_per_s"]
    peak = peak_for(info["device_kind"], args.dtype, args.peak_tflops)
    # MaxText's convention (the TPU figures of docs/benchmarks.md): causal attention counts
    # half of the full T x T scores, 6 L T W per token instead of 12 L T W.
    fpt_causal = fpt - 6 * args.layers * args.seq * args.width
    result = {
        "config": {"layers": args.layers, "width": args.width, "heads": args.heads,
                   "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
                   "steps": args.steps, "dtype": args.dtype},
        "ours_tokens_per_s": ours["tokens_per_s"],
        "torch_tokens_per_s": None if torch_res is None else torch_res["tokens_per_s"],
        "ratio_ours_over_torch": (None if torch_res is None
                                  else round(ours["tokens_per_s"] / torch_res["tokens_per_s"], 3)),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "params": info["params"],
        "flops_per_token": fpt,
        "achieved_tflops": round(achieved / 1e12, 4),
        "peak_tflops": peak,
        "mfu": None if peak is None else round(achieved / (peak * 1e12), 5),
        "mfu_maxtext_convention": (None if peak is None else round(
            fpt_causal * ours["tokens_per_s"] / (peak * 1e12), 5)),
        "attention": info["attention"],
        "remat": info["remat"],
        "cudnn_attention": info["cudnn_attention"],
        "peak_memory_gib": info["peak_memory_gib"],
        "device": info["device"],
        "host": f"{_platform.machine()} {os.cpu_count()} cpus",
        "jax_version": info["jax_version"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "torch_threads": torch_threads,
        "ours": ours,
        "torch": torch_res,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
