"""Helpers shared by several test files (importable: pytest puts tests/ on sys.path)."""

import jax
import jax.numpy as jnp
import numpy as np


def fast_params(module, x, seed=0):
    """Random parameters with the module's shapes, without compiling ``module.init``
    (XLA:CPU compiles the PRNG-heavy init of a deep conv net slowly): :func:`fast_init`."""
    return fast_init(module.init, x, seed=seed)


def mulaw_token_dir(root, seed):
    """A mu-law token directory ``root/tokens`` of 4 synthetic quarter-second utterances at
    8 kHz (their WAVs in ``root/wavs``), from the corpus of ``seed``; returns its path."""
    from audiolm_jax.data.synthetic import write_synthetic_wavs
    from audiolm_jax.lm.tokens import tokenize_corpus

    wavs = write_synthetic_wavs(str(root / "wavs"), n=4, sample_rate=8000, seed=seed, seconds=0.25)
    tokenize_corpus(wavs, str(root / "tokens"), tokenizer="mulaw", sample_rate=8000)
    return str(root / "tokens")


def fast_init(init, *args, seed=0):
    """:func:`fast_params` for any ``init(rng, *args)`` (a module's ``init`` with several call
    arguments, logically partitioned boxes removed): the variables it would make, random with
    the same rule (kernels ~ N(0, 1/fan_in), biases 0, weight-norm gains 1), nothing compiled."""
    import flax.linen as nn

    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), *args))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "g":
            return jnp.ones(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_mimi_codec_dir(root):
    """A random Mimi-like 12.5 Hz, 16 kHz codec workdir (``quickstart_mimi_config``, as
    ``import-mimi`` writes one) at ``root/codec``, its codebooks random. -> its path."""
    from audiolm_jax.codec.config import quickstart_mimi_config
    from audiolm_jax.codec.mimi.importer import write_workdir
    from audiolm_jax.codec.model import build_codec, hop_length
    from audiolm_jax.train.loop import strip_boxes

    config = quickstart_mimi_config()
    model = build_codec(config)
    audio = jnp.zeros((1, 2 * hop_length(config)), jnp.float32)
    v = strip_boxes(jax.jit(lambda k: model.init({"params": k, "vq": k}, audio))(
        jax.random.PRNGKey(0)))
    # A fresh codec's codebooks are zeros (every code ties): give them random entries.
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(v["vq_stats"])]
    key = jax.random.PRNGKey(1)
    v["vq_stats"] = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(jax.random.fold_in(key, paths.index(p)), x.shape) * 0.1
        if "codebook" in str(p[-1]) else x, v["vq_stats"])
    codec_dir = str(root / "codec")
    write_workdir(config, v["params"], v["vq_stats"], codec_dir)
    return codec_dir


def tiny_moshi_workdir(root, user_seconds: float = 2.0):
    """A Moshi workdir as ``import-moshi`` writes it, from random Kyutai-layout weights
    (``MoshiConfig.tiny`` over 4 + 4 codebooks of 256), naming a random Mimi-like 12.5 Hz codec
    (``quickstart_mimi_config``) and the lexicon's text tokenizer; plus a 16 kHz user WAV of
    ``user_seconds``. -> (moshi workdir, user.wav, text tokenizer path). About 7 s."""
    import json

    from safetensors.numpy import save_file

    from audiolm_jax.data.audio_io import save_wav
    from audiolm_jax.data.lexicon import write_lexicon_tokenizer
    from audiolm_jax.moshi import MoshiConfig, param_shapes, to_kyutai
    from audiolm_jax.moshi.run import import_moshi
    from audiolm_jax.moshi.task import moshi_delays
    from audiolm_jax.text import TextTokenizer

    codec_dir = tiny_mimi_codec_dir(root)
    spm = write_lexicon_tokenizer(root)
    cfg = MoshiConfig.tiny(card=256, n_q=8, dep_q=4, text_card=TextTokenizer.load(spm).vocab_size,
                           delays=moshi_delays(8, 4), depformer_weights_per_step_schedule=None)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                          param_shapes(cfg))
    save_file({k: np.ascontiguousarray(x) for k, x in to_kyutai(params, cfg).items()},
              str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(cfg.kyutai_kwargs()))
    out = str(root / "moshi")
    import_moshi(str(root / "model.safetensors"), out, config_json=str(root / "config.json"),
                 mimi=codec_dir, text_tokenizer=spm)
    user = np.sin(np.arange(int(user_seconds * 16000)) * 0.03).astype(np.float32) * 0.3
    save_wav(str(root / "user.wav"), user, 16000)
    return out, str(root / "user.wav"), spm


def tiny_duplex_lm_workdir(root, steps: int = 2):
    """A two-stream depth-layout LM (``configs/lm/duplex.py``, 1-layer) trained ``steps`` steps
    on two stereo WAVs tokenized by a random tiny Mimi (:func:`tiny_mimi_codec_dir`), 2 levels
    per stream, a 48-frame context. -> (LM workdir, a 16 kHz user WAV of 1.5 s). ~15 s."""
    import importlib.util
    import os

    import soundfile as sf

    from audiolm_jax.lm.run import tokenize, train_lm

    codec_dir = tiny_mimi_codec_dir(root)
    t = np.arange(16000 * 4) / 16000
    wavs = []
    for i in range(2):  # stereo: channel 0 = the model's side, 1 = the user's
        pair = np.stack([0.3 * np.sin(2 * np.pi * (180 + 40 * i) * t),
                         0.2 * np.sin(2 * np.pi * (310 + 25 * i) * t) * (t % 1.0 < 0.5)], -1)
        wavs.append(str(root / f"dialogue_{i}.wav"))
        sf.write(wavs[-1], pair.astype(np.float32), 16000)
    tokenize(wavs, str(root / "tokens"), codec_workdir=codec_dir, stereo_streams=True)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "lm", "duplex.py")
    spec = importlib.util.spec_from_file_location("duplex", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.model.update(num_layers=1, num_heads=2, width=32, context=48, dropout=0.0)
    c.depth.update(num_layers=1, num_heads=2, width=16)
    c.tokens.num_levels = 2
    c.loss.level_weights = (100.0, 1.0)  # Moshi's semantic x100, per stream
    c.data.tokens = str(root / "tokens")
    c.train.update(num_steps=steps, batch_size=8, checkpoint_every=steps, log_every=1,
                   progress=False, async_checkpoints=False)
    workdir = str(root / "duplex")
    train_lm(c, workdir)
    user = (0.3 * np.sin(np.arange(24000) * 0.03)).astype(np.float32)
    sf.write(str(root / "user.wav"), user, 16000)
    return workdir, str(root / "user.wav")


class ServerThread:
    """A ``MoshiServer``'s event loop in a daemon thread on 127.0.0.1 (a free port), as
    ``serve`` runs it: ``url()`` for the websocket, ``wait_idle()``, ``stop()``."""

    def __init__(self, server):
        import asyncio
        import threading

        from audiolm_jax.serve.server import start

        self.server, self.loop = server, asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.runner, self.port = self.loop.run_until_complete(start(server, "127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(60)

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/api/chat{query}"

    def http_url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_idle(self, timeout: float = 10.0) -> None:
        import time

        end = time.monotonic() + timeout
        busy = lambda: self.server.sessions or self.server.slots_in_use()  # (joining ones too)
        while busy() and time.monotonic() < end:
            time.sleep(0.05)
        assert not busy(), "sessions still open"

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
