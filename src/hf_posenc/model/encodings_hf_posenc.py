"""The position encodings, each a small module behind one interface, and the registry that names them.

An encoding may act at four points of the decoder (all hooks default to "do nothing", which is NoPE):

1. ``input_embedding``: a tensor added to the token embeddings (sinusoidal, learned);
2. ``rotary``: the (cos, sin) pair that rotates queries and keys (rope; xpos gives queries and keys their own);
3. ``score_bias``: a function ``bias(head, query_pos, key_pos)`` added to the attention scores (alibi, t5_bias,
   kerple_log, kerple_power, fire, sandwich, dynamic_bias).
4. ``data_dependent_bias``: a per-layer module that sees the layer's inputs, queries and keys (fox, cope); it
   lives in ``data_dependent_hf_posenc.py`` with the cache handling it needs.

The model calls each hook once per forward and hands the result to every layer. A per-layer pattern
(``position_encoding="rope+rope+rope+nope"``: names joined by ``+``, repeated over the layers) is one more
``PositionEncoding``, ``PerLayerPositionEncoding``: the model asks each of its parts once per forward and hands
each layer the result of its own part. ``score_bias`` returns a
function of index tensors rather than a tensor so that one definition serves both the dense path (eager /
SDPA, evaluated on broadcast index grids into a ``(heads, q, k)`` tensor) and FlexAttention (evaluated
inside ``score_mod`` on scalar indices, so no L x L tensor is ever built).

Every encoding also describes itself (``description``, ``citation``, ``formula``, ``color`` and
``distance_profile``), so the figures, plots, model cards, comparisons and benchmarks ask the class instead of
keeping their own lists of names: a new encoding needs no edit outside its own class.

This file is copied next to the weights by ``save_pretrained`` (remote code): it must only import torch,
transformers and the standard library, never ``hf_posenc`` itself. It is longer than our usual ~400 lines on
purpose: remote code loads flat sibling files, and one file per encoding would make every saved model folder
carry a dozen files; each class stays small.
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
    extrapolates: bool = True  # False: positions beyond max_position_embeddings are refused (learned)
    # Self-description, read by figures, plots, model cards and docs (override in every encoding).
    description: str = "a position encoding registered by the user of hf_posenc."
    citation: str = ""
    formula: str = ""
    color: str | None = None  # matplotlib colour in every plot; None: a stable colour derived from the name
    supports_flex_attention: bool = True  # False: attn_implementation="flex_attention" is refused (cope)
    # Triton block sizes for FlexAttention on GPU (its ``kernel_options``), or None for torch's defaults.
    flex_kernel_options: dict | None = None
    # The encoding names of a per-layer pattern, one per layer of a period (None: one encoding in every layer).
    pattern: tuple[str, ...] | None = None

    def __init__(self, config):
        super().__init__()
        self.config = config

    @classmethod
    def acts_at(cls, hook: str) -> bool:
        """Whether the encoding acts at ``hook`` (``"input_embedding"``, ``"rotary"``, ``"score_bias"`` or
        ``"data_dependent_bias"``): whether it overrides the base class's do-nothing hook."""
        own, default = getattr(cls, hook), getattr(PositionEncoding, hook)
        return getattr(own, "__func__", own) is not getattr(default, "__func__", default)  # classmethods: the function

    @classmethod
    def class_of_layer(cls, layer_idx: int) -> type[PositionEncoding]:
        """The encoding class acting in layer ``layer_idx``: this one (a per-layer pattern answers with a part)."""
        return cls

    def layer_plan(self, num_layers: int) -> tuple[list[PositionEncoding], list[int]]:
        """The encodings acting in the layers, and for each layer the index of its own among them.

        The model computes the position information of each listed encoding once per forward. One encoding acts
        in every layer: ``([self], [0, 0, ...])``; a per-layer pattern lists its parts.
        """
        return [self], [0] * num_layers

    def input_embedding(self, position_ids: torch.LongTensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Tensor of shape ``(batch or 1, q, hidden_size)`` added to the token embeddings, or ``None``."""
        return None

    def rotary(self, hidden_states: torch.Tensor, position_ids: torch.LongTensor):
        """``(cos, sin)``, each ``(batch or 1, q, head_dim)``, that rotate queries and keys, or ``None``.

        An encoding that treats queries and keys differently (xpos) returns ``(query_cos, query_sin, key_cos,
        key_sin)`` instead.
        """
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
            unlimited = [name for name, cls in POSITION_ENCODINGS.items() if cls.extrapolates]
            raise ValueError(
                f"position_encoding={self.config.position_encoding!r} supports positions 0..{self.max_positions - 1} "
                f"(max_position_embeddings={self.max_positions}), but position {largest} was requested. "
                f"Use a shorter input, or an encoding without a position limit ({', '.join(unlimited)})."
            )

    def init_buffers(self) -> None:
        """Recompute deterministic buffers (called after weights are materialized from the meta device).

        The model calls ``init_buffers`` on every submodule that defines it, so a helper module that owns
        buffers (like ``RotaryFrequencies``) defines its own.
        """

    def init_parameters(self) -> None:
        """Initialize parameters that are not inside an ``nn.Linear`` / ``nn.Embedding`` (those the model
        initializes itself). Called by the model's weight initialization, like ``init_buffers``."""

    @torch.no_grad()
    def distance_profile(self, max_distance: int, trained: bool = False) -> dict:
        """What the encoding does with the distance ``d = 0..max_distance`` between a query and a key.

        Returns ``{"curves": [(label, (D,) float tensor)], "ylabel": str}`` and optionally ``"note"``. The
        default asks the hooks: a score bias is drawn per head (query at position ``max_distance``, key ``d``
        tokens back), a rotation as the q.k similarity of a constant vector rotated to both positions (1 at
        ``d = 0``), an added embedding as the mean cosine similarity of the vectors of positions ``p`` and
        ``p + d``; no hook at all is a flat line. ``trained``: whether the parameters come from a trained model
        (encodings whose untrained parameters are noise can show their structure instead).
        """
        device = torch.device("cpu")
        distance = torch.arange(max_distance + 1)
        bias = self.score_bias(max_distance + 1, device, torch.float32)
        if bias is not None:
            heads = torch.arange(self.config.num_attention_heads)
            query = torch.full_like(distance, max_distance)
            values = bias(heads[:, None], query[None, :], (max_distance - distance)[None, :]).float()  # (heads, D)
            return {"curves": [(f"head {h}", values[h]) for h in range(len(heads))], "ylabel": "score bias added to q.k"}
        positions = torch.cat([torch.zeros(1, dtype=torch.long), distance])[None, :]  # (1, 1 + D)
        rotary = self.rotary(torch.zeros(1, dtype=torch.float32), positions)
        if rotary is not None:
            query_cos, query_sin = rotary[0].float(), rotary[1].float()  # (1, 1 + D, head_dim)
            key_cos, key_sin = (rotary[2].float(), rotary[3].float()) if len(rotary) == 4 else (query_cos, query_sin)
            ones = torch.ones_like(query_cos[0, :1])  # (1, head_dim): q = k = a constant vector
            key = ones * key_cos[0, :1] + _rotate_half(ones) * key_sin[0, :1]  # the key at position 0
            queries = ones * query_cos[0, 1:] + _rotate_half(ones) * query_sin[0, 1:]  # (D, head_dim)
            scores = (queries * key).sum(-1) / query_cos.shape[-1]
            return {"curves": [("q = k (constant vector)", scores)], "ylabel": "q.k similarity (1 at distance 0)"}
        added = self.input_embedding(torch.arange(max_distance + 256)[None, :], torch.float32)
        if added is not None:
            unit = nn.functional.normalize(added[0].float(), dim=-1)  # (P, hidden)
            similarity = unit @ unit.T  # (P, P)
            largest = min(max_distance, len(unit) - 1)
            curve = torch.stack([similarity.diagonal(d).mean() for d in range(largest + 1)])
            return {"curves": [("cosine similarity", curve)], "ylabel": "cos(position p, position p + d)"}
        return {"curves": [("no position signal", torch.zeros(len(distance)))], "ylabel": "position signal"}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class NoPositionEncoding(PositionEncoding):
    """NoPE: no explicit position information; causal masking alone lets the model infer order."""

    description = (
        "no position encoding (NoPE): the only source of order is the causal mask, from which a decoder can still "
        "infer positions (Haviv et al., 2022; Kazemnejad et al., 2023)."
    )
    citation = "Haviv et al., 2022; Kazemnejad et al., NeurIPS 2023"
    formula = "none"
    color = "#8c564b"


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

    description = (
        "the fixed sine/cosine table of the original Transformer (Vaswani et al., 2017), added to the token "
        "embeddings. It has no parameters and is defined for any position, but the model only saw the positions it "
        "was trained on."
    )
    citation = "Vaswani et al., NeurIPS 2017"
    formula = "x_n + s * [sin(n / 10000^(2i/d)), cos(n / 10000^(2i/d))]"
    color = "#1f77b4"

    def input_embedding(self, position_ids, dtype):
        table = sinusoidal_table(position_ids, self.config.hidden_size)
        return (table * self.config.effective_sinusoidal_scale).to(dtype)


class LearnedPositionEncoding(PositionEncoding):
    """A learned vector per absolute position (GPT-2 style); undefined beyond max_position_embeddings."""

    extrapolates = False
    description = (
        "a learned absolute position embedding (one trained vector per position, as in GPT-2), added to the token "
        "embeddings. It exists only for positions 0 to max_position_embeddings - 1: the model cannot read longer "
        "inputs at all."
    )
    citation = "Radford et al., 2019 (GPT-2)"
    formula = "x_n + P[n], P learned"
    color = "#ff7f0e"

    @torch.no_grad()
    def distance_profile(self, max_distance, trained=False):
        table = self.position_embeddings.weight.float()  # (max_positions, hidden)
        unit = nn.functional.normalize(table, dim=-1)
        similarity = unit @ unit.T  # (P, P)
        curve = torch.stack([similarity.diagonal(d).mean() for d in range(min(max_distance, len(unit) - 1) + 1)])
        return {"curves": [("cosine similarity", curve)], "ylabel": "cos(position p, position p + d)",
                "note": "trained" if trained else "untrained: random init"}

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
            inv_freq, scaling = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
        else:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[self.rope_type](self.config)
        return keep_highest_frequencies(inv_freq, self.config.rope_fraction), scaling

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


def keep_highest_frequencies(inv_freq: torch.Tensor, fraction: float) -> torch.Tensor:
    """p-RoPE (Barbero et al., ICLR 2025): keep the highest ``fraction`` of the frequencies, set the rest to 0.

    A zero frequency rotates by angle 0 at every position, so those channel pairs carry no position at all
    (pure semantic channels). ``inv_freq`` is sorted from the highest frequency to the lowest, as transformers'
    RoPE functions return it. ``fraction=1`` is plain RoPE.
    """
    kept = round(fraction * len(inv_freq))
    return torch.cat([inv_freq[:kept], torch.zeros_like(inv_freq[kept:])])


class RotaryPositionEncoding(PositionEncoding):
    """RoPE (Su et al., 2021): rotate queries and keys by position-dependent angles.

    ``config.rope_fraction < 1`` gives p-RoPE (Barbero et al., 2025): only the highest frequencies rotate.
    """

    description = (
        "rotary position embedding (RoPE, Su et al., 2021): queries and keys are rotated by position-dependent "
        "angles, so attention scores depend on the relative distance between tokens. With this encoding the model is "
        "numerically a Llama. With rope_fraction < 1 (p-RoPE, Barbero et al., 2025) only the highest frequencies "
        "rotate and the remaining channels carry no position."
    )
    citation = "Su et al., 2021 (RoPE); Barbero et al., ICLR 2025 (p-RoPE)"
    formula = "q_n = R(n theta) q, k_m = R(m theta) k, theta_i = base^(-2i/d) (p-RoPE: theta_i = 0 for i >= p d/2)"
    color = "#2ca02c"

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


def alibi_head_slopes(num_heads: int, biased_heads: int | None = None) -> torch.Tensor:
    """Slopes of all heads: the paper's slopes for the first ``biased_heads`` heads (all when None), 0 after.

    Heads with slope 0 see no position signal (NoPE heads), as in x-transformers' ALiBi on a subset of heads.
    """
    biased = num_heads if biased_heads is None else biased_heads
    slopes = torch.zeros(num_heads)
    slopes[:biased] = alibi_slopes(biased)
    return slopes


class AlibiPositionEncoding(PositionEncoding):
    """ALiBi: a per-head linear penalty ``-slope_h * (query_pos - key_pos)`` on the attention scores.

    ``config.alibi_num_heads`` restricts the bias to the first heads (slopes computed for that many heads);
    the other heads get no position signal.
    """

    description = (
        "ALiBi (Press et al., 2022): no position embedding at all; each attention head adds a linear penalty, "
        "proportional to the query-key distance, to its attention scores. The slopes are fixed per head; the ALiBi "
        "paper credits this for extrapolating to inputs longer than those seen in training."
    )
    citation = "Press et al., ICLR 2022"
    formula = "-m_h (i - j), m_h = 2^(-8h/H)"
    color = "#d62728"

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("slopes", self._slopes(), persistent=False)

    def _slopes(self):
        return alibi_head_slopes(self.config.num_attention_heads, self.config.alibi_num_heads)

    def score_bias(self, key_length, device, dtype):
        slopes = self.slopes.to(device=device, dtype=torch.float32)

        def bias(head, query_pos, key_pos):
            return slopes[head] * (key_pos - query_pos)

        return bias

    def init_buffers(self):
        with torch.no_grad():
            self.slopes.copy_(self._slopes())


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
    description = (
        "T5 relative position bias (Raffel et al., 2020): each head learns a scalar bias per bucket of query-key "
        "distance (exact for short distances, log-spaced up to a maximum), added to the attention scores."
    )
    citation = "Raffel et al., JMLR 2020"
    formula = "b_h[bucket(i - j)], learned"
    color = "#9467bd"

    def __init__(self, config):
        super().__init__(config)
        self.relative_attention_bias = nn.Embedding(config.t5_num_buckets, config.num_attention_heads)

    def score_bias(self, key_length, device, dtype):
        # A (heads, key_length) table of the bias at every distance: looking it up is cheap in any kernel,
        # where computing the log-bucket inside FlexAttention's score_mod does not compile well.
        distance = torch.arange(key_length, device=device)
        buckets = t5_causal_bucket(distance, self.config.t5_num_buckets, self.config.t5_max_distance)
        table = self.relative_attention_bias(buckets).t().float()  # (key_length, heads) -> (heads, key_length)

        return distance_table_bias(table)

    @torch.no_grad()
    def distance_profile(self, max_distance, trained=False):
        """Untrained, the learned values are noise: show the bucket structure they share instead."""
        if not trained:
            distance = torch.arange(max_distance + 1)
            buckets = t5_causal_bucket(distance, self.config.t5_num_buckets, self.config.t5_max_distance).float()
            return {"curves": [("bucket", buckets)], "ylabel": "bucket index (bias is learned per bucket)",
                    "note": "bucket structure (untrained)"}
        return super().distance_profile(max_distance, trained)


def distance_table_bias(table: torch.Tensor) -> ScoreBiasFn:
    """The score bias of a ``(heads, key_length)`` table of the bias at every distance 0..key_length-1.

    A table lookup is cheap in every kernel (FlexAttention's score_mod included) and builds no L x L tensor.
    """
    largest = table.shape[-1] - 1

    def bias(head, query_pos, key_pos):
        return table[head, (query_pos - key_pos).clamp(min=0, max=largest)]

    return bias


def _positive(raw: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(raw)


def _inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    return value + torch.log(-torch.expm1(-value))


class KerpleLogPositionEncoding(PositionEncoding):
    """KERPLE, logarithmic variant (Chi et al., NeurIPS 2022): ``-r1_h * log(1 + r2_h * (i - j))``.

    ``r1_h, r2_h > 0`` are learned per head. They are stored unconstrained and mapped through softplus, so they
    stay positive by construction and keep their gradient everywhere (no clamping).
    """

    description = (
        "KERPLE-log (Chi et al., 2022): a learned logarithmic distance penalty per head, "
        "-r1 log(1 + r2 (i - j)) with r1, r2 > 0, added to the attention scores; derived from conditionally "
        "positive definite kernels."
    )
    citation = "Chi et al., NeurIPS 2022"
    formula = "-r1_h log(1 + r2_h (i - j)), r1_h, r2_h > 0"
    color = "#e377c2"
    initial_r1, initial_r2 = 1.0, 1.0

    def __init__(self, config):
        super().__init__(config)
        self.raw_r1 = nn.Parameter(torch.empty(config.num_attention_heads))
        self.raw_r2 = nn.Parameter(torch.empty(config.num_attention_heads))
        self.init_parameters()

    def init_parameters(self):
        with torch.no_grad():
            self.raw_r1.copy_(_inverse_softplus(torch.full_like(self.raw_r1, self.initial_r1, dtype=torch.float)))
            self.raw_r2.copy_(self._raw_r2_for(torch.full_like(self.raw_r2, self.initial_r2, dtype=torch.float)))

    def _raw_r2_for(self, r2):
        return _inverse_softplus(r2)

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r1, r2)``, each ``(heads,)`` float32, inside their ranges by construction."""
        return _positive(self.raw_r1.float()), _positive(self.raw_r2.float())

    def kernel(self, distance: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        """distance: (D,) float; r1, r2: (heads, 1) -> (heads, D)."""
        return -r1 * torch.log1p(r2 * distance)

    def score_bias(self, key_length, device, dtype):
        r1, r2 = (c.to(device)[:, None] for c in self.coefficients())  # (heads, 1)
        distance = torch.arange(key_length, device=device, dtype=torch.float32)  # (key_length,)
        return distance_table_bias(self.kernel(distance, r1, r2))


class KerplePowerPositionEncoding(KerpleLogPositionEncoding):
    """KERPLE, power variant (Chi et al., NeurIPS 2022): ``-r1_h * (i - j) ** r2_h`` with ``0 < r2_h <= 2``.

    ``r1_h = softplus(raw)`` and ``r2_h = 2 * sigmoid(raw)``: in range by construction (2 is the supremum).
    """

    description = (
        "KERPLE-power (Chi et al., 2022): a learned power-law distance penalty per head, -r1 (i - j)^r2 with r1 > 0 "
        "and 0 < r2 <= 2, added to the attention scores."
    )
    formula = "-r1_h (i - j)^r2_h, r1_h > 0, 0 < r2_h <= 2"
    color = "#f7b6d2"
    initial_r1, initial_r2 = 1.0, 1.0

    def _raw_r2_for(self, r2):
        return torch.logit(r2 / 2)

    def coefficients(self):
        return _positive(self.raw_r1.float()), 2 * torch.sigmoid(self.raw_r2.float())

    def kernel(self, distance, r1, r2):
        return -r1 * distance.pow(r2)


def fire_log_transform(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """FIRE's ``psi(x) = log(|c| x + 1)`` (the absolute value keeps it defined whatever sign c learns)."""
    return torch.log1p(c.abs() * x)


class FirePositionEncoding(PositionEncoding):
    """FIRE (Li et al., ICLR 2024): ``f_theta(psi(i - j) / psi(max(L, i)))``, ``psi(x) = log(c x + 1)``.

    ``f_theta`` is an MLP (1 -> width -> heads, ReLU); ``c`` and ``L`` are learned, ``L`` initialised to
    ``fire_init_length`` (default: ``max_position_embeddings``, the training length). The bias depends on the
    query position, not only on the distance, so no per-distance table exists. Its MLP input is always in
    [0, 1] (``i - j <= i <= max(L, i)``), so the MLP is evaluated once per forward on ``fire_grid_size`` points
    of [0, 1] and every score reads the bias by linear interpolation in that ``(heads, grid)`` table: the same
    function on every backend (eager, SDPA, FlexAttention's score_mod), no L x L tensor on the flex path, and
    a cost of ``grid x width x heads`` per forward plus a gather and a multiply-add per score. Because a ReLU
    MLP is piecewise linear, interpolation is exact except inside the few grid cells that hold one of its kinks.
    """

    description = (
        "FIRE (Li et al., 2024): a learned bias per head, an MLP of the log-transformed distance normalised by the "
        "log-transformed query position (or a learned length L, whichever is larger), added to the attention scores."
    )
    citation = "Li et al., ICLR 2024"
    formula = "f_theta(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1)"
    color = "#17becf"
    mlp_width = 32  # the paper's f_theta: one hidden layer of 32 units
    initial_c = 0.1
    grid_size = 1025  # points of [0, 1] at which f_theta is tabulated

    def __init__(self, config):
        super().__init__(config)
        self.mlp = nn.Sequential(nn.Linear(1, self.mlp_width), nn.ReLU(), nn.Linear(self.mlp_width, config.num_attention_heads))
        self.c = nn.Parameter(torch.empty(()))
        self.length = nn.Parameter(torch.empty(()))  # L
        self.init_parameters()

    def init_parameters(self):
        init_length = self.config.fire_init_length or self.config.max_position_embeddings
        with torch.no_grad():
            self.c.fill_(self.initial_c)
            self.length.fill_(float(init_length))

    def score_bias(self, key_length, device, dtype):
        grid_size = self.grid_size
        grid = torch.linspace(0, 1, grid_size, device=device)  # (G,)
        table = self.mlp(grid[:, None].to(self.mlp[0].weight.dtype)).float().t()  # (G, 1) -> (G, heads) -> (heads, G)
        c, length = self.c.float(), self.length.float().abs()

        def bias(head, query_pos, key_pos):
            distance = (query_pos - key_pos).clamp(min=0).float()
            normalizer = fire_log_transform(torch.maximum(query_pos.float(), length), c)
            x = fire_log_transform(distance, c) / normalizer.clamp(min=1e-6)  # in [0, 1]
            scaled = x.clamp(0, 1) * (grid_size - 1)
            low = scaled.to(torch.int64).clamp(max=grid_size - 2)  # truncation is floor here (scaled >= 0)
            weight = scaled - low.to(torch.float32)
            return table[head, low] * (1 - weight) + table[head, low + 1] * weight

        return bias


class XposPositionEncoding(RotaryPositionEncoding):
    """xPos (Sun et al., 2022): RoPE with queries scaled by ``zeta_i ** (n / gamma)`` and keys by its inverse.

    ``zeta_i = (2i / d + b) / (1 + b)`` per rotation pair (b = 0.4 as in the paper), gamma =
    ``xpos_scale_base`` (512). The q.k product then carries ``zeta_i ** ((n - m) / gamma)``: an exponential
    decay with the distance. The exponent is re-centred on a fixed position (``max_position_embeddings // 2``,
    the same for every forward so that cached keys stay valid); the scales then stay within
    ``zeta_0 ** (+-(16384 - centre) / gamma)`` ~ 1e+-17 at 16k positions, far inside bf16's range (fp16 would
    underflow: use bf16 or fp32).
    """

    description = (
        "xPos (Sun et al., 2022): rotary position embedding whose query rotation is scaled by zeta^(n/gamma) and key "
        "rotation by its inverse, so attention decays exponentially with the query-key distance."
    )
    citation = "Sun et al., ACL 2023 (A Length-Extrapolatable Transformer)"
    formula = "q_n = zeta^(n/gamma) R(n theta) q, k_m = zeta^(-m/gamma) R(m theta) k, zeta_i = (2i/d + 0.4) / 1.4"
    color = "#bcbd22"
    decay = 0.4  # the paper's b in zeta_i = (2i/d + b) / (1 + b)

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("log_zeta", self._log_zeta(), persistent=False)

    def _log_zeta(self) -> torch.Tensor:
        decay = self.decay
        pairs = torch.arange(0, self.config.head_dim, 2, dtype=torch.float32) / self.config.head_dim  # 2i / d
        zeta = (pairs + decay) / (1 + decay)  # (head_dim / 2,)
        return torch.cat([zeta, zeta]).log()  # (head_dim,): the rotate-half layout pairs channel i with i + d/2

    def init_buffers(self):
        with torch.no_grad():
            self.log_zeta.copy_(self._log_zeta())

    def rotary(self, hidden_states, position_ids):
        cos, sin = self.frequencies(torch.empty(0, device=position_ids.device), position_ids)  # float32
        centre = self.config.max_position_embeddings // 2
        exponent = (position_ids.float() - centre)[..., None] / self.config.xpos_scale_base
        scale = torch.exp(self.log_zeta.to(position_ids.device) * exponent)  # (batch, q, head_dim)
        dtype = hidden_states.dtype
        return (cos * scale).to(dtype), (sin * scale).to(dtype), (cos / scale).to(dtype), (sin / scale).to(dtype)


def sandwich_bias(distance: torch.Tensor, dim: int) -> torch.Tensor:
    """Sandwich's ``p_i . p_j - d'/2 = sum_{k=1}^{d'/2} cos((i - j) / 10000^(2k/d')) - d'/2`` for ``(D,)`` distances.

    The inner product of two sinusoidal embeddings depends only on their distance; subtracting its value at
    distance 0 (d'/2, the same for every key of a query) leaves softmax unchanged and makes the bias 0 there.
    """
    k = torch.arange(1, dim // 2 + 1, device=distance.device, dtype=torch.float64)
    inv_freq = 10000.0 ** (-2 * k / dim)  # (d'/2,)
    return ((distance.double()[:, None] * inv_freq).cos().sum(-1) - dim // 2).float()


class SandwichPositionEncoding(PositionEncoding):
    """Sandwich (Chi et al., ACL 2023): the parameter-free bias ``(p_i . p_j) / h`` for head h = 1..H.

    ``p`` are sinusoidal embeddings of ``sandwich_dim`` channels (default ``hidden_size``); the per-head
    division by the head number follows the paper's ALiBi-like head scaling.
    """

    description = (
        "Sandwich (Chi et al., 2023): a parameter-free bias from the inner product of the two positions' sinusoidal "
        "embeddings, divided per head, added to the attention scores; it decays with distance like ALiBi's bias."
    )
    citation = "Chi et al., ACL 2023 (Dissecting Transformer Length Extrapolation via the Lens of Receptive Field Analysis)"
    formula = "(sum_{k=1}^{d'/2} cos((i - j) / 10000^(2k/d')) - d'/2) / h"
    color = "#7f7f7f"

    def score_bias(self, key_length, device, dtype):
        dim = self.config.sandwich_dim or self.config.hidden_size
        heads = torch.arange(1, self.config.num_attention_heads + 1, device=device, dtype=torch.float32)
        table = sandwich_bias(torch.arange(key_length, device=device), dim)[None, :] / heads[:, None]  # (heads, L)
        return distance_table_bias(table)


class DynamicBiasPositionEncoding(PositionEncoding):
    """Dynamic position bias: an MLP of ``log(1 + (i - j))`` to one bias per head (as in x-transformers' idea).

    The MLP runs once per forward on the distances ``0..key_length-1``, giving a ``(heads, key_length)`` table
    that every backend looks up (cheap in FlexAttention: no MLP inside the kernel).
    """

    description = (
        "dynamic position bias: a small MLP of the log distance gives one learned bias per head, added to the "
        "attention scores; continuous in the distance, so it is defined beyond the training length."
    )
    citation = "Wang et al., ICLR 2022 (CrossFormer); x-transformers' DynamicPositionBias"
    formula = "MLP(log(1 + (i - j)))_h"
    color = "#aec7e8"
    mlp_width = 32

    def __init__(self, config):
        super().__init__(config)
        width = self.mlp_width
        self.mlp = nn.Sequential(
            nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, config.num_attention_heads)
        )

    def score_bias(self, key_length, device, dtype):
        distance = torch.arange(key_length, device=device, dtype=torch.float32)
        features = torch.log1p(distance)[:, None].to(self.mlp[0].weight.dtype)  # (key_length, 1)
        return distance_table_bias(self.mlp(features).float().t())  # (key_length, heads) -> (heads, key_length)


class DataDependentPositionEncoding(PositionEncoding):
    """Base of encodings whose bias depends on the text (fox, cope): it has no profile by distance alone.

    Figures draw these on real text instead (``DataDependentBias.explain``, per layer and head).
    """

    bias_class: type[DataDependentBias] = DataDependentBias
    gate_values: tuple[float, ...] = ()
    constant_gate_label = ""

    @classmethod
    def data_dependent_bias(cls, config, layer_idx):
        return cls.bias_class(config, layer_idx)

    def distance_profile(self, max_distance, trained=False):
        """What the bias would be if every gate had one value (the real gates depend on the text: figures draw
        those from a trained model on validation text)."""
        distance = torch.arange(max_distance + 1, dtype=torch.float32)
        curves = [(f"every gate {gate}", self.constant_gate_profile(distance, gate)) for gate in self.gate_values]
        return {"curves": curves, "ylabel": self.constant_gate_label, "note": "constant gates; depends on the text"}


class ForgettingPositionEncoding(DataDependentPositionEncoding):
    """FoX (Lin et al., 2025): a learned per-head forget gate decays attention to the past; see ForgetGateBias."""

    bias_class = ForgetGateBias
    gate_values = (0.9, 0.99, 0.999)
    constant_gate_label = "score bias sum log f"

    @staticmethod
    def constant_gate_profile(distance, gate):
        return distance * math.log(gate)  # d tokens in (j, i], each adding log f
    description = (
        "Forgetting Transformer (Lin et al., 2025): a per-head forget gate f_t = sigmoid(w . x_t + b) computed from "
        "each token; the score of a query for a key d tokens back gets the sum of log f over the tokens in between, "
        "a learned decay that depends on the content."
    )
    citation = "Lin et al., ICLR 2025 (Forgetting Transformer: Softmax Attention with a Forget Gate)"
    formula = "bias(i, j) = sum_{t=j+1..i} log sigmoid(w_h . x_t + b_h)"
    color = "#393b79"


class ContextualPositionEncoding(DataDependentPositionEncoding):
    """CoPE (Golovneva et al., 2024): positions counted by gates on q . k; see ContextualPositionBias."""

    bias_class = ContextualPositionBias
    supports_flex_attention = False  # a suffix sum over the whole row of gates is not a score_mod
    gate_values = (0.25, 0.5, 1.0)
    constant_gate_label = "contextual position p"

    def constant_gate_profile(self, distance, gate):
        return (gate * (distance + 1)).clamp(max=self.config.cope_max_positions - 1)  # keys j..i, each adding g
    description = (
        "Contextual Position Encoding (Golovneva et al., 2024): a position is the number of keys between query and "
        "key whose gate sigmoid(q . k) is open, so it counts words, sentences or whatever the model learns to count; "
        "the bias interpolates learned per-layer embeddings at that fractional position."
    )
    citation = "Golovneva et al., 2024 (Contextual Position Encoding: Learning to Count What's Important)"
    formula = "p_ij = sum_{t=j..i} sigmoid(q_i . k_t / sqrt(d)); bias(i, j) = q_i . e[p_ij] (interpolated)"
    color = "#637939"


class PerLayerPositionEncoding(PositionEncoding):
    """A per-layer pattern: ``position_encoding="rope+rope+rope+nope"`` gives layer ``l`` the encoding
    ``pattern[l % len(pattern)]`` (Llama 4's interleaved NoPE layers).

    ``position_encoding_class`` builds one subclass per pattern (cached), holding the parts' classes and the class
    attributes derived from them. Each distinct part is built once, as a child module named after it
    (``model.position_encoding.rope.*``): a part used by several layers shares its parameters across them, as a
    single encoding shares them across all layers. The model computes each part's position information (RoPE's
    cos/sin, a bias or score_mod) once per forward and hands each layer its own part's. Only encodings acting
    inside attention may be parts (rotary, score biases, nope, data-dependent ones); data-dependent parts build
    their per-layer modules in their own layers only.
    """

    part_classes: dict[str, type[PositionEncoding]] = {}  # name -> class, in order of first use in the pattern
    description = "position encodings chosen per layer."

    def __init__(self, config):
        super().__init__(config)
        for name, part_class in self.part_classes.items():
            self.add_module(name, part_class(config))
        limits = [part.max_positions for part in self.children() if part.max_positions is not None]
        self.max_positions = min(limits) if limits else None

    @classmethod
    def acts_at(cls, hook):
        return any(part.acts_at(hook) for part in cls.part_classes.values())

    @classmethod
    def class_of_layer(cls, layer_idx):
        return cls.part_classes[cls.pattern[layer_idx % len(cls.pattern)]]

    @classmethod
    def data_dependent_bias(cls, config, layer_idx):
        return cls.class_of_layer(layer_idx).data_dependent_bias(config, layer_idx)

    def layer_plan(self, num_layers):
        names = list(self.part_classes)
        parts = [self.get_submodule(name) for name in names]
        return parts, [names.index(self.pattern[layer % len(self.pattern)]) for layer in range(num_layers)]

    @torch.no_grad()
    def distance_profile(self, max_distance, trained=False):
        """The parts' profiles in one panel, each curve labelled with its part (their units may differ)."""
        curves, ylabels, notes = [], [], []
        for name, part in self.named_children():
            profile = part.distance_profile(max_distance, trained)
            curves += [(f"{name}: {label}", values) for label, values in profile["curves"]]
            ylabels.append(profile["ylabel"])
            if profile.get("note"):
                notes.append(f"{name}: {profile['note']}")
        result = {"curves": curves, "ylabel": " | ".join(dict.fromkeys(ylabels))}
        return {**result, "note": "; ".join(notes)} if notes else result


def _mixed_color(colors: list[str | None]) -> str | None:
    """The mean of ``#rrggbb`` colours, one per layer of a pattern's period (parts without a colour are left out)."""
    channels = [[int(color[i : i + 2], 16) for i in (1, 3, 5)] for color in colors if color and len(color) == 7]
    if not channels:
        return None
    return "#" + "".join(f"{round(sum(values) / len(values)):02x}" for values in zip(*channels))


def _per_layer_class(pattern: tuple[str, ...], part_classes: dict[str, type[PositionEncoding]]):
    """The ``PerLayerPositionEncoding`` subclass of a validated pattern, its class attributes from its parts."""
    parts = list(part_classes.values())
    listed = ", ".join(pattern)
    attributes = dict(
        pattern=pattern,
        part_classes=part_classes,
        uses_rope=any(part.uses_rope for part in parts),
        extrapolates=all(part.extrapolates for part in parts),
        supports_flex_attention=all(part.supports_flex_attention for part in parts),
        description=f"position encodings chosen per layer: {listed} (repeating). "
        + " ".join(f"{name}: {part.description}" for name, part in part_classes.items()),
        citation="; ".join(dict.fromkeys(part.citation for part in parts if part.citation)),
        formula=f"layer l: [{listed}][l mod {len(pattern)}]; "
        + "; ".join(f"{name}: {part.formula or '(no formula given)'}" for name, part in part_classes.items()),
        color=_mixed_color([part_classes[name].color for name in pattern]),
    )
    return type("PerLayerPositionEncoding", (PerLayerPositionEncoding,), attributes)


PATTERN_SEPARATOR = "+"  # joins the encodings of a per-layer pattern: "rope+rope+rope+nope"

# The registry: an explicit dict, filled here and by ``register_position_encoding``.
POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEncoding,
    "rope": RotaryPositionEncoding,
    "alibi": AlibiPositionEncoding,
    "t5_bias": T5BiasPositionEncoding,
    "nope": NoPositionEncoding,
    "kerple_log": KerpleLogPositionEncoding,
    "kerple_power": KerplePowerPositionEncoding,
    "fire": FirePositionEncoding,
    "xpos": XposPositionEncoding,
    "sandwich": SandwichPositionEncoding,
    "dynamic_bias": DynamicBiasPositionEncoding,
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
        if PATTERN_SEPARATOR in name:
            raise ValueError(
                f"position encoding name {name!r} contains {PATTERN_SEPARATOR!r}, which joins the names of a per-layer "
                "pattern; choose a name without it"
            )
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
    """Every registered name, built-in ones first (in the order of the table in the README)."""
    return list(POSITION_ENCODINGS)


_PER_LAYER_CLASSES: dict[tuple, type[PerLayerPositionEncoding]] = {}  # one class per pattern and part classes


def position_encoding_class(name: str) -> type[PositionEncoding]:
    """The class of a ``position_encoding`` value; every module resolves encoding names through this function.

    A registered name gives its class (ask it for ``description``, ``citation``, ``formula``, ``color``...). A
    per-layer pattern, registered names joined by ``+`` (``"rope+rope+rope+nope"``), gives a
    ``PerLayerPositionEncoding`` subclass built once per pattern. Raises ``ValueError`` naming the bad part.
    """
    if not isinstance(name, str) or PATTERN_SEPARATOR not in name:
        if isinstance(name, str) and name in POSITION_ENCODINGS:
            return POSITION_ENCODINGS[name]
        raise ValueError(
            f"position_encoding must be one of {available_position_encodings()} or a per-layer pattern of them joined "
            f"by {PATTERN_SEPARATOR!r} (e.g. 'rope+rope+rope+nope'), got {name!r} (add your own with "
            "hf_posenc.register_position_encoding)"
        )
    pattern = tuple(name.split(PATTERN_SEPARATOR))
    part_classes = {part: _pattern_part_class(name, part) for part in pattern}
    if len(part_classes) == 1:
        raise ValueError(
            f"position_encoding={name!r} uses {pattern[0]!r} in every layer; write position_encoding={pattern[0]!r}"
        )
    key = (pattern, tuple(part_classes.values()))  # a re-registered name gets a new class
    if key not in _PER_LAYER_CLASSES:
        _PER_LAYER_CLASSES[key] = _per_layer_class(pattern, part_classes)
    return _PER_LAYER_CLASSES[key]


def _pattern_part_class(pattern: str, part: str) -> type[PositionEncoding]:
    """The class of one name of a pattern: a registered encoding that acts inside attention."""
    inside_attention = [name for name, cls in POSITION_ENCODINGS.items() if not cls.acts_at("input_embedding")]
    if part not in POSITION_ENCODINGS:
        what = "an empty name" if not part else f"{part!r} is not a registered position encoding"
        raise ValueError(
            f"position_encoding={pattern!r}: {what}; a per-layer pattern joins encodings that act inside attention "
            f"with {PATTERN_SEPARATOR!r}: {inside_attention}"
        )
    part_class = POSITION_ENCODINGS[part]
    if part_class.acts_at("input_embedding"):
        raise ValueError(
            f"position_encoding={pattern!r}: {part!r} adds positions to the input embeddings, so it cannot be chosen "
            f"per layer; per-layer patterns take encodings that act inside attention: {inside_attention}"
        )
    return part_class


def build_position_encoding(config) -> PositionEncoding:
    return position_encoding_class(config.position_encoding)(config)
