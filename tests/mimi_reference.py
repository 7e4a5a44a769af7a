"""A randomly initialised transformers ``MimiModel`` as the reference for the Mimi tests.

transformers initialises codebooks to zeros (every code ties) and layer scales to 0.01 (the
transformer barely matters), so the reference randomises them: codebooks scaled to the
latents the model really produces, layer scales and norms well away from identity. Everything
is float32 on both sides.
"""

from __future__ import annotations

import os

import numpy as np

# Mimi's blocks at toy size: 16 kHz, SEANet ratios (4, 4, 2) -> 500 Hz, 2x down -> 250 Hz
# (64-sample frames), a 2-layer transformer whose 8-frame window is shorter than the inputs.
SMALL = dict(sampling_rate=16000, num_filters=8, upsampling_ratios=[4, 4, 2], hidden_size=32,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=64, sliding_window=8, codebook_size=64, codebook_dim=16,
             vector_quantization_hidden_dimension=16, num_quantizers=5, upsample_groups=32)


def make_reference(out_dir: str, seed: int = 0, **config):
    """Builds, randomises and ``save_pretrained``s a MimiModel; returns it (eval mode)."""
    import torch
    from transformers import MimiConfig, MimiModel

    torch.manual_seed(seed)
    model = MimiModel(MimiConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.3, 1.0)
            elif "layernorm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "layernorm" in name and name.endswith("bias"):
                p.normal_(0.0, 0.1)
        hop = int(np.prod(model.config.upsampling_ratios)) * 2
        latents = model.encoder(torch.randn(1, 1, 16 * hop)).latents
        quantizer = model.quantizer
        for rvq in (quantizer.semantic_residual_vector_quantizer,
                    quantizer.acoustic_residual_vector_quantizer):
            scale = float(rvq.input_proj(latents).std())
            for layer in rvq.layers:
                book = layer.codebook
                usage = torch.rand(book.cluster_usage.shape) * 1.5 + 0.5
                book.cluster_usage.copy_(usage)
                book.embed_sum.copy_(torch.randn(book.embed_sum.shape) * scale * usage[:, None])
                book._embed = None  # drop transformers' cached lookup table
                scale *= 0.6  # residuals shrink level by level
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    return model


def reference_codes(model, audio: np.ndarray, num_codebooks: int) -> np.ndarray:
    """[B, T] float32 -> int codes [B, levels, frames]."""
    import torch

    with torch.no_grad():
        out = model.encode(torch.from_numpy(audio)[:, None], num_quantizers=num_codebooks)
    return out.audio_codes.numpy()


def reference_audio(model, codes: np.ndarray) -> np.ndarray:
    """codes [B, levels, frames] -> [B, frames * hop]."""
    import torch

    with torch.no_grad():
        return model.decode(torch.from_numpy(codes)).audio_values.numpy()[:, 0]


def to_kyutai_layout(hf_legacy: dict, num_heads: int, num_ratios: int,
                     num_residual_layers: int = 1) -> dict:
    """transformers' saved names -> the names and conventions of Kyutai's release (moshi):
    fused q/k/v with interleaved rotary pairs, ``encoder.model.N.conv.conv``, ``rvq_first``."""
    import re

    # Decoder layer indices of the transposed convs (after conv_in, each stage is ELU,
    # transposed conv, residual blocks).
    transposed = {2 + i * (2 + num_residual_layers) for i in range(num_ratios)}
    out = {}
    for key, value in hf_legacy.items():
        new = key
        m = re.match(r"^(en|de)coder_transformer\.layers\.(\d+)\.(.*)$", key)
        if m:
            side, layer, rest = m.groups()
            pre = f"{side}coder_transformer.transformer.layers.{layer}."
            if rest.startswith("self_attn.") and rest[10] in "qkv":
                if rest.startswith("self_attn.q_proj"):
                    parts = []
                    for name in ("q", "k", "v"):
                        w = hf_legacy[f"{side}coder_transformer.layers.{layer}.self_attn.{name}_proj.weight"]
                        if name != "v":  # half-split -> interleaved rotary pairs
                            hd = w.shape[0] // num_heads
                            inverse = np.empty(hd, int)
                            inverse[np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])] = np.arange(hd)
                            w = w.reshape(num_heads, hd, -1)[:, inverse].reshape(w.shape)
                        parts.append(w)
                    out[pre + "self_attn.in_projs.0.weight"] = np.concatenate(parts, 0)
                continue
            rest = (rest.replace("self_attn.o_proj", "self_attn.out_projs.0")
                    .replace("input_layernorm", "norm1").replace("post_attention_layernorm", "norm2")
                    .replace("mlp.fc1", "linear1").replace("mlp.fc2", "linear2")
                    .replace("self_attn_layer_scale", "layer_scale_1")
                    .replace("mlp_layer_scale", "layer_scale_2"))
            out[pre + rest] = value
            continue
        if re.match(r"^encoder\.layers\.", key):
            new = re.sub(r"^encoder\.layers\.(\d+)\.(.*)conv\.(weight|bias)$",
                         r"encoder.model.\1.\2conv.conv.\3", key)
        elif re.match(r"^decoder\.layers\.", key):
            kind = "convtr.convtr" if int(key.split(".")[2]) in transposed else "conv.conv"
            new = re.sub(r"^decoder\.layers\.(\d+)\.(.*)conv\.(weight|bias)$",
                         rf"decoder.model.\1.\2{kind}.\3", key)
        elif key.startswith("downsample."):
            new = key.replace("downsample.conv.", "downsample.conv.conv.conv.")
        elif key.startswith("upsample."):
            new = key.replace("upsample.conv.", "upsample.convtr.convtr.convtr.")
        elif key.startswith("quantizer."):
            new = (key.replace("semantic_residual_vector_quantizer", "rvq_first")
                   .replace("acoustic_residual_vector_quantizer", "rvq_rest")
                   .replace(".layers.", ".vq.layers.").replace(".codebook.embed_sum", "._codebook.embedding_sum")
                   .replace(".codebook.cluster_usage", "._codebook.cluster_usage")
                   .replace(".codebook.initialized", "._codebook._initialized"))
        out[new] = value
    return out

