"""Mimi: released-weight import (transformers and Kyutai layouts) with exact code parity against
transformers' ``MimiModel``, the workdir it writes, and the import errors.

Reference: a randomly initialised ``MimiModel`` (``mimi_reference.py``), float32 on both sides.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from mimi_reference import SMALL, make_reference, reference_audio, reference_codes, to_kyutai_layout  # noqa: E402

from audiolm_jax.codec.inference import load_codec  # noqa: E402
from audiolm_jax.codec.mimi.importer import (MimiImportError, config_from_hf_json,  # noqa: E402
                                             import_mimi, load_mimi_variables)

HOP = 64  # SMALL: 4 * 4 * 2 * 2 samples per frame
LEVELS = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The small reference model, its files, and our import of them through the CLI."""
    root = tmp_path_factory.mktemp("mimi")
    model = make_reference(str(root / "hf"), seed=0, **SMALL)
    weights = str(root / "hf" / "model.safetensors")
    workdir = str(root / "workdir")
    proc = subprocess.run(
        [sys.executable, "-m", "audiolm_jax.cli", "import-mimi", f"--weights={weights}",
         f"--workdir={workdir}", f"--num_codebooks={LEVELS}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["num_codebooks"] == LEVELS and summary["frame_rate_hz"] == 250.0
    return {"model": model, "weights": weights, "workdir": workdir, "root": root}


@pytest.fixture(scope="module")
def ours(reference):
    """The imported workdir loaded as a codec, with jitted encode/decode taking the variables.
    Batch 1 and a 63-frame length match LoadedCodec's length bucket, so the persistent
    compilation cache serves those programs once for all the tests here."""
    codec = load_codec(reference["workdir"])
    encode = jax.jit(lambda v, a: codec.model.apply(v, a, method="encode"))
    decode = jax.jit(lambda v, c: codec.model.apply(v, c, method="decode"))
    return (codec,
            lambda a, v=None: np.asarray(encode(v or codec.variables, jnp.asarray(a))),
            lambda c: np.asarray(decode(codec.variables, jnp.asarray(c))))


BUCKET = 63 * HOP  # LoadedCodec's quarter-second bucket at 16 kHz


def _audio(length, batch=1, seed=0):
    return (np.random.default_rng(seed).standard_normal((batch, length)) * 0.3).astype(np.float32)


@pytest.mark.parametrize("length", [BUCKET, BUCKET - 47, 3 * HOP - 5])
def test_codes_and_audio_match_transformers(reference, ours, length):
    """Codes exactly; decoded audio to float32 tolerance. 63 frames = 126 transformer steps,
    far past the 8-step window; the other lengths end in a partial frame."""
    _, encode, decode = ours
    audio = _audio(length, seed=length)
    want = reference_codes(reference["model"], audio, LEVELS)  # [B, L, F]
    got = encode(audio).transpose(0, 2, 1)
    assert got.shape == want.shape == (1, LEVELS, -(-length // HOP))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) >= min(30, want.size // 4)  # the codes are not degenerate
    want_audio = reference_audio(reference["model"], want)
    got_audio = decode(want.transpose(0, 2, 1))
    assert got_audio.shape == want_audio.shape
    np.testing.assert_allclose(got_audio, want_audio, atol=2e-5 * np.abs(want_audio).max())


def test_workdir_works_with_load_codec(reference, ours):
    """The imported workdir is a regular codec workdir: LoadedCodec (which pads to a length
    bucket) gives the reference's codes, and reconstruct round-trips."""
    codec, _, _ = ours
    assert codec.step == 0 and codec.num_levels == LEVELS and codec.hop_length == HOP
    audio = _audio(HOP * 9, seed=3)[0]
    want = reference_codes(reference["model"], audio[None], LEVELS)[0]
    np.testing.assert_array_equal(codec.encode(audio), want)
    assert codec.reconstruct(audio).shape == audio.shape


# Awkward lengths (SMALL: 32-sample SEANet steps, 64-sample frames, 63-frame buckets): one
# sample, one sample past a frame, a frame minus one, odd numbers of SEANet steps (a half
# frame, so the replicate-padded downsampling conv pads) with and without a partial step, and
# both sides of a bucket boundary.
AWKWARD = [1, 9 * HOP + 1, 10 * HOP - 1, 5 * 32, 7 * 32 + 9, BUCKET - 1, BUCKET + 1,
           BUCKET + 32 + 3]


def test_loaded_codec_codes_match_transformers_on_every_frame(reference, ours):
    """``LoadedCodec.encode`` (what ``audiolm-jax encode`` and ``tokenize`` use) pads to a
    length bucket yet gives the reference's codes on every frame, the trailing partial one
    included: each strided conv sees past its input's valid length the padding the
    reference's conv adds there, not activations of the bucket's zeros."""
    codec, _, _ = ours
    for length in AWKWARD:
        audio = _audio(length, seed=length)[0]
        want = reference_codes(reference["model"], audio[None], LEVELS)[0]
        got = codec.encode(audio)
        assert got.shape == want.shape == (LEVELS, -(-length // HOP)), length
        np.testing.assert_array_equal(got, want, err_msg=f"{length} samples")
    # Decoding the codes of a partial frame still gives the reference's audio.
    want_audio = reference_audio(reference["model"], want[None])[0]
    got_audio = codec.decode(want)
    assert got_audio.shape == want_audio.shape
    np.testing.assert_allclose(got_audio, want_audio, atol=2e-5 * np.abs(want_audio).max())


def test_chunked_long_file_codes_match_transformers(reference, ours):
    """The long-file path (the streaming encoder over chunks; here of 4 frames, the SMALL
    transformer's context) gives the reference's codes on every frame too, the last chunk's
    partial frame included."""
    from audiolm_jax.codec.inference import LoadedCodec

    codec, _, _ = ours
    chunked = LoadedCodec(codec.config, codec.params, codec.vq_stats, codec.step,
                          chunk_seconds=5 * HOP / codec.sample_rate)
    assert chunked.chunk_frames == 5 and chunked._streaming_step() == 4
    for length in (9 * HOP + 1, 13 * HOP - 1, 11 * HOP + 32, 12 * HOP + 37):
        audio = _audio(length, seed=length)[0]
        want = reference_codes(reference["model"], audio[None], LEVELS)[0]
        got = chunked.encode(audio)
        assert got.shape == want.shape == (LEVELS, -(-length // HOP)), length
        np.testing.assert_array_equal(got, want, err_msg=f"{length} samples")
    assert chunked._streamer is not None  # the streaming path ran


def test_kyutai_layout_imports_to_the_same_codes(reference, ours, tmp_path):
    """Kyutai names and conventions (fused, interleaved-rotary q/k/v; nested conv names) load
    to the same model."""
    hf = load_file(reference["weights"])
    kyutai = to_kyutai_layout(hf, SMALL["num_attention_heads"], len(SMALL["upsampling_ratios"]))
    assert "encoder.model.0.conv.conv.weight" in kyutai
    assert "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum" in kyutai
    path = str(tmp_path / "kyutai.safetensors")
    save_file(kyutai, path)
    small = config_from_hf_json(os.path.join(os.path.dirname(reference["weights"]), "config.json"),
                                LEVELS)
    _, params, vq_stats = load_mimi_variables(path, LEVELS, kyutai_config=small)
    _, encode, _ = ours
    audio = _audio(BUCKET, seed=5)
    got = encode(audio, {"params": params, "vq_stats": vq_stats})
    np.testing.assert_array_equal(got, encode(audio))


def test_import_errors_name_the_file_and_key(reference, tmp_path):
    # The CLI prints a ValueError as one line naming the problem, exit status 2.
    assert issubclass(MimiImportError, ValueError)
    weights = reference["weights"]
    with pytest.raises(MimiImportError, match="does not exist"):
        import_mimi(str(tmp_path / "nope.safetensors"), str(tmp_path / "w0"), LEVELS)
    hf = load_file(weights)

    def saved(name, tensors, with_config=True):
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        if with_config:
            (folder / "config.json").write_text(
                open(os.path.join(os.path.dirname(weights), "config.json")).read())
        return str(folder / "model.safetensors")

    unknown = saved("unknown", {"some.weight": np.zeros(3, np.float32)})
    with pytest.raises(MimiImportError, match="unknown weights layout"):
        import_mimi(unknown, str(tmp_path / "w1"), LEVELS)
    missing = dict(hf)
    del missing["encoder_transformer.layers.1.mlp.fc2.weight"]
    with pytest.raises(MimiImportError, match=r"model\.safetensors: tensor 'encoder\.encoder_transformer"
                                              r"\.layers\.1\.mlp\.fc2\.weight' is missing"):
        import_mimi(saved("missing", missing), str(tmp_path / "w2"), LEVELS)
    bad = dict(hf)
    bad["decoder.layers.0.conv.weight"] = np.zeros((3, 3, 3), np.float32)
    with pytest.raises(MimiImportError, match="decoder_seanet.layers.0.conv.weight' has the wrong shape"):
        import_mimi(saved("bad", bad), str(tmp_path / "w3"), LEVELS)
    with pytest.raises(MimiImportError, match="config.json is missing"):
        import_mimi(saved("noconfig", hf, with_config=False), str(tmp_path / "w4"), LEVELS)
    with pytest.raises(MimiImportError, match="num_codebooks=9"):
        import_mimi(weights, str(tmp_path / "w5"), num_codebooks=9)
    with pytest.raises(MimiImportError, match="already holds checkpoints"):
        import_mimi(weights, reference["workdir"], num_codebooks=LEVELS)


def test_default_config_parity(tmp_path):
    """The released architecture (transformers' default MimiConfig, 8 of its codebooks), one length
    that is not a whole number of frames."""
    model = make_reference(str(tmp_path / "hf"), seed=1, num_quantizers=8)
    config, params, vq_stats = load_mimi_variables(str(tmp_path / "hf" / "model.safetensors"), 8)
    assert config.model.transformer_layers == 8 and config.quantizer.codebook_size == 2048
    from audiolm_jax.codec.model import build_codec

    codec = build_codec(config)
    variables = {"params": params, "vq_stats": vq_stats}
    audio = _audio(1920 * 6 + 700, batch=1, seed=7)
    want = reference_codes(model, audio, 8)
    got = np.asarray(jax.jit(lambda v, a: codec.apply(v, a, method="encode"))(variables, audio))
    np.testing.assert_array_equal(got.transpose(0, 2, 1), want)
    want_audio = reference_audio(model, want)
    got_audio = np.asarray(jax.jit(lambda v, c: codec.apply(v, c, method="decode"))(
        variables, want.transpose(0, 2, 1)))
    np.testing.assert_allclose(got_audio, want_audio, atol=2e-5 * np.abs(want_audio).max())
