"""`audiolm-jax compile`: experiments compiled for TPU slices by the real TPU compiler, on the
CPU of the machine running the tests (skipped where libtpu is not installed)."""

import json
import os
import subprocess
import sys

import pytest

from audiolm_jax.aot import report as report_lib
from audiolm_jax.aot.topology import TPUUnavailable, parse_slice, slice_devices
from audiolm_jax.codec.config import tiny_cnn_config
from audiolm_jax.errors import ConfigError
from audiolm_jax.lm.config import tiny_lm_config

KEYS = {"topology", "num_devices", "mesh", "memory_gib_per_device", "hbm_gib_per_device",
        "fits", "flops_per_device", "model_flops_per_device", "model_flops_convention",
        "estimated_step_seconds", "estimated_mfu", "collectives", "compile_seconds"}


@pytest.fixture(scope="module")
def tpu():
    try:
        slice_devices(parse_slice("v5p-8"))
    except TPUUnavailable as e:
        pytest.skip(str(e))


def _lm(**model):
    c = tiny_lm_config()
    c.tokens.update(num_levels=1, codebook_size=256)
    c.model.update(dropout=0.0, **model)
    return c


@pytest.fixture(scope="module")
def lm_report(tpu):
    return report_lib.compile_experiment(_lm(), "v5p-8")


def test_lm_train_step_report(lm_report):
    r = lm_report
    assert KEYS <= set(r) and "tokens_per_second_per_device" in r
    json.dumps(r)  # the CLI prints it
    assert r["num_devices"] == 4 and r["device_kind"] == "TPU v5"
    assert r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and r["batch_per_device"] == 2
    assert r["fits"] and 0 < r["memory_gib_per_device"] < 1
    assert r["estimated_step_seconds"] > 0 and 0 < r["estimated_mfu"] < 1
    # 4-way data parallelism reduces the gradients across the chips.
    assert r["collectives"]["all-reduce"]["count"] >= 1
    # The MaxText convention by hand: 6 x matmul weights x tokens + causal attention.
    W, L, V, T, B = 64, 2, 256, 256, 8
    matmul = L * 12 * W * W + W * V  # qkv + out + MLP (4x) per layer, and the tied head
    want = (6 * B * T * matmul + 6 * B * T * T * W * L) / 4
    assert r["model_flops_per_device"] == pytest.approx(want)


def test_scanned_estimate_equals_unrolled(tpu, lm_report):
    scanned = report_lib.compile_experiment(_lm(scan_layers=True), "v5p-8")
    assert "extrapolated" in scanned["estimate_method"]
    for key in ("flops_per_device", "estimated_step_seconds"):
        assert scanned[key] == pytest.approx(lm_report[key], rel=0.05), key


def test_decode_step_report(tpu):
    r = report_lib.compile_experiment(_lm(), "v5e-8", what="decode")
    assert r["what"] == "decode" and r["num_devices"] == 8
    assert r["tokens_per_second_per_device"] > 0
    assert r["bound"] in ("memory bandwidth", "compute")


def test_moshi_train_and_generation_step_reports(tpu):
    """configs/lm/moshi.py compiles for a slice: the train step (model FLOPs by hand from
    both transformers, the text head and the depformer projections) and the one-frame
    generation step (LMGen.step) of the same model."""
    from audiolm_jax.moshi.experiment import base_config, tiny_variant

    c = tiny_variant(base_config())
    c.model.update(card=64, text_card=32, n_q=4, dep_q=2)
    r = report_lib.compile_experiment(c, "v5p-8")
    assert r["fits"] and r["frames_per_second_per_device"] > 0 and 0 < r["estimated_mfu"] < 1
    # Gated MLP widths (Kyutai's gating.py): temporal 2 * int(4.125 * 64) // 3 = 176;
    # depformer (dim_feedforward 256 = 4 x 64) 21 * 64 // 8 = 168.
    B, T, D, L, H, Dd, hd = 8, 64, 64, 2, 176, 64, 168
    temporal = L * (4 * D * D + 3 * D * H)
    depth = 1 * (4 * Dd * Dd + 3 * Dd * hd)
    want = (6 * B * T * temporal + 6 * B * T * T * D * L + 6 * B * T * D * 32
            + 6 * B * T * 2 * depth + 6 * B * T * 2 * 2 * Dd
            + 6 * B * T * 2 * Dd * (D + 64)) / 4
    assert r["model_flops_per_device"] == pytest.approx(want)
    d = report_lib.compile_experiment(c, "v5p-8", what="decode")
    assert d["program"].startswith("one-frame generation step") and d["ms_per_frame"] > 0


def test_no_cost_model_answer_is_calibrated_on_v5p(tpu, monkeypatch):
    """v5e's cost model gives a negative time for large programs (the 151M LM's step, under
    libtpu 0.0.42 and 0.0.52): the estimate is then v5e's roofline divided by the
    roofline/cost-model ratio of the same step compiled for a v5p slice of as many chips. The
    tiny model here gets an answer, so the first (v5e) answer is withheld."""
    real, calls = report_lib._costs, []

    def first_without_answer(compiled):
        costs = real(compiled)
        calls.append(costs)
        return dict(costs, optimal_seconds=-1.0) if len(calls) == 1 else costs

    monkeypatch.setattr(report_lib, "_costs", first_without_answer)
    r = report_lib.compile_experiment(_lm(), "v5e-4")
    cal = r["calibration"]
    assert len(calls) == 2 and cal["topology"] == "v5p-8"
    assert cal["cost_model_seconds"] == calls[1]["optimal_seconds"]
    assert 0 < cal["roofline_over_cost_model"] <= 1.0
    roofline = max(r["flops_per_device"] / 197e12, r["bytes_accessed_per_device"] / 0.819e12)
    assert r["estimated_step_seconds"] == pytest.approx(roofline / cal["roofline_over_cost_model"])
    assert "v5p-8" in r["step_estimate_source"] and 0 < r["estimated_mfu"] < 1


def test_not_fitting_is_a_result(tpu):
    c = _lm()
    # 1.6B float32 weights with their gradients and Adam moments, replicated on every chip:
    # about 25 GiB against a v5e chip's 16.
    c.model.update(width=8192, num_heads=64)
    r = report_lib.compile_experiment(c, "v5e-4")
    assert r["fits"] is False and r["memory_gib_per_device"] > r["hbm_gib_per_device"]


@pytest.mark.parametrize("change,topology,match", [
    ({}, "v5p-12", "unknown TPU topology 'v5p-12'"),
    ({}, "v9-8", "unknown TPU topology"),
    ({"mesh.data": 3}, "v5p-8", "mesh"),
    ({"train.batch_size": 6}, "v5p-8", "train.batch_size"),
    ({"model.attention": "magic"}, "v5p-8", "model.attention"),
])
def test_bad_input_is_refused_before_compiling(tpu, change, topology, match):
    c = _lm()
    for key, value in change.items():
        section, name = key.split(".")
        c[section][name] = value
    with pytest.raises(ConfigError, match=match):
        report_lib.compile_experiment(c, topology)


def test_cli_prints_json_and_errors_in_one_line(tpu, tmp_path):
    env = dict(os.environ)
    base = [sys.executable, "-m", "audiolm_jax.cli", "compile",
            "--config=configs/codec/tiny_cnn.py"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A codec small enough to compile in well under a minute (the TPU compiler takes minutes
    # over the full tiny codec's convolutions and STFT loss).
    small = ["--config.model.num_blocks=1", "--config.model.res_blocks=1",
             "--config.model.channels=8",
             "--config.loss.spectral_weight=0.0", "--config.quantizer.num_levels=1"]
    ok = subprocess.run(base + ["--topology=v5e-4"] + small, capture_output=True, text=True,
                        env=env, cwd=root, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    r = json.loads(ok.stdout)
    assert r["topology"] == "v5e-4" and r["fits"] and r["audio_seconds_per_second_per_device"] > 0
    bad = subprocess.run(base + ["--topology=v5p-7"], capture_output=True, text=True, env=env,
                         cwd=root, timeout=600)
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown TPU topology 'v5p-7'" in lines[0], bad.stderr


def test_topology_names():
    assert parse_slice("v5p-8").topology == "v5:2x2x1"
    assert parse_slice("v5p-128").topology == "v5:4x4x4"
    assert parse_slice("v5p-128").wrap == (True, True, True)
    assert parse_slice("v5litepod-16").topology == "v5e:4x4"
    assert parse_slice("v5e-256").wrap == (True, True, False)
    assert parse_slice("v6e-8").topology == "v6e:2x4"
    assert parse_slice("v4-16").chips == 8
    assert tiny_cnn_config().task == "codec"
