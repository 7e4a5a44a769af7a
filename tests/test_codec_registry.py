"""Codec kinds are registered objects: each a typed config (defaults, validation naming
``model.KEY``, hop length, latent width) and an encoder/decoder builder; a new kind plugs into
training and inference without touching any other file."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiolm_jax.codec.config import (mimi_config, tiny_cnn_config, tiny_mimi_config,
                                      tiny_soundstream_config)
from audiolm_jax.codec.inference import LoadedCodec
from audiolm_jax.codec.model import bitrate_bps, build_codec, frame_rate, hop_length
from audiolm_jax.codec.networks import CNNConfig, MimiConfig, SEANetConfig, make_encoder_decoder
from audiolm_jax.codec.registry import (CodecConfig, codec_config, codec_kinds, codec_settings,
                                        register_codec, unregister_codec)
from audiolm_jax.codec.task import CodecTask
from audiolm_jax.config_check import check_codec_config
from audiolm_jax.errors import ConfigError
from audiolm_jax.quantization import STATS
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.loop import compile_init_step, compile_step, initial_state

# Small networks of each built-in kind (a handful of frames compile in seconds).
SMALL = {
    "cnn": dict(kind="cnn", channels=4, latent_dim=6, num_blocks=3, res_blocks=1),
    "seanet": dict(kind="seanet", n_filters=4, ratios=(3, 2), dimension=6),
    "mimi": dict(kind="mimi", n_filters=4, ratios=(2, 2), dimension=8, transformer_layers=1,
                 transformer_heads=2, transformer_ffn_dim=16, transformer_context=8),
}


def test_registry_lists_the_built_in_kinds():
    assert codec_kinds() == ["cnn", "mimi", "seanet"]
    assert type(codec_config({"kind": "cnn"})) is CNNConfig
    assert type(codec_config({"kind": "seanet"})) is SEANetConfig
    assert type(codec_config({"kind": "mimi"})) is MimiConfig
    assert type(codec_config({})) is SEANetConfig  # the default kind
    with pytest.raises(ValueError, match="already registered"):
        register_codec("cnn", CNNConfig, lambda cfg: None)
    with pytest.raises(TypeError, match="CodecConfig"):
        register_codec("other", dict, lambda cfg: None)


def test_defaults_are_written_once():
    """The builders' defaults, the config files' values and the typed configs agree."""
    assert codec_config({"kind": "mimi"}) == codec_config(mimi_config().model)
    assert codec_config({"kind": "mimi"}).hop_length == 1920  # 24 kHz -> 12.5 Hz
    assert codec_config({"kind": "seanet"}).hop_length == 320
    assert codec_config({"kind": "cnn"}).hop_length == 128
    assert codec_settings(tiny_cnn_config().model) == {"kind": "cnn",
                                                       **dataclasses.asdict(CNNConfig(
                                                           channels=16, latent_dim=16,
                                                           res_blocks=2))}


def test_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"model.kind must be one of \['cnn', 'mimi', "
                                         r"'seanet'\], got 'bogus'"):
        codec_config({"kind": "bogus"})
    config = tiny_cnn_config()
    config.model.kind = "bogus"
    with pytest.raises(ConfigError, match=r"model.kind must be one of \['cnn', 'mimi'"):
        check_codec_config(config)


def test_keys_of_other_kinds_are_ignored_unknown_keys_refused():
    cnn = codec_config({"kind": "cnn", "n_filters": 8, "transformer_layers": 3})
    assert cnn == CNNConfig()
    with pytest.raises(ValueError, match="model.bogus is not a codec setting"):
        codec_config({"kind": "cnn", "bogus": 1})
    # Every saved config.json of the legacy fixtures still reads.
    import json
    import pathlib

    for path in pathlib.Path(__file__).parent.glob("data/legacy_v0/*/config.json"):
        saved = json.loads(path.read_text())
        if saved.get("task", "codec") == "codec":
            assert codec_config(saved["model"]).hop_length == 64, path


@pytest.mark.parametrize("kind,key,value", [
    ("cnn", "channels", 0), ("cnn", "num_blocks", "7"), ("cnn", "double_residual_quirk", 1),
    ("cnn", "res_blocks", -1),
    ("seanet", "ratios", ()), ("seanet", "ratios", (4, 0)), ("seanet", "activation", "swish"),
    ("seanet", "pad_mode", "wrap"), ("seanet", "final_activation", 3),
    ("mimi", "transformer_heads", 3), ("mimi", "causal", False),
    ("mimi", "frame_downsample", 0), ("mimi", "trim_right_ratio", 0.5),
    ("mimi", "norm_eps", 0.0),
])
def test_bad_value_is_refused_naming_the_key(kind, key, value):
    with pytest.raises(ValueError, match=rf"^model\.{key} must be"):
        codec_config({**SMALL[kind], key: value})
    config = {"cnn": tiny_cnn_config, "seanet": tiny_soundstream_config,
              "mimi": tiny_mimi_config}[kind]()
    config.model = ml_collections.ConfigDict({**config.model.to_dict(), key: value})
    with pytest.raises(ConfigError, match=rf"model\.{key}"):
        check_codec_config(config)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_hop_length_is_what_the_encoder_produces(kind):
    cfg = codec_config(SMALL[kind])
    enc, dec, hop, latent = make_encoder_decoder(SMALL[kind])
    assert (hop, latent) == (cfg.hop_length, cfg.latent_dim)
    assert hop == {"cnn": 8, "seanet": 6, "mimi": 8}[kind]
    frames = 5
    audio = jax.ShapeDtypeStruct((2, frames * hop), jnp.float32)
    variables = jax.eval_shape(enc.init, jax.random.PRNGKey(0), audio)
    z = jax.eval_shape(enc.apply, variables, audio)
    assert z.shape == (2, frames, latent)
    dvars = jax.eval_shape(dec.init, jax.random.PRNGKey(0), z)
    assert jax.eval_shape(dec.apply, dvars, z).shape == (2, frames * hop)
    if cfg.pads_partial_frames:  # the encoder pads a last partial frame itself
        short = jax.ShapeDtypeStruct((2, frames * hop - 1), jnp.float32)
        assert jax.eval_shape(enc.apply, variables, short).shape == (2, frames, latent)


@pytest.mark.parametrize("make", [tiny_cnn_config, tiny_soundstream_config, tiny_mimi_config])
def test_codec_hop_frame_rate_and_bitrate_come_from_the_kind(make):
    config = make()
    hop = codec_config(config.model).hop_length
    assert hop_length(config) == hop == {"cnn": 128, "seanet": 32, "mimi": 64}[config.model.kind]
    assert frame_rate(config) == config.data.sample_rate / hop
    assert bitrate_bps(config) == frame_rate(config) * config.quantizer.num_levels * 6  # 64 codes
    audio = jax.ShapeDtypeStruct((1, 3 * hop + 5), jnp.float32)  # a partial last frame
    model = build_codec(config)
    variables = jax.eval_shape(lambda a: model.init(
        {"params": jax.random.PRNGKey(0), "vq": jax.random.PRNGKey(1)}, a), audio)
    codes = jax.eval_shape(lambda v, a: model.apply(v, a, method="encode"), variables, audio)
    assert codes.shape == (1, 4, config.quantizer.num_levels)


# ----------------------------------------------------------------------------- a new kind


@dataclasses.dataclass(frozen=True)
class ToyConfig(CodecConfig):
    """One strided conv in, one dense layer out; ``latent_dim`` is also a CNN key, so the base
    config's value is this kind's too."""

    latent_dim: int = 8
    hop_length: int = 4

    def validate(self) -> None:
        if self.hop_length < 1:
            raise ValueError(f"model.hop_length must be >= 1, got {self.hop_length}")


class ToyEncoder(nn.Module):
    cfg: ToyConfig

    @nn.compact
    def __call__(self, audio):
        h = self.cfg.hop_length
        return nn.Conv(self.cfg.latent_dim, (h,), strides=(h,), padding="VALID")(audio[..., None])


class ToyDecoder(nn.Module):
    cfg: ToyConfig

    @nn.compact
    def __call__(self, z):
        return nn.Dense(self.cfg.hop_length)(z).reshape(z.shape[0], -1)


@pytest.fixture
def toy_kind():
    register_codec("toy", ToyConfig, lambda cfg: (ToyEncoder(cfg), ToyDecoder(cfg)))
    yield "toy"
    unregister_codec("toy")


def test_a_kind_registered_here_trains_and_codes(toy_kind):
    assert "toy" in codec_kinds()
    config = tiny_cnn_config()
    config.model.kind = toy_kind  # the CNN and SEANet keys stay: other kinds', ignored
    config.data.crop_length = 64
    check_codec_config(config)
    assert hop_length(config) == 4 and codec_config(config.model).latent_dim == 16

    task = CodecTask(config)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = {"audio": (0.1 * rng.standard_normal((8, 64))).astype(np.float32)}
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        state, shardings, _ = initial_state(task, mesh, jax.random.PRNGKey(0))
        before = jax.device_get(state.params)
        b = mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh, 1))
        state = compile_init_step(task, shardings, mesh)(state, b)
        step = compile_step(task, shardings, mesh)
        for _ in range(2):  # the learning rate warms up from 0: the second step moves
            state, metrics = step(state, b)
    state = jax.device_get(state)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 2
    assert state.params["encoder"]["Conv_0"]["kernel"].shape == (4, 1, 16)
    assert not np.allclose(state.params["decoder"]["Dense_0"]["kernel"],
                           before["decoder"]["Dense_0"]["kernel"])

    codec = LoadedCodec(config, state.params, state.vq_stats, step=2)
    audio = batch["audio"][0, :37]  # not a whole number of frames: zero-padded to 10
    codes = codec.encode(audio)
    assert codes.shape == (config.quantizer.num_levels, 10) and codes.dtype == np.int32
    assert codec.decode(codes).shape == (40,)
    direct = build_codec(config).apply({"params": state.params, STATS: state.vq_stats},
                                       jnp.asarray(audio[None]), method="encode")
    np.testing.assert_array_equal(np.asarray(direct)[0].T, codes)
