"""PosEncConfig: a Llama configuration plus the choice of position encoding and its parameters.

Copied next to the weights by ``save_pretrained`` (remote code): imports only torch, transformers, the
standard library and its sibling ``encodings_hf_posenc``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .encodings_hf_posenc import available_position_encodings, position_encoding_class

# Extra keys each RoPE type needs besides rope_type and rope_theta (transformers' RoPE utilities read them).
# What every config carried before RoPE parameters became RoPE-only: accepted (and dropped) on other encodings.
LEGACY_DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
DEFAULT_ROPE_THETA = 10000.0

ROPE_REQUIRED_KEYS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


def _require_int(field: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def _require_real(field: str, value, minimum: float, *, inclusive: bool = False, maximum: float | None = None):
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    ok = ok and (maximum is None or value < maximum)
    if not ok:
        bound = f"{'>=' if inclusive else '>'} {minimum}" + (f" and < {maximum}" if maximum is not None else "")
        raise ValueError(f"{field} must be a finite number {bound}, got {value!r}")


class PosEncConfig(PreTrainedConfig):
    r"""Configuration of an hf_posenc model: a Llama-style decoder whose position encoding is chosen by name.

    Args:
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
        num_key_value_heads, head_dim, rms_norm_eps, max_position_embeddings, initializer_range,
        attention_dropout, tie_word_embeddings, pad_token_id, bos_token_id, eos_token_id, use_cache:
            As in ``LlamaConfig``. ``num_key_value_heads`` < ``num_attention_heads`` gives grouped-query attention.
        position_encoding (`str`, defaults to ``"rope"``):
            One of ``"sinusoidal"``, ``"learned"``, ``"rope"``, ``"alibi"``, ``"t5_bias"``, ``"nope"``,
            ``"kerple_log"``, ``"kerple_power"``, ``"fire"``, ``"xpos"``, ``"sandwich"``, ``"dynamic_bias"``,
            ``"fox"``, ``"cope"``, a name added with ``hf_posenc.register_position_encoding``, or a per-layer
            pattern: names joined by ``+``, repeated over the layers (``"rope+rope+rope+nope"``: NoPE in every
            fourth layer). A pattern takes encodings that act inside attention (not sinusoidal / learned), at
            least two different ones, and every name must reach a layer (a pattern no longer than
            ``num_hidden_layers`` does). Options of an encoding (``rope_fraction``, ``alibi_num_heads``...) apply
            to every layer that uses it.
        rope_theta (`float`, *optional*, defaults to 10000.0 for RoPE encodings):
            RoPE base. Stored, as transformers 5 does, in ``rope_parameters["rope_theta"]``. The three RoPE
            options exist only for encodings that use RoPE (``uses_rope``); on any other encoding the config
            has no ``rope_parameters`` and a RoPE option is an error (the plain default is tolerated, so
            configs saved before still load).
        rope_scaling (`dict`, *optional*):
            RoPE scaling for transformers' RoPE utilities, e.g. ``{"rope_type": "linear", "factor": 2.0}``
            (``"dynamic"``, ``"yarn"``, ``"llama3"``, ``"longrope"`` work too). Merged into ``rope_parameters``.
        rope_parameters (`dict`, *optional*):
            The transformers 5 form of the two above; wins over ``rope_theta``, loses to ``rope_scaling``.
        t5_num_buckets (`int`, defaults to 32), t5_max_distance (`int`, defaults to 128):
            T5 relative-bias buckets: half exact distances, half log-spaced up to ``t5_max_distance``.
        original_max_position_embeddings (`int`, *optional*):
            The trained context length: the sequence length the model was trained on (set by ``hf-posenc train``;
            ``None`` while unknown). transformers' name for the pretraining length (Phi-3 keeps it at top level;
            yarn / longrope / llama3 RoPE read it from here). ``max_position_embeddings`` stays the most positions
            the model can represent (the learned table's rows). Positions beyond the trained length are allowed
            and reported once with a warning. Evaluators that read ``n_positions`` first
            (lm-evaluation-harness) get this length by default.
        sinusoidal_scale (`float`, *optional*):
            Multiplier of the sinusoidal table. ``None`` matches the table's RMS to the token embeddings' RMS
            at initialization (``initializer_range * sqrt(2)``).
        cope_max_positions (`int`, defaults to 64):
            CoPE: size of each layer's table of position embeddings; contextual positions (counts of gated
            tokens, not of tokens) are clamped below it, so it can be much smaller than the context.
        rope_fraction (`float`, defaults to 1.0):
            p-RoPE (rope, xpos): rotate only the highest ``rope_fraction`` of the frequencies; the rest carry no
            position. In (0, 1]; 1 is plain RoPE.
        alibi_num_heads (`int`, *optional*):
            ALiBi on the first ``alibi_num_heads`` heads only (slopes computed for that many heads); the other
            heads get no position signal. ``None``: every head.
        fire_init_length (`int`, *optional*):
            Initial value of FIRE's learned length ``L``. ``None``: ``max_position_embeddings``.
        xpos_scale_base (`float`, defaults to 512.0):
            xPos' gamma: the scale is ``zeta ** (n / gamma)``.
        sandwich_dim (`int`, *optional*):
            Channels ``d'`` of the sinusoidal embeddings whose inner product is Sandwich's bias. ``None``: ``hidden_size``.
    """

    model_type = "hf_posenc"
    # Tensor parallelism as Llama's: projections into heads / the MLP split by column, projections out by row.
    # Position encodings hold no sharded weight (a learned table or T5 bias is replicated on every rank).
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 768,
        intermediate_size: int = 2048,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        attention_dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        position_encoding: str = "rope",
        rope_theta: float | None = None,
        rope_scaling: dict | None = None,
        rope_parameters: dict | None = None,
        t5_num_buckets: int = 32,
        t5_max_distance: int = 128,
        sinusoidal_scale: float | None = None,
        cope_max_positions: int = 64,
        original_max_position_embeddings: int | None = None,
        rope_fraction: float = 1.0,
        alibi_num_heads: int | None = None,
        fire_init_length: int | None = None,
        xpos_scale_base: float = 512.0,
        sandwich_dim: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.attention_dropout = attention_dropout
        self.tie_word_embeddings = tie_word_embeddings
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.position_encoding = position_encoding
        self.t5_num_buckets = t5_num_buckets
        self.t5_max_distance = t5_max_distance
        self.sinusoidal_scale = sinusoidal_scale
        self.cope_max_positions = cope_max_positions
        self.rope_fraction = rope_fraction
        self.alibi_num_heads = alibi_num_heads
        self.fire_init_length = fire_init_length
        self.xpos_scale_base = xpos_scale_base
        self.sandwich_dim = sandwich_dim
        if original_max_position_embeddings is not None:
            # Only set when known: transformers' RoPE standardization copies the attribute whenever it exists.
            _require_int("original_max_position_embeddings", original_max_position_embeddings)
            self.original_max_position_embeddings = original_max_position_embeddings
        self._validate_architecture()
        if self.head_dim is None:
            self.head_dim = hidden_size // num_attention_heads
        if self.uses_rope:
            theta = DEFAULT_ROPE_THETA if rope_theta is None else rope_theta
            self.rope_parameters = self._merge_rope_arguments(theta, rope_scaling, rope_parameters)
            self._validate_rope()  # before transformers' own RoPE checks, which raise less helpful errors
        else:
            self._refuse_rope_options(rope_theta, rope_scaling, rope_parameters)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        if self.uses_rope:
            self.standardize_rope_params()  # adds original_max_position_embeddings for yarn / llama3 / longrope

    @property
    def trained_context_length(self) -> int | None:
        """The sequence length the model was trained on, or ``None`` when the config does not record it."""
        return getattr(self, "original_max_position_embeddings", None)

    @property
    def n_positions(self) -> int:
        """The context length evaluators should use by default (lm-evaluation-harness reads ``n_positions``
        before ``max_position_embeddings``): the trained length when known, else ``max_position_embeddings``."""
        return self.trained_context_length or self.max_position_embeddings

    @property
    def uses_rope(self) -> bool:
        """Whether the chosen encoding rotates queries and keys with transformers' RoPE utilities."""
        return getattr(position_encoding_class(self.position_encoding), "uses_rope", False)

    def _refuse_rope_options(self, rope_theta, rope_scaling, rope_parameters) -> None:
        given = {
            "rope_theta": None if rope_theta == DEFAULT_ROPE_THETA else rope_theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": None if rope_parameters == LEGACY_DEFAULT_ROPE else rope_parameters,
            "rope_fraction": None if self.rope_fraction == 1.0 else self.rope_fraction,
        }
        given = {field: value for field, value in given.items() if value is not None}
        if given:
            rope_encodings = [
                name for name in available_position_encodings() if getattr(position_encoding_class(name), "uses_rope", False)
            ]
            raise ValueError(
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())} is a RoPE option, but position_encoding="
                f"{self.position_encoding!r} does not use RoPE; drop it or choose one of {rope_encodings}"
            )

    @property
    def effective_sinusoidal_scale(self) -> float:
        if self.sinusoidal_scale is not None:
            return self.sinusoidal_scale
        return self.initializer_range * math.sqrt(2.0)

    @staticmethod
    def _merge_rope_arguments(rope_theta, rope_scaling, rope_parameters) -> dict:
        for field, value in (("rope_scaling", rope_scaling), ("rope_parameters", rope_parameters)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{field} must be a dict such as {{'rope_type': 'linear', 'factor': 2.0}}, got {value!r}")
        merged = dict(rope_parameters or {})
        merged.update(rope_scaling or {})
        if "type" in merged:  # the pre-5.x spelling
            merged.setdefault("rope_type", merged.pop("type"))
        merged.setdefault("rope_type", "default")
        merged.setdefault("rope_theta", rope_theta)
        return merged

    def _validate_architecture(self) -> None:
        encoding_class = position_encoding_class(self.position_encoding)  # a ValueError naming what is wrong
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            _require_int(field, getattr(self, field))
        if self.head_dim is not None:
            _require_int("head_dim", self.head_dim)
        elif self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size must be divisible by num_attention_heads (or set head_dim), got hidden_size="
                f"{self.hidden_size} and num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads must be a multiple of num_key_value_heads, got num_attention_heads="
                f"{self.num_attention_heads} and num_key_value_heads={self.num_key_value_heads}"
            )
        self._validate_pattern_reaches_every_name(encoding_class.pattern)
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (the SwiGLU MLP), got {self.hidden_act!r}")
        _require_real("initializer_range", self.initializer_range, 0.0)
        _require_real("rms_norm_eps", self.rms_norm_eps, 0.0)
        _require_real("attention_dropout", self.attention_dropout, 0.0, inclusive=True, maximum=1.0)
        _require_int("t5_num_buckets", self.t5_num_buckets, minimum=2)
        _require_int("t5_max_distance", self.t5_max_distance, minimum=self.t5_num_buckets // 2 + 1)
        _require_int("cope_max_positions", self.cope_max_positions, minimum=2)
        if self.sinusoidal_scale is not None:
            _require_real("sinusoidal_scale", self.sinusoidal_scale, 0.0)
        self._validate_encoding_options()
        for field in ("pad_token_id", "bos_token_id"):
            value = getattr(self, field)
            if value is not None:
                _require_int(field, value, minimum=0)

    def _validate_pattern_reaches_every_name(self, pattern: tuple[str, ...] | None) -> None:
        """A per-layer pattern's names must each get a layer: an unused part would hold parameters that never get
        a gradient (which DDP refuses), and the name would promise an encoding the model does not have."""
        if pattern is None:
            return
        unused = [name for name in dict.fromkeys(pattern) if name not in pattern[: self.num_hidden_layers]]
        if unused:
            raise ValueError(
                f"position_encoding={self.position_encoding!r} repeats every {len(pattern)} layers, but with "
                f"num_hidden_layers={self.num_hidden_layers} no layer uses {unused}; shorten the pattern or add layers"
            )

    def _validate_encoding_options(self) -> None:
        fraction = self.rope_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
            raise ValueError(f"rope_fraction must be a number in (0, 1] (the fraction of RoPE frequencies kept), got {fraction!r}")
        if fraction != 1 and not self.uses_rope:
            raise ValueError(
                f"rope_fraction={fraction!r} is a RoPE option (p-RoPE), but position_encoding={self.position_encoding!r} "
                "does not use RoPE; drop it or choose rope or xpos"
            )
        if self.alibi_num_heads is not None:
            _require_int("alibi_num_heads", self.alibi_num_heads)
            if self.alibi_num_heads > self.num_attention_heads:
                raise ValueError(
                    f"alibi_num_heads must be <= num_attention_heads ({self.num_attention_heads}), got {self.alibi_num_heads}"
                )
        for field in ("fire_init_length", "sandwich_dim"):
            if getattr(self, field) is not None:
                _require_int(field, getattr(self, field))
        if self.sandwich_dim is not None and self.sandwich_dim % 2:
            raise ValueError(f"sandwich_dim must be even (sine/cosine pairs), got {self.sandwich_dim}")
        _require_real("xpos_scale_base", self.xpos_scale_base, 0.0)

    def _validate_rope(self) -> None:
        params = self.rope_parameters
        rope_type = params["rope_type"]
        allowed = ["default", *ROPE_INIT_FUNCTIONS]
        if rope_type not in allowed:
            raise ValueError(f"rope_scaling['rope_type'] must be one of {allowed}, got {rope_type!r}")
        _require_real("rope_theta", params["rope_theta"], 0.0)
        for key in ROPE_REQUIRED_KEYS.get(rope_type, ()):
            if key not in params:
                raise ValueError(f"rope_scaling with rope_type={rope_type!r} needs the key {key!r}, got {params!r}")
        if "factor" in params:
            _require_real("rope_scaling['factor']", params["factor"], 1.0, inclusive=True)
        if self.rope_fraction < 1 and rope_type in ("dynamic", "longrope"):
            raise ValueError(
                f"rope_fraction < 1 (p-RoPE) cannot be combined with rope_type={rope_type!r}, whose frequencies are "
                f"recomputed during the forward; use 'default', 'linear', 'yarn' or 'llama3', got rope_fraction={self.rope_fraction}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")


__all__ = ["PosEncConfig"]
