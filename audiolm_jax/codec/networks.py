"""Factory for codec encoder / decoder pairs from a model config."""

from __future__ import annotations

from typing import Any

from audiolm_jax.codec.cnn import CNNDecoder, CNNEncoder
from audiolm_jax.codec.seanet import SEANetDecoder, SEANetEncoder


def _get(mcfg: Any, key: str, default: Any) -> Any:
    if hasattr(mcfg, "get"):
        return mcfg.get(key, default)
    return getattr(mcfg, key, default)


def make_encoder_decoder(mcfg: Any):
    """Return ``(encoder, decoder, hop_length, latent_dim)``.

    ``mcfg.kind``:
    * ``'cnn'``: channels (32), latent_dim (32), num_blocks (7), res_blocks (4),
      double_residual_quirk (False), dilation_growth (3), second_kernel (3).
      hop = 2**num_blocks.
    * ``'seanet'``: n_filters (32), ratios ((8, 5, 4, 2)), dimension (128),
      n_residual_layers (1), dilation_base (2), kernel_size (7), residual_kernel_size (3),
      last_kernel_size (7), compress (2), causal (True), true_skip (True), weight_norm (True),
      pad_mode ('constant'), activation ('elu'), final_activation (None).
      hop = prod(ratios).
    * ``'mimi'``: the SEANet keys plus a windowed causal transformer and learned 2x
      down/upsampling; see ``audiolm_jax/codec/mimi/networks.py`` and
      ``codec/config.py:mimi_config``. hop = prod(ratios) * frame_downsample.

    Encoder: ``[B, T]`` → ``[B, T // hop, latent_dim]`` (T a multiple of hop).
    Decoder: ``[B, frames, latent_dim]`` → ``[B, frames * hop]``.
    """
    kind = _get(mcfg, "kind", "seanet")
    if kind == "cnn":
        kw = dict(
            channels=int(_get(mcfg, "channels", 32)),
            latent_dim=int(_get(mcfg, "latent_dim", 32)),
            num_blocks=int(_get(mcfg, "num_blocks", 7)),
            res_blocks=int(_get(mcfg, "res_blocks", 4)),
            dilation_growth=int(_get(mcfg, "dilation_growth", 3)),
            second_kernel=int(_get(mcfg, "second_kernel", 3)),
        )
        enc = CNNEncoder(**kw)
        dec = CNNDecoder(**kw, double_residual_quirk=bool(_get(mcfg, "double_residual_quirk",
                                                                 False)))
        return enc, dec, 2 ** kw["num_blocks"], kw["latent_dim"]
    if kind == "seanet":
        ratios = tuple(int(r) for r in _get(mcfg, "ratios", (8, 5, 4, 2)))
        final_act = _get(mcfg, "final_activation", None)
        kw = dict(
            n_filters=int(_get(mcfg, "n_filters", 32)),
            ratios=ratios,
            dimension=int(_get(mcfg, "dimension", 128)),
            n_residual_layers=int(_get(mcfg, "n_residual_layers", 1)),
            dilation_base=int(_get(mcfg, "dilation_base", 2)),
            kernel_size=int(_get(mcfg, "kernel_size", 7)),
            residual_kernel_size=int(_get(mcfg, "residual_kernel_size", 3)),
            last_kernel_size=int(_get(mcfg, "last_kernel_size", 7)),
            compress=int(_get(mcfg, "compress", 2)),
            causal=bool(_get(mcfg, "causal", True)),
            true_skip=bool(_get(mcfg, "true_skip", True)),
            weight_norm=bool(_get(mcfg, "weight_norm", True)),
            pad_mode=str(_get(mcfg, "pad_mode", "constant")),
            activation=str(_get(mcfg, "activation", "elu")),
        )
        enc = SEANetEncoder(**kw)
        dec = SEANetDecoder(**kw, final_activation=final_act)
        hop = 1
        for r in ratios:
            hop *= r
        return enc, dec, hop, kw["dimension"]
    if kind == "mimi":
        from audiolm_jax.codec.mimi.networks import make_mimi_encoder_decoder

        return make_mimi_encoder_decoder(mcfg)
    raise ValueError(f"unknown encoder kind {kind!r}")
