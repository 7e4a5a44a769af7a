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


def tiny_moshi_workdir(root, user_seconds: float = 2.0):
    """A Moshi workdir as ``import-moshi`` writes it, from random Kyutai-layout weights
    (``MoshiConfig.tiny`` over 4 + 4 codebooks of 256), naming a random Mimi-like 12.5 Hz codec
    (``quickstart_mimi_config``) and the lexicon's text tokenizer; plus a 16 kHz user WAV of
    ``user_seconds``. -> (moshi workdir, user.wav, text tokenizer path). About 7 s."""
    import json

    from safetensors.numpy import save_file

    from audiolm_jax.codec.config import quickstart_mimi_config
    from audiolm_jax.codec.mimi.importer import write_workdir
    from audiolm_jax.codec.model import build_codec, hop_length
    from audiolm_jax.data.audio_io import save_wav
    from audiolm_jax.data.lexicon import write_lexicon_tokenizer
    from audiolm_jax.moshi import MoshiConfig, param_shapes, to_kyutai
    from audiolm_jax.moshi.run import import_moshi
    from audiolm_jax.moshi.task import moshi_delays
    from audiolm_jax.text import TextTokenizer
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
