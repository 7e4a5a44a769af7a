"""Long files are encoded (and long code sequences decoded) chunk by chunk, in bounded memory,
with the result of one whole call."""

import numpy as np
import pytest
from helpers import fast_params

from audiolm_jax.codec import config as codec_configs
from audiolm_jax.codec.inference import LoadedCodec
from audiolm_jax.codec.model import build_codec, hop_length


def _codecs(name, chunk_frames):
    config = getattr(codec_configs, name)()
    variables = fast_params(build_codec(config), np.zeros((1, 4096), np.float32))
    hop, sr = hop_length(config), config.data.sample_rate
    make = lambda seconds: LoadedCodec(config, variables["params"], variables["vq_stats"],
                                       step=0, chunk_seconds=seconds)
    return make(1e9), make(chunk_frames * hop / sr), hop


@pytest.mark.parametrize("name", ["tiny_cnn_config", "tiny_soundstream_config",
                                  "tiny_mimi_config"])
def test_chunked_encoding_equals_one_call(name):
    whole, chunked, hop = _codecs(name, chunk_frames=5)
    assert chunked.chunk_frames == 5
    windows = []
    if name != "tiny_mimi_config":
        inner = chunked._encode
        chunked._encode = lambda a: (windows.append(a.shape), inner(a))[1]
    # Lengths: a partial last frame, whole frames, one sample past a frame.
    for n in (97 * hop + 13, 131 * hop + 1):
        audio = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.3
        expect = whole.encode(audio)
        got = chunked.encode(audio)
        assert got.shape == expect.shape == (chunked.num_levels, -(-n // hop))
        np.testing.assert_array_equal(got, expect, err_msg=f"{name}, {n} samples")
    if name == "tiny_mimi_config":
        assert chunked._streamer is not None  # the streaming path ran
    else:
        before, after = chunked.receptive_field_frames()
        assert len(windows) > 2 * 3 and set(windows) == {(1, (5 + before + after) * hop)}


@pytest.mark.parametrize("name", ["tiny_cnn_config", "tiny_soundstream_config",
                                  "tiny_mimi_config"])
def test_chunked_decoding_equals_one_call(name):
    whole, chunked, hop = _codecs(name, chunk_frames=5)
    rng = np.random.default_rng(0)
    for frames, levels in ((97, whole.num_levels), (131, 2)):  # all levels, and fewer
        codes = rng.integers(0, whole.codebook_size, (levels, frames))
        expect = whole.decode(codes)
        got = chunked.decode(codes)
        assert got.shape == expect.shape == (frames * hop,)
        # Conv windows give the same audio; Mimi's streaming decoder matches to rounding.
        np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5 * np.abs(expect).max(),
                                   err_msg=f"{name}, {frames} frames, {levels} levels")
    if name == "tiny_mimi_config":
        assert chunked._streamer is not None


def test_receptive_field_is_measured():
    _, cnn, _ = _codecs("tiny_cnn_config", 5)
    before, after = cnn.receptive_field_frames()
    assert before > 1 and after > 1  # non-causal: reads both ways
    _, causal, _ = _codecs("tiny_soundstream_config", 5)
    for decoder in (False, True):
        before, after = causal.receptive_field_frames(decoder=decoder)
        assert before > 1 and after == 1  # causal: only the one frame of slack ahead


def test_chunk_seconds_must_be_positive():
    config = codec_configs.tiny_cnn_config()
    variables = fast_params(build_codec(config), np.zeros((1, 4096), np.float32))
    with pytest.raises(ValueError, match="chunk_seconds"):
        LoadedCodec(config, variables["params"], variables["vq_stats"], step=0, chunk_seconds=0)
