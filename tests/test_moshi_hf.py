"""Moshi's LM against Hugging Face's ``MoshiForConditionalGeneration`` (random weights): the
HF layout converter (:mod:`audiolm_jax.moshi.hf_weights`), HF config.json -> MoshiConfig.

How HF's forward lines up with Kyutai's ``LMModel.forward`` (ours): HF takes its inputs as
they are, with no delays and no initial column, and its logits at position s predict
position s + 1 (a plain causal LM). Ours takes the undelayed codes and builds
``seq = [initial column] + delay_sequence(codes)``, runs the temporal transformer on
``seq[:, :, :-1]`` and undelays the logits. So HF is fed ``seq[:, :, :-1]`` itself
(``input_ids`` the text row, ``moshi_audio_codes`` rows 1..nc, ``user_audio_codes`` the rest:
the order of Kyutai's ``emb``), and then:

* text: HF ``logits[:, s]`` is our logit for delayed frame s; undelaying it by the text delay
  gives our ``text_logits`` (the text delay is 0 in Moshi's pattern: equal as they are);
* audio: HF's depth decoder, called as ``generate`` calls it, on the decoder's (post-norm)
  ``last_hidden_state`` at s and the tokens of delayed frame s (``seq[:, :nc, s + 1]``: text,
  then codebooks 0..nc-2), gives our depformer logits before the undelay; undelaying by
  ``delays[1:1+nc]`` gives our ``audio_logits``, NaN where ours is NaN.

HF's training branch (``forward`` with ``text_labels`` and ``audio_labels``) pairs the hidden
state at s with the tokens of frame s rather than s + 1, so it is not this contract and not
compared. HF's ``sliding_window`` does not limit its cache-free forward (only its generation
cache), so T stays below it here. HF's depth decoder is causal only through SDPA's
``is_causal`` (it builds no mask), so the model is pinned to ``attn_implementation='sdpa'``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from audiolm_jax.moshi import (MoshiConfig, delay_sequence, logits, to_kyutai,  # noqa: E402
                               undelay_sequence)
from audiolm_jax.moshi.hf_weights import (config_from_hf, default_delays, from_hf,  # noqa: E402
                                          is_hf_layout, split_hf_state, to_hf)

_forward = jax.jit(logits, static_argnums=0)

TINY_MIMI = dict(  # the smallest Mimi transformers builds: only its state dict keys matter
    model_type="mimi", hidden_size=16, num_filters=4, num_residual_layers=1,
    upsampling_ratios=[2, 2], codebook_size=16, codebook_dim=8, num_quantizers=8,
    vector_quantization_hidden_dimension=8, upsample_groups=16, num_hidden_layers=1,
    intermediate_size=32, num_attention_heads=2, num_key_value_heads=2)


@pytest.fixture(scope="module")
def hf_model():
    """A tiny random MoshiForConditionalGeneration: nc = 4 codebooks per stream (n_q 8,
    dep_q 4), every weight random (norm weights around 1)."""
    cfg = transformers.MoshiConfig(
        vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        audio_vocab_size=32, num_codebooks=4, ffn_dim=352, sliding_window=64,
        max_position_embeddings=64, audio_encoder_config=TINY_MIMI,
        depth_decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  ffn_dim=128))
    torch.manual_seed(0)
    model = transformers.MoshiForConditionalGeneration._from_config(
        cfg, attn_implementation="sdpa").eval()
    assert model.depth_decoder.config._attn_implementation == "sdpa"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("audio_encoder."):
                continue
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / np.sqrt(p.shape[-1]))
    return model


def _state(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hf_logits(model, cfg: MoshiConfig, codes: np.ndarray):
    """HF's text and audio logits laid out as ours (see the module docstring)."""
    B, K, T = codes.shape
    nc = cfg.dep_q
    initial = np.array([cfg.text_initial_token_id] + [cfg.initial_token_id] * cfg.n_q)
    delayed = np.asarray(delay_sequence(codes, cfg.delays, initial))
    seq = np.concatenate([np.broadcast_to(initial[None, :, None], (B, K, 1)), delayed], axis=2)
    inp = torch.from_numpy(seq[:, :, :-1].astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=inp[:, 0], moshi_audio_codes=inp[:, 1:1 + nc],
                    user_audio_codes=inp[:, 1 + nc:])
        z = out.last_hidden_state  # [B, T, dim], after the decoder's final norm
        depth_ids = torch.from_numpy(delayed[:, :nc].transpose(0, 2, 1).reshape(B * T, nc)
                                     .astype(np.int64))
        audio = model.depth_decoder(input_ids=depth_ids,
                                    last_hidden_state=z.reshape(B * T, 1, -1)).logits
    text = out.logits.numpy()[:, None]  # [B, 1, T, text_card]
    audio = audio.numpy().reshape(B, T, nc, cfg.card).transpose(0, 2, 1, 3)
    text, _ = undelay_sequence(text, cfg.delays[:1])
    audio, _ = undelay_sequence(audio, cfg.delays[1:1 + nc])
    return np.asarray(text), np.asarray(audio)


def _codes(cfg: MoshiConfig, B: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, cfg.text_card, (B, 1, T)),
                           rng.integers(0, cfg.card, (B, cfg.n_q, T))], axis=1).astype(np.int32)


# ----------------------------------------------------------------------------- config


def test_config_from_hf(hf_model):
    cfg = config_from_hf(hf_model.config.to_dict(), attention="xla")
    assert (cfg.dim, cfg.text_card, cfg.n_q, cfg.dep_q, cfg.card) == (64, 40, 8, 4, 32)
    assert (cfg.num_layers, cfg.num_heads, cfg.hidden, cfg.context) == (2, 4, 176, 64)
    assert (cfg.depformer_dim, cfg.depformer_num_heads, cfg.depformer_hidden) == (32, 4, 64)
    assert (cfg.norm, cfg.positional_embedding, cfg.depformer_pos_emb) == (
        "rms_norm_f32", "rope", "none")
    assert cfg.delays == default_delays(4) == (0, 0, 1, 1, 1, 0, 1, 1, 1)
    # HF's defaults are the 7B Moshi: exactly our (Kyutai's 7B) defaults
    assert config_from_hf(transformers.MoshiConfig().to_dict()) == MoshiConfig()
    assert config_from_hf({}) == MoshiConfig()  # a config.json that leaves every key out
    with pytest.raises(ValueError, match="num_key_value_heads"):
        config_from_hf({"num_key_value_heads": 8})
    with pytest.raises(ValueError, match="rms_norm_eps"):
        config_from_hf({"rms_norm_eps": 1e-6})


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("rope", ["rope", "rope_concat"])
def test_logits_match_hf(hf_model, rope):
    """Our logits from from_hf(HF state) equal HF's, with Moshi's real delays; 'rope' (q/k
    rows un-permuted to Kyutai's interleaved pairs) and 'rope_concat' (HF's rows, half-split
    rotation) compute the same."""
    cfg = config_from_hf(hf_model.config.to_dict(), attention="xla",
                         positional_embedding=rope)
    state = _state(hf_model)
    params = from_hf(state, cfg)
    codes = _codes(cfg, B=2, T=12, seed=1)
    got = _forward(cfg, params, codes)
    text, audio = _hf_logits(hf_model, cfg, codes)
    np.testing.assert_allclose(np.asarray(got.text_logits), text, atol=1e-4, rtol=1e-4)
    # equal_nan: both NaN over the last frame of each delayed codebook
    np.testing.assert_allclose(np.asarray(got.audio_logits), audio, atol=1e-4, rtol=1e-4)
    assert np.isnan(audio[:, 1:, -1]).all() and not np.isnan(audio[:, 0]).any()


def test_logits_match_hf_without_delays(hf_model):
    """All delays 0: our logits are HF's on the plain (undelayed) shifted sequence."""
    cfg = config_from_hf(hf_model.config.to_dict(), attention="xla", delays=(0,) * 9)
    params = from_hf(_state(hf_model), cfg)
    codes = _codes(cfg, B=1, T=10, seed=2)
    got = _forward(cfg, params, codes)
    text, audio = _hf_logits(hf_model, cfg, codes)
    assert not np.isnan(audio).any()
    np.testing.assert_allclose(np.asarray(got.text_logits), text, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(got.audio_logits), audio, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- layout


def test_round_trip_layout_and_errors(hf_model):
    cfg = config_from_hf(hf_model.config.to_dict(), attention="xla")
    full = _state(hf_model)
    lm, mimi = split_hf_state(full)
    assert mimi and all(not k.startswith("audio_encoder.") for k in mimi)
    assert set(mimi) == set(hf_model.audio_encoder.state_dict())  # MimiModel's own names
    assert len(lm) + len(mimi) == len(full)
    params = from_hf(full, cfg)  # Mimi keys skipped
    back = to_hf(params, cfg)
    assert back.keys() == lm.keys()
    for k in lm:
        np.testing.assert_array_equal(back[k], lm[k], err_msg=k)
    # HF loads it strictly (with its own Mimi)
    hf_model.load_state_dict({**{k: torch.from_numpy(v) for k, v in back.items()},
                              **{"audio_encoder." + k: torch.from_numpy(v)
                                 for k, v in mimi.items()}}, strict=True)
    # the layout tells itself from Kyutai's
    assert is_hf_layout(full) and is_hf_layout(lm)
    assert not is_hf_layout(to_kyutai(params, cfg))
    # scanned layers: the same weights with a leading layer axis
    scanned = config_from_hf(hf_model.config.to_dict(), attention="xla", scan_layers=True)
    p_scan = from_hf(lm, scanned)
    assert p_scan["depformer"]["blocks"]["attn"]["qkv_kernel"].shape == (2, 4, 32, 3, 4, 8)
    assert to_hf(p_scan, scanned).keys() == lm.keys()
    # the plain attention names (no ".linear") are read too
    plain = {k.replace("_proj.linear.", "_proj."): v for k, v in lm.items()}
    jax.tree.map(np.testing.assert_array_equal, from_hf(plain, cfg), params)

    key = "depth_decoder.layers.1.mlp.fc2.weight"
    with pytest.raises(KeyError, match=key):
        from_hf({k: v for k, v in lm.items() if k != key}, cfg)
    with pytest.raises(ValueError, match=f"{key}.*shape"):
        from_hf({**lm, key: np.zeros((4, 3, 3), np.float32)}, cfg)
    with pytest.raises(ValueError, match="unexpected HF keys.*decoder.model.extra.weight"):
        from_hf({**lm, "decoder.model.extra.weight": np.zeros(3, np.float32)}, cfg)
    with pytest.raises(ValueError, match="depformer_weights_per_step_schedule"):
        from_hf(lm, MoshiConfig.tiny(n_q=6, dep_q=3, delays=(0,) * 7))


def test_hf_equals_kyutai_through_our_params(hf_model):
    """HF's weights, taken through our params into Kyutai's own LMModel, give HF's logits:
    the two layouts hold the same model (Kyutai's interleaved RoPE rows restored)."""
    lm = pytest.importorskip("moshi.models.lm")
    cfg = config_from_hf(hf_model.config.to_dict(), attention="xla")
    kyutai = lm.LMModel(dtype=torch.float32, **cfg.kyutai_kwargs()).eval()
    state = to_kyutai(from_hf(_state(hf_model), cfg), cfg)
    kyutai.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    codes = _codes(cfg, B=2, T=12, seed=3)
    with torch.no_grad():
        want = kyutai(torch.from_numpy(codes.astype(np.int64)))
    text, audio = _hf_logits(hf_model, cfg, codes)
    np.testing.assert_allclose(want.text_logits.numpy(), text, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(want.logits.numpy(), audio, atol=1e-4, rtol=1e-4)


def test_import_moshi_reads_the_hf_layout_and_its_mimi(hf_model, tmp_path):
    """import-moshi on HF's model.safetensors + config.json: the layout is told by its keys,
    the LM's logits equal HF's, and the Mimi inside the file is imported beside it (the
    levels the LM reads), named in tokens.json."""
    import json

    from safetensors.numpy import save_file

    from audiolm_jax.moshi.run import import_moshi, load_moshi

    save_file({k: np.ascontiguousarray(v) for k, v in _state(hf_model).items()},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    out = str(tmp_path / "moshi")
    info = import_moshi(str(tmp_path / "model.safetensors"), out)  # config.json beside it
    assert info["layout"] == "huggingface" and (info["n_q"], info["dep_q"]) == (8, 4)
    m = load_moshi(out)
    codes = _codes(m.model_config, B=1, T=10, seed=4)
    got = m.logits(codes)
    text, audio = _hf_logits(hf_model, m.model_config, codes)
    np.testing.assert_allclose(np.asarray(got.text_logits), text, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(got.audio_logits), audio, atol=1e-4, rtol=1e-4)
    assert m.codec_workdir == f"{out}/mimi" and m.codec.num_levels == 4
