"""Moshi's LM forward pass against Kyutai's own ``moshi.models.lm.LMModel`` (random weights),
plus the parts that need no torch: shapes, the zero token, delays and masks, parameter counts
(the 7B's by formula from Kyutai's module sizes), config and converter errors."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.moshi import (MoshiConfig, MoshiLM, count_params, delay_sequence, from_kyutai,
                               logits, num_params, param_shapes, to_kyutai, undelay_sequence)
from audiolm_jax.moshi.config import gating_hidden

# Kyutai's LMModel(**_lm_kwargs).parameters() summed on the meta device (moshi 0.2.13).
MOSHI_7B_PARAMS = 7_687_729_152
KYUTAI_7B_JSON = {  # configs/moshi_7b_202409.json of kyutai-labs/moshi
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8,
    "card": 2048, "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 3000, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 1024,
    "depformer_dim_feedforward": 4224, "depformer_num_heads": 16, "depformer_num_layers": 6,
    "depformer_causal": True, "depformer_layer_scale": None, "depformer_multi_linear": True,
    "depformer_context": 8, "depformer_max_period": 10000, "depformer_gating": "silu",
    "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]}

_forward = jax.jit(logits, static_argnums=0)


def kyutai_count(c: MoshiConfig) -> int:
    """Parameters of Kyutai's LMModel by hand from its modules (lm.py, transformer.py,
    gating.py): embeddings of card+1 / text_card+1 rows, per layer in_proj 3 D^2 + out_proj
    D^2 (times the weight sets), two RMSNorm alphas, gating linear_in 2 h D + linear_out h D."""
    D, Dd = c.dim, c.depformer_dim
    h = gating_hidden(D, int(c.hidden_scale * D))
    layer = 4 * D * D + 2 * D + 3 * h * D
    n = c.n_q * (c.card + 1) * D + (c.text_card + 1) * D + c.num_layers * layer
    n += D + c.text_card * D  # out_norm, text_linear
    ff = c.depformer_dim_feedforward or int(c.hidden_scale * Dd)
    hd = gating_hidden(Dd, ff)
    sched = c.depformer_weights_per_step_schedule
    sets = (max(sched) + 1 if sched else c.dep_q) if c.depformer_weights_per_step else 1
    dlayer = sets * (4 * Dd * Dd + 3 * hd * Dd) + 2 * Dd
    n_in = (max(sched) + 1 if sched else c.dep_q) if c.depformer_multi_linear else 1
    n += n_in * D * Dd + (c.dep_q - 1) * (c.card + 1) * Dd + (c.text_card + 1) * Dd
    n += c.depformer_num_layers * dlayer + c.dep_q * Dd * c.card
    return n


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), jnp.float32), shapes)


def _codes(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.concatenate([rng.integers(0, cfg.text_card, (B, 1, T)),
                            rng.integers(0, cfg.card, (B, cfg.n_q, T))], axis=1)
    codes[0, 0, 3:7] = -1  # zero tokens in the text row (no transcript there)
    codes[1, 0, -2:] = -1
    codes[1, 2, 5] = -1  # and one in a model audio row
    codes[0, -1, 4] = -2  # an ungenerated user token (embeds as id 0)
    return codes.astype(np.int32)


# ----------------------------------------------------------------------------- no torch


def test_param_counts_tiny_and_7b():
    tiny = MoshiConfig.tiny()
    assert count_params(param_shapes(tiny)) == num_params(tiny) == kyutai_count(tiny)
    big = MoshiConfig()
    assert (big.hidden, big.depformer_hidden) == (11264, 2816)
    assert kyutai_count(big) == MOSHI_7B_PARAMS
    assert num_params(big) == MOSHI_7B_PARAMS
    assert count_params(param_shapes(big)) == MOSHI_7B_PARAMS  # eval_shape: nothing allocated


def test_shapes_masks_and_zero_token():
    cfg = MoshiConfig.tiny()
    params = _random_params(cfg)
    B, T = 2, 12
    codes = _codes(cfg, B, T)
    out = _forward(cfg, params, codes)
    assert out.text_logits.shape == (B, 1, T, cfg.text_card)
    assert out.text_mask.shape == (B, 1, T)
    assert out.audio_logits.shape == (B, cfg.dep_q, T, cfg.card)
    assert out.audio_mask.shape == (B, cfg.dep_q, T)
    # Masks: the last delays[k] frames of each row, and the -1 inputs, are invalid; logits are
    # NaN exactly at the delay cut.
    want = np.ones((B, 1 + cfg.dep_q, T), bool)
    for k, d in enumerate(cfg.delays[:1 + cfg.dep_q]):
        if d:
            want[:, k, -d:] = False
    want &= codes[:, :1 + cfg.dep_q] != -1
    np.testing.assert_array_equal(out.text_mask, want[:, :1])
    np.testing.assert_array_equal(out.audio_mask, want[:, 1:])
    nan = np.isnan(np.asarray(out.audio_logits)).all(-1)
    for k, d in enumerate(cfg.delays[1:1 + cfg.dep_q]):
        assert nan[:, k, T - d:].all() and not nan[:, k, :T - d].any()
    assert not np.isnan(np.asarray(out.text_logits)).any()

    # -1 embeds to exactly zero (text and audio); -2 embeds as id 0.
    model = MoshiLM(cfg)
    seq = np.full((1, cfg.num_codebooks, 3), -1, np.int32)
    x = model.apply({"params": params}, seq, method=MoshiLM.embed)
    assert np.all(np.asarray(x) == 0.0)
    seq[0, 0] = [-1, 5, -2]
    x = np.asarray(model.apply({"params": params}, seq, method=MoshiLM.embed))
    np.testing.assert_array_equal(x[0, 0], 0.0)
    np.testing.assert_array_equal(x[0, 1], np.asarray(params["text_emb"])[5])
    np.testing.assert_array_equal(x[0, 2], np.asarray(params["text_emb"])[0])


def test_delay_and_undelay():
    codes = jnp.arange(2 * 3 * 5).reshape(2, 3, 5)
    delays = (0, 1, 3)
    d = np.asarray(delay_sequence(codes, delays, np.array([-7, -8, -9])))
    np.testing.assert_array_equal(d[:, 0], codes[:, 0])
    np.testing.assert_array_equal(d[:, 1, 0], -8)
    np.testing.assert_array_equal(d[:, 1, 1:], codes[:, 1, :4])
    np.testing.assert_array_equal(d[:, 2, :3], -9)
    np.testing.assert_array_equal(d[:, 2, 3:], codes[:, 2, :2])
    back, mask = undelay_sequence(jnp.asarray(d, jnp.float32)[..., None], delays)
    back = np.asarray(back)[..., 0]
    np.testing.assert_array_equal(np.asarray(mask)[0], [[1] * 5, [1] * 4 + [0], [1] * 2 + [0] * 3])
    np.testing.assert_array_equal(back[np.asarray(mask)], np.asarray(codes)[np.asarray(mask)])
    assert np.isnan(back[~np.asarray(mask)]).all()


def test_config_from_kyutai_json():
    cfg = MoshiConfig.from_kyutai_json(KYUTAI_7B_JSON)
    assert cfg == MoshiConfig()
    # a checkpoint's config.json carries loader keys: ignored
    assert MoshiConfig.from_kyutai_json(
        {**KYUTAI_7B_JSON, "mimi_name": "x.safetensors", "lm_gen_config": {}}) == cfg
    with pytest.raises(ValueError, match="unknown Kyutai LM config keys.*not_a_key"):
        MoshiConfig.from_kyutai_json({**KYUTAI_7B_JSON, "not_a_key": 1})
    with pytest.raises(ValueError, match="conditioners"):
        MoshiConfig.from_kyutai_json({**KYUTAI_7B_JSON, "conditioners": {"description": {}}})
    with pytest.raises(ValueError, match="norm"):
        MoshiConfig.from_kyutai_json({**KYUTAI_7B_JSON, "norm": "layer_norm"})
    with pytest.raises(ValueError, match="delays"):
        MoshiConfig.tiny(delays=(0, 0, 1))
    # missing depformer_* keys take the main ones, as Kyutai's kwargs_dep does
    raw = {k: v for k, v in KYUTAI_7B_JSON.items() if k != "depformer_num_layers"}
    assert MoshiConfig.from_kyutai_json(raw).depformer_num_layers == 32
    tiny = MoshiConfig.tiny()
    assert MoshiConfig.from_kyutai_json(tiny.kyutai_kwargs(), attention="xla") == tiny
    t = tiny.temporal_config()
    assert (t.window, t.rope, t.norm, t.norm_eps, t.bias, t.mlp) == (
        8, "interleaved", "rms", 1e-8, False, "silu_gated")
    d = tiny.depformer_config()
    assert (d.window, d.rope, d.weights_per_step, d.weights_per_step_schedule) == (
        0, "none", 2, (0, 1, 1))


def test_converter_round_trip_and_errors():
    cfg = MoshiConfig.tiny()
    params = jax.tree.map(np.asarray, _random_params(cfg, seed=3))
    state = to_kyutai(params, cfg)
    back = from_kyutai(state, cfg)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    missing = dict(state)
    del missing["depformer.layers.1.gating.1.linear_out.weight"]
    with pytest.raises(KeyError, match="depformer.layers.1.gating.1.linear_out.weight"):
        from_kyutai(missing, cfg)
    with pytest.raises(ValueError, match="unexpected Kyutai keys.*extra_heads.0.weight"):
        from_kyutai({**state, "extra_heads.0.weight": np.zeros((6, 64))}, cfg)
    bad = {**state, "linears.0.weight": np.zeros((3, 3))}
    with pytest.raises(ValueError, match="linears.0.weight"):
        from_kyutai(bad, cfg)
    # scanned layers: the same weights with a leading layer axis
    scanned = MoshiConfig.tiny(scan_layers=True)
    p_scan = from_kyutai(state, scanned)
    assert p_scan["transformer"]["blocks"]["attn"]["qkv_kernel"].shape == (2, 64, 3, 4, 16)
    assert to_kyutai(p_scan, scanned).keys() == state.keys()


def test_moshi_7b_repo_config_if_present():
    """Kyutai's own 7B config file, when the moshi mirror is on this machine."""
    path = pathlib.Path("/work/.mirror/kyutai-labs+moshi/repo")
    if not path.exists():
        pytest.skip("no kyutai-labs/moshi mirror")
    import subprocess

    raw = subprocess.run(["git", "-C", str(path), "show", "HEAD:configs/moshi_7b_202409.json"],
                         capture_output=True, text=True)
    if raw.returncode:
        pytest.skip("config file not in the mirror")
    assert MoshiConfig.from_kyutai_json(json.loads(raw.stdout)) == MoshiConfig()


# ----------------------------------------------------------------------------- against Kyutai


def _kyutai(cfg: MoshiConfig, seed: int = 0):
    torch = pytest.importorskip("torch")
    lm = pytest.importorskip("moshi.models.lm")
    torch.manual_seed(seed)
    model = lm.LMModel(dtype=torch.float32, **cfg.kyutai_kwargs())
    with torch.no_grad():  # every weight random, norms included (Kyutai's alphas start at 1)
        for name, p in model.named_parameters():
            if name.endswith("alpha") or name.endswith(".scale"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / np.sqrt(p.shape[-1]))
    return torch, model.eval()


@pytest.mark.parametrize("overrides", [
    {},  # the tiny 7B-alike: window 8 < T, depformer weights on a schedule, delays
    {"positional_embedding": "sin_rope", "depformer_pos_emb": "sin", "layer_scale": 0.5,
     "depformer_layer_scale": 0.25, "norm": "rms_norm", "depformer_multi_linear": False,
     "depformer_weights_per_step_schedule": None, "delays": (1, 2, 0, 1, 0, 1, 1)},
], ids=["tiny7b", "variants"])
def test_forward_matches_kyutai(overrides):
    cfg = MoshiConfig.tiny(**overrides)
    torch, model = _kyutai(cfg)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params = from_kyutai(state, cfg)
    B, T = 2, 20  # T > context: the sliding window matters
    codes = _codes(cfg, B, T, seed=1)
    with torch.no_grad():
        want = model(torch.from_numpy(codes.astype(np.int64)))
    got = _forward(cfg, params, codes)
    np.testing.assert_array_equal(got.text_mask, want.text_mask.numpy())
    np.testing.assert_array_equal(got.audio_mask, want.mask.numpy())
    # equal_nan: NaN exactly where Kyutai fills the delay cut with NaN
    np.testing.assert_allclose(got.text_logits, want.text_logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got.audio_logits, want.logits.numpy(), atol=1e-4, rtol=1e-4)
    # our layout back to Kyutai's is the identity, and Kyutai's model loads it strictly
    back = to_kyutai(params, cfg)
    assert back.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_fused_checkpoint_keys_and_7b_count():
    """A checkpoint's fused ``in_proj_weight`` / ``out_proj.weight`` (what Kyutai's load hook
    splits) converts to the same params; Kyutai's 7B has MOSHI_7B_PARAMS parameters."""
    cfg = MoshiConfig.tiny()
    torch, model = _kyutai(cfg, seed=2)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    fused = {}
    for k, v in state.items():
        for short, long in (("in_proj_weight", "in_projs"), ("out_proj.weight", "out_projs")):
            if f".self_attn.{long}." in k:
                prefix = k.split(f".self_attn.{long}.")[0] + ".self_attn."
                sets = sorted(int(x.split(f"{long}.")[1].split(".")[0])
                              for x in state if x.startswith(prefix + long + "."))
                fused[prefix + short] = np.concatenate(
                    [state[f"{prefix}{long}.{s}.weight"] for s in sets])
                break
        else:
            fused[k] = v
    a, b = from_kyutai(state, cfg), from_kyutai(fused, cfg)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    loaders = pytest.importorskip("moshi.models.loaders")
    lm = pytest.importorskip("moshi.models.lm")
    big = lm.LMModel(device="meta", **loaders._lm_kwargs)
    assert sum(p.numel() for p in big.parameters()) == MOSHI_7B_PARAMS
    assert MoshiConfig.from_kyutai_json(loaders._lm_kwargs) == MoshiConfig()
