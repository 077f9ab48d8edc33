"""The position encodings, each a small module behind one interface, and the registry that names them.

An encoding may act at three points of the decoder (all hooks default to "do nothing", which is NoPE):

1. ``input_embedding``: a tensor added to the token embeddings (sinusoidal, learned);
2. ``rotary``: the (cos, sin) pair that rotates queries and keys (rope);
3. ``score_bias``: a function ``bias(head, query_pos, key_pos)`` added to the attention scores (alibi, t5_bias);
4. ``data_dependent_bias``: a per-layer module that sees the layer's inputs, queries and keys (fox, cope); it
   lives in ``data_dependent_hf_posenc.py`` with the cache handling it needs.

The model calls each hook once per forward and hands the result to every layer. ``score_bias`` returns a
function of index tensors rather than a tensor so that one definition serves both the dense path (eager /
SDPA, evaluated on broadcast index grids into a ``(heads, q, k)`` tensor) and FlexAttention (evaluated
inside ``score_mod`` on scalar indices, so no L x L tensor is ever built).

This file is copied next to the weights by ``save_pretrained`` (remote code): it must only import torch,
transformers and the standard library, never ``hf_posenc`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update

from .data_dependent_hf_posenc import ContextualPositionBias, DataDependentBias, ForgetGateBias

# bias(head, query_pos, key_pos) -> additive score bias; arguments broadcast against each other.
ScoreBiasFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PositionEncoding(nn.Module):
    """Base class of all position encodings. Subclasses override the hooks they need.

    Attributes:
        max_positions: the largest number of positions the encoding can represent, or ``None`` when it
            works at any length. Evaluation and training use it to refuse lengths early.
        uses_rope: whether the encoding reads ``config.rope_parameters`` (transformers' RoPE utilities). The
            config keeps RoPE parameters only for such encodings and refuses RoPE options on any other.
    """

    max_positions: int | None = None
    uses_rope: bool = False
    # Triton block sizes for FlexAttention on GPU (its ``kernel_options``), or None for torch's defaults.
    flex_kernel_options: dict | None = None

    def __init__(self, config):
        super().__init__()
        self.config = config

    def input_embedding(self, position_ids: torch.LongTensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Tensor of shape ``(batch or 1, q, hidden_size)`` added to the token embeddings, or ``None``."""
        return None

    def rotary(self, hidden_states: torch.Tensor, position_ids: torch.LongTensor):
        """``(cos, sin)``, each ``(batch or 1, q, head_dim)``, that rotate queries and keys, or ``None``."""
        return None

    def score_bias(self, key_length: int, device: torch.device, dtype: torch.dtype) -> ScoreBiasFn | None:
        """A function ``bias(head, query_pos, key_pos)`` of integer tensors, or ``None``.

        ``query_pos`` and ``key_pos`` are indices into the key/value sequence (the cache included); only
        their difference should matter. ``key_length`` bounds every index, so tables can be precomputed.
        """
        return None

    @classmethod
    def data_dependent_bias(cls, config, layer_idx: int) -> DataDependentBias | None:
        """The module that layer ``layer_idx``'s attention calls with its inputs, queries and keys, or ``None``.

        A classmethod because each attention layer builds its own (the parameters are per layer); see
        ``DataDependentBias`` for the three methods a data-dependent encoding overrides.
        """
        return None

    def check_positions(self, position_ids: torch.LongTensor) -> None:
        """Raise a ``ValueError`` if the positions are beyond what the encoding supports."""
        if self.max_positions is None or torch.compiler.is_compiling():
            return
        largest = int(position_ids.max())
        if largest >= self.max_positions:
            raise ValueError(
                f"position_encoding={self.config.position_encoding!r} supports positions 0..{self.max_positions - 1} "
                f"(max_position_embeddings={self.max_positions}), but position {largest} was requested. "
                "Use a shorter input, or an encoding that extrapolates (sinusoidal, rope, alibi, t5_bias, nope)."
            )

    def init_buffers(self) -> None:
        """Recompute deterministic buffers (called after weights are materialized from the meta device).

        The model calls ``init_buffers`` on every submodule that defines it, so a helper module that owns
        buffers (like ``RotaryFrequencies``) defines its own.
        """


class NoPositionEncoding(PositionEncoding):
    """NoPE: no explicit position information; causal masking alone lets the model infer order."""


def sinusoidal_table(position_ids: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The Transformer's sinusoidal encoding: even channels sin(p / base^(2i/d)), odd channels cos(...).

    position_ids: (..., q) -> returns (..., q, dim) in float32.
    """
    half = torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32)
    inv_freq = base ** (-half / dim)  # (ceil(dim / 2),)
    angles = position_ids.float()[..., None] * inv_freq  # (..., q, ceil(dim / 2))
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., q, ceil(dim / 2), 2)
    return table.flatten(-2)[..., :dim]  # interleave: sin, cos, sin, cos ...


class SinusoidalPositionEncoding(PositionEncoding):
    """Fixed sinusoids (Vaswani et al., 2017) added to the token embeddings, computed for any position.

    The table is multiplied by ``config.sinusoidal_scale`` (by default ``initializer_range * sqrt(2)``, so its
    RMS equals the token embeddings' RMS at initialization). Added at full scale to small-init embeddings
    it would drown the tokens, and the model stalls at unigram loss.
    """

    def input_embedding(self, position_ids, dtype):
        table = sinusoidal_table(position_ids, self.config.hidden_size)
        return (table * self.config.effective_sinusoidal_scale).to(dtype)


class LearnedPositionEncoding(PositionEncoding):
    """A learned vector per absolute position (GPT-2 style); undefined beyond max_position_embeddings."""

    def __init__(self, config):
        super().__init__(config)
        self.max_positions = config.max_position_embeddings
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def input_embedding(self, position_ids, dtype):
        self.check_positions(position_ids)
        return self.position_embeddings(position_ids).to(dtype)


class RotaryFrequencies(nn.Module):
    """RoPE frequencies from transformers' own RoPE utilities (default, linear, dynamic, yarn, llama3 ...).

    Kept attribute-compatible with transformers' rotary modules so that ``dynamic_rope_update`` can
    recompute the frequencies for dynamic and long-context RoPE types.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.compute_frequencies()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def compute_frequencies(self) -> tuple[torch.Tensor, float]:
        if self.rope_type == "default":
            theta = self.config.rope_parameters["rope_theta"]
            dim = self.config.head_dim
            return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
        return ROPE_INIT_FUNCTIONS[self.rope_type](self.config)

    def init_buffers(self) -> None:
        inv_freq, self.attention_scaling = self.compute_frequencies()
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq)
            self.original_inv_freq.copy_(inv_freq)

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x, position_ids, layer_type=None):
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (batch, q, head_dim): the rotate-half layout
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


class RotaryPositionEncoding(PositionEncoding):
    """RoPE (Su et al., 2021): rotate queries and keys by position-dependent angles."""

    uses_rope = True

    def __init__(self, config):
        super().__init__(config)
        self.frequencies = RotaryFrequencies(config)

    def rotary(self, hidden_states, position_ids):
        return self.frequencies(hidden_states, position_ids)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Head slopes from the ALiBi paper (Press et al., 2022): a geometric sequence starting at 2^(-8/n).

    For a head count that is not a power of two, take the slopes of the closest lower power of two and
    add every other slope of the next power of two, as the paper's reference implementation does.
    """

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class AlibiPositionEncoding(PositionEncoding):
    """ALiBi: a per-head linear penalty ``-slope_h * (query_pos - key_pos)`` on the attention scores."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("slopes", alibi_slopes(config.num_attention_heads), persistent=False)

    def score_bias(self, key_length, device, dtype):
        slopes = self.slopes.to(device=device, dtype=torch.float32)

        def bias(head, query_pos, key_pos):
            return slopes[head] * (key_pos - query_pos)

        return bias

    def init_buffers(self):
        with torch.no_grad():
            self.slopes.copy_(alibi_slopes(self.config.num_attention_heads))


def t5_causal_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of a non-negative query-minus-key distance, as in T5's unidirectional relative attention.

    Half the buckets hold exact distances 0..num_buckets/2-1; the rest cover distances up to
    max_distance on a log scale; anything farther shares the last bucket.
    """
    distance = distance.clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (num_buckets - exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return torch.where(distance < exact, distance, far)


class T5BiasPositionEncoding(PositionEncoding):
    """T5 relative bias (Raffel et al., 2020): a learned scalar per (head, distance bucket), shared by layers."""

    # The per-distance table lookup in score_mod runs 1.7x faster with 64 x 64 blocks than with the defaults
    # (H200, bf16, forward+backward at 2048 tokens; docs/benchmark.md, reference measurements).
    flex_kernel_options = {"BLOCK_M": 64, "BLOCK_N": 64}

    def __init__(self, config):
        super().__init__(config)
        self.relative_attention_bias = nn.Embedding(config.t5_num_buckets, config.num_attention_heads)

    def score_bias(self, key_length, device, dtype):
        # A (heads, key_length) table of the bias at every distance: looking it up is cheap in any kernel,
        # where computing the log-bucket inside FlexAttention's score_mod does not compile well.
        distance = torch.arange(key_length, device=device)
        buckets = t5_causal_bucket(distance, self.config.t5_num_buckets, self.config.t5_max_distance)
        table = self.relative_attention_bias(buckets).t().float()  # (key_length, heads) -> (heads, key_length)

        def bias(head, query_pos, key_pos):
            return table[head, (query_pos - key_pos).clamp(min=0, max=key_length - 1)]

        return bias


class ForgettingPositionEncoding(PositionEncoding):
    """FoX (Lin et al., 2025): a learned per-head forget gate decays attention to the past; see ForgetGateBias."""

    @classmethod
    def data_dependent_bias(cls, config, layer_idx):
        return ForgetGateBias(config, layer_idx)


class ContextualPositionEncoding(PositionEncoding):
    """CoPE (Golovneva et al., 2024): positions counted by gates on q . k; see ContextualPositionBias."""

    @classmethod
    def data_dependent_bias(cls, config, layer_idx):
        return ContextualPositionBias(config, layer_idx)


# The registry: an explicit dict, filled here and by ``register_position_encoding``.
POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEncoding,
    "rope": RotaryPositionEncoding,
    "alibi": AlibiPositionEncoding,
    "t5_bias": T5BiasPositionEncoding,
    "nope": NoPositionEncoding,
    "fox": ForgettingPositionEncoding,
    "cope": ContextualPositionEncoding,
}


def register_position_encoding(name: str, encoding_class: type[PositionEncoding] | None = None, *, overwrite=False):
    """Register ``encoding_class`` under ``name`` so ``PosEncConfig(position_encoding=name)`` selects it.

    Usable directly or as a decorator. Refuses to replace an existing name unless ``overwrite=True``.
    """

    def register(cls):
        if not isinstance(name, str) or not name:
            raise ValueError(f"position encoding name must be a non-empty string, got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, PositionEncoding)):
            raise TypeError(f"position encoding {name!r} must be a subclass of PositionEncoding, got {cls!r}")
        if name in POSITION_ENCODINGS and POSITION_ENCODINGS[name] is not cls and not overwrite:
            raise ValueError(
                f"position encoding {name!r} is already registered ({POSITION_ENCODINGS[name].__name__}); "
                "pass overwrite=True to replace it"
            )
        POSITION_ENCODINGS[name] = cls
        return cls

    return register(encoding_class) if encoding_class is not None else register


def unregister_position_encoding(name: str) -> None:
    """Remove a user-registered encoding (the built-in ones cannot be removed)."""
    if name in BUILTIN_POSITION_ENCODINGS:
        raise ValueError(f"{name!r} is a built-in position encoding and cannot be unregistered")
    POSITION_ENCODINGS.pop(name, None)


BUILTIN_POSITION_ENCODINGS = tuple(POSITION_ENCODINGS)


def available_position_encodings() -> list[str]:
    return list(POSITION_ENCODINGS)


def build_position_encoding(config) -> PositionEncoding:
    try:
        encoding_class = POSITION_ENCODINGS[config.position_encoding]
    except KeyError:
        raise ValueError(
            f"position_encoding={config.position_encoding!r} is not registered; "
            f"choose one of {available_position_encodings()}"
        ) from None
    return encoding_class(config)
