"""Moshi's LM configuration, in Kyutai's own keyword names (``LMModel(**kwargs)``).

The fields are the keyword arguments of Kyutai's ``moshi.models.lm.LMModel`` as
``moshi/models/loaders.py::_lm_kwargs`` and the ``config.json`` of Kyutai's checkpoints spell
them (``configs/moshi_7b_202409.json``); the defaults are the 7B Moshi's. Four fields are ours,
not Kyutai's: ``dtype``, ``attention``, ``remat`` and ``scan_layers`` (how the JAX model runs).

How Kyutai's keywords become our shared transformer's options
(:class:`audiolm_jax.layers.transformer.TransformerConfig`)::

    norm 'rms_norm_f32' | 'rms_norm'    -> norm='rms', norm_eps 1e-8 | 1e-5 (float32 statistics)
    gating 'silu'                       -> mlp='silu_gated', mlp_hidden = gating_hidden(...)
    positional_embedding 'rope'         -> rope='interleaved' ('rope_concat' -> 'half';
                                           'sin' / 'sin_rope' add a sine embedding first)
    max_period                          -> rope_base
    context (frames; None = unbounded)  -> window (query t sees keys t - context + 1 .. t)
    layer_scale                         -> layer_scale
    no biases anywhere                  -> bias=False

The depth transformer ("depformer") takes ``depformer_*`` keywords where given and the main
ones otherwise, except that its context is always None (``LMModel.__init__`` sets
``kwargs_dep["context"] = None``: ``depformer_context`` is read but not used) and its
positional embedding is ``depformer_pos_emb``. With ``depformer_weights_per_step`` every one
of the ``dep_q`` steps has its own attention projections and gating MLP, or the set
``depformer_weights_per_step_schedule[k]`` when a schedule shares them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

from audiolm_jax.layers.transformer import TransformerConfig

Dtype = Any

NORM_EPS = {"rms_norm_f32": 1e-8, "rms_norm": 1e-5}
GATINGS = ("silu",)
# Kyutai's positional embeddings -> (rope convention of our transformer, additive sine?)
POSITIONAL = {"rope": ("interleaved", False), "rope_concat": ("half", False),
              "none": ("none", False), "sin": ("none", True), "sin_rope": ("interleaved", True)}

# Loader-level keys of Kyutai's config.json (``loaders.CheckpointInfo.from_hf_repo``): they
# name files and sampling settings, not the LM.
LOADER_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name",
               "model_type", "lm_gen_config", "tts_config", "stt_config", "model_id")
# Deprecated keys Kyutai's loader drops (``get_moshi_lm``).
DROPPED_KEYS = ("depformer_causal",)
# LMModel / transformer options this model leaves at Kyutai's defaults: a config.json may
# name them, with these values only.
FIXED_KEYS = {
    "text_card_out": None, "demux_second_text_stream": False, "demux_second_stream": False,
    "norm_emb": False, "bias_proj": False, "depformer_low_rank_embeddings": None,
    "depformer_norm": None, "extra_heads_num_heads": 0, "conditioners": None, "fuser": None,
    "kv_repeat": 1, "depformer_kv_repeat": 1, "cross_attention": False, "quantize": False,
    "positional_scale": 1.0, "depformer_positional_scale": 1.0, "lora": False,
    "gradient_checkpointing": False,
}
# Harmless when present whatever their value (not used by the forward pass).
IGNORED_KEYS = ("extra_heads_dim", "existing_text_end_padding_id", "lora_rank",
                "lora_scaling")

# Kyutai's defaults where config.json leaves a keyword out: LMModel's constructor defaults
# (``moshi/models/lm.py``) and StreamingTransformer's (``modules/transformer.py``).
KYUTAI_DEFAULTS = {
    "delays": [0], "n_q": 8, "dep_q": 8, "card": 1024, "text_card": 32000, "dim": 128,
    "num_heads": 8, "hidden_scale": 4, "norm": "layer_norm", "depformer_dim": 256,
    "depformer_dim_feedforward": None, "depformer_multi_linear": False,
    "depformer_weights_per_step": False, "depformer_weights_per_step_schedule": None,
    "depformer_pos_emb": "sin", "existing_text_padding_id": 3, "context": None,
    "causal": True, "positional_embedding": "sin", "max_period": 10000, "layer_scale": None,
    "gating": "none", "depformer_context": None,
}
# depformer_X missing from config.json -> the main X (``kwargs_dep = main_kwargs.copy()``)
DEPFORMER_INHERITS = ("num_layers", "max_period", "gating", "layer_scale")


def gating_hidden(dim: int, dim_feedforward: int) -> int:
    """The hidden width of Kyutai's gated MLP (``modules/gating.py::ActivationGating``):
    ``21 * dim // 8`` when ``dim_feedforward == 4 * dim``, else ``2 * dim_feedforward // 3``."""
    if dim_feedforward == 4 * dim:
        return (21 * dim) // 8
    return (2 * dim_feedforward) // 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoshiConfig:
    """Kyutai's ``LMModel`` keywords (7B defaults) plus how the JAX model runs."""

    dim: int = 4096
    text_card: int = 32000
    existing_text_padding_id: int = 3
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    causal: bool = True
    layer_scale: Optional[float] = None
    context: Optional[int] = 3000
    max_period: float = 10000
    gating: str = "silu"
    norm: str = "rms_norm_f32"
    positional_embedding: str = "rope"
    depformer_dim: int = 1024
    depformer_dim_feedforward: Optional[int] = 4224  # int(4.125 * 1024)
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    depformer_layer_scale: Optional[float] = None
    depformer_multi_linear: bool = True
    depformer_context: Optional[int] = 8  # read by Kyutai's config, never used (see above)
    depformer_max_period: float = 10000
    depformer_gating: str = "silu"
    depformer_pos_emb: str = "none"
    depformer_weights_per_step: bool = True
    depformer_weights_per_step_schedule: Optional[tuple] = None
    delays: tuple = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    # ours: the compute dtype, attention kernel, rematerialisation, scanned layers
    dtype: Dtype = jnp.float32
    attention: str = "blocked"
    remat: Any = "none"
    scan_layers: bool = False

    def __post_init__(self):
        object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))
        if self.depformer_weights_per_step_schedule is not None:
            object.__setattr__(self, "depformer_weights_per_step_schedule",
                               tuple(int(s) for s in self.depformer_weights_per_step_schedule))

        def bad(key, want):
            raise ValueError(f"moshi {key} must be {want}, got {getattr(self, key)!r}")

        if len(self.delays) != self.n_q + 1:
            bad("delays", f"n_q + 1 = {self.n_q + 1} values (text, then each codebook)")
        if any(d < 0 for d in self.delays):
            bad("delays", "non-negative")
        if not 0 <= self.dep_q <= self.n_q:
            bad("dep_q", f"in [0, n_q={self.n_q}]")
        if not self.causal:
            bad("causal", "True (the LM is causal)")
        if self.norm not in NORM_EPS:
            bad("norm", f"one of {tuple(NORM_EPS)}")
        for key in ("gating", "depformer_gating"):
            if getattr(self, key) not in GATINGS:
                bad(key, f"one of {GATINGS}")
        for key in ("positional_embedding", "depformer_pos_emb"):
            if getattr(self, key) not in POSITIONAL:
                bad(key, f"one of {tuple(POSITIONAL)}")
        if self.context is not None and self.context < 1:
            bad("context", "None or >= 1")
        if isinstance(self.depformer_dim_feedforward, (list, tuple)):
            bad("depformer_dim_feedforward",
                "one int (a width per weight set is not supported by the shared transformer)")
        schedule = self.depformer_weights_per_step_schedule
        if schedule is not None:
            if len(schedule) != self.dep_q:
                bad("depformer_weights_per_step_schedule", f"{self.dep_q} (dep_q) entries")
            if min(schedule) < 0:
                bad("depformer_weights_per_step_schedule", "non-negative weight-set ids")
        # Build both stacks' configs now so their own checks speak at construction.
        self.temporal_config()
        if self.dep_q:
            self.depformer_config()

    # ------------------------------------------------------------------ derived sizes

    @property
    def num_codebooks(self) -> int:
        """Rows of the codes: text + n_q audio codebooks."""
        return self.n_q + 1

    @property
    def initial_token_id(self) -> int:
        """Audio start token (``LMModel.initial_token_id``): the extra embedding row."""
        return self.card

    @property
    def text_initial_token_id(self) -> int:
        """Text start token (``LMModel.text_initial_token_id``)."""
        return self.text_card

    zero_token_id = -1  # embeds to exactly 0; masked out of the loss
    ungenerated_token_id = -2  # to be sampled (generation); embeds as id 0 in ``forward``

    @property
    def hidden(self) -> int:
        """The temporal transformer's gated MLP width (11264 for the 7B)."""
        return gating_hidden(self.dim, int(self.hidden_scale * self.dim))

    @property
    def depformer_hidden(self) -> int:
        """The depformer's gated MLP width (2816 for the 7B)."""
        ff = self.depformer_dim_feedforward
        if ff is None:
            ff = int(self.hidden_scale * self.depformer_dim)
        return gating_hidden(self.depformer_dim, int(ff))

    @property
    def depformer_weight_sets(self) -> int:
        """Weight sets of the depformer's blocks (0: one set shared by every step)."""
        if not self.depformer_weights_per_step:
            return 0
        schedule = self.depformer_weights_per_step_schedule
        return max(schedule) + 1 if schedule else self.dep_q

    @property
    def depformer_in_count(self) -> int:
        """Input projections of the depformer (``len(LMModel.depformer_in)``)."""
        if not self.depformer_multi_linear:
            return 1
        schedule = self.depformer_weights_per_step_schedule
        return max(schedule) + 1 if schedule else self.dep_q

    def depformer_in_index(self, step: int) -> int:
        """Which input projection step ``step`` uses (``forward_depformer_training``)."""
        if not self.depformer_multi_linear:
            return 0
        schedule = self.depformer_weights_per_step_schedule
        return schedule[step] if schedule is not None else step

    # ------------------------------------------------------------------ our transformers

    def _stack(self, **kw) -> TransformerConfig:
        return TransformerConfig(
            mlp="silu_gated", norm="rms", norm_eps=NORM_EPS[self.norm], bias=False,
            init="lecun", dtype=self.dtype, attention=self.attention, remat=self.remat,
            scan_layers=self.scan_layers, **kw)

    def temporal_config(self) -> TransformerConfig:
        """The temporal (main) transformer as our shared stack."""
        return self._stack(
            num_layers=self.num_layers, num_heads=self.num_heads, width=self.dim,
            mlp_hidden=self.hidden, rope=POSITIONAL[self.positional_embedding][0],
            rope_base=float(self.max_period), layer_scale=self.layer_scale,
            window=int(self.context or 0))

    def depformer_config(self) -> TransformerConfig:
        """The depth transformer as our shared stack: dep_q positions, no window."""
        sets = self.depformer_weight_sets
        schedule = self.depformer_weights_per_step_schedule if sets else None
        return self._stack(
            num_layers=self.depformer_num_layers, num_heads=self.depformer_num_heads,
            width=self.depformer_dim, mlp_hidden=self.depformer_hidden,
            rope=POSITIONAL[self.depformer_pos_emb][0],
            rope_base=float(self.depformer_max_period), layer_scale=self.depformer_layer_scale,
            window=0, weights_per_step=sets, weights_per_step_schedule=tuple(schedule or ()))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def tiny(cls, **overrides) -> "MoshiConfig":
        """A few-thousand-parameter Moshi for tests: every feature of the 7B (sliding window,
        per-step depformer weights on a schedule, delays), tiny sizes."""
        kw = dict(
            dim=64, text_card=40, n_q=6, dep_q=3, card=32, num_heads=4, num_layers=2,
            hidden_scale=4.125, context=8, depformer_dim=32, depformer_dim_feedforward=128,
            depformer_num_heads=4, depformer_num_layers=2, depformer_context=3,
            depformer_weights_per_step_schedule=(0, 1, 1), delays=(0, 0, 1, 1, 0, 1, 1),
            attention="xla")
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_kyutai_json(cls, raw: dict, **ours) -> "MoshiConfig":
        """A config from Kyutai's ``config.json`` dict (or ``_lm_kwargs``). Missing keywords
        take Kyutai's constructor defaults, as Kyutai's loader would; loader-only keys are
        ignored; an unknown keyword, or a feature this model lacks, raises naming it.
        ``ours``: the JAX-side fields (dtype, attention, remat, scan_layers)."""
        raw = dict(raw)
        for key in LOADER_KEYS + DROPPED_KEYS + IGNORED_KEYS:
            raw.pop(key, None)
        for key, want in FIXED_KEYS.items():
            if key in raw:
                value = raw.pop(key)
                if value != want and not (want is None and not value):
                    raise ValueError(f"Kyutai config {key}={value!r} is not supported "
                                     f"(only {want!r})")
        fields = {f.name for f in dataclasses.fields(cls)} - {
            "dtype", "attention", "remat", "scan_layers"}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(f"unknown Kyutai LM config keys {unknown}")
        kw = {k: v for k, v in KYUTAI_DEFAULTS.items()}
        for name in DEPFORMER_INHERITS:
            kw["depformer_" + name] = raw.get(name, KYUTAI_DEFAULTS.get(name))
        kw.update(raw)
        missing = sorted(fields - set(kw))
        if missing:  # no Kyutai default either (e.g. num_layers, depformer_num_heads)
            raise ValueError(f"Kyutai LM config lacks {missing}")
        if kw.get("depformer_num_layers") is None:
            raise ValueError("Kyutai LM config lacks num_layers")
        return cls(**kw, **ours)

    def kyutai_kwargs(self) -> dict:
        """Kyutai's ``LMModel`` keywords for this config (the inverse of
        :meth:`from_kyutai_json`; tests build Kyutai's model from it)."""
        ours = {"dtype", "attention", "remat", "scan_layers"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ours}
        out["delays"] = list(self.delays)
        if self.depformer_weights_per_step_schedule is not None:
            out["depformer_weights_per_step_schedule"] = list(
                self.depformer_weights_per_step_schedule)
        return out
