"""A Llama-style decoder whose position encoding is chosen by ``config.position_encoding``.

Token embedding, N x (pre-RMSNorm, grouped-query attention, pre-RMSNorm, SwiGLU MLP), final RMSNorm, LM head.
Position information is computed once per forward in ``PosEncModel`` (from ``position_ids``, which come from
the attention mask and the cache length) and passed to every layer:

* an additive embedding (sinusoidal, learned) is added to the token embeddings;
* a rotation (rope) reaches each attention as ``(cos, sin)``;
* a score bias (alibi, t5_bias) is folded into the float mask for eager / SDPA, or becomes a FlexAttention
  ``score_mod`` over a block mask (no L x L tensor at all);
* a per-layer pattern (``"rope+rope+rope+nope"``) computes the above once for each of its encodings and hands
  each layer its own encoding's rotation, mask and score_mod.

Attention runs through transformers' attention interface, so ``attn_implementation`` picks the backend.
This file is copied next to the weights by ``save_pretrained``: it imports only torch, transformers and its
flat siblings. Why it is longer than 400 lines: it is the one modeling file of remote code, as transformers'
own ``modeling_llama.py`` is (building blocks, position plumbing for every backend, three heads); a split would
be more flat siblings that every saved folder has to carry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.integrations.flex_attention import compile_friendly_flex_attention
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .configuration_hf_posenc import PosEncConfig
from .encodings_hf_posenc import build_position_encoding, position_encoding_class

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache keyword `past_key_values` to `cache`; follow whichever is installed.
CACHE_KWARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
OUTPUT_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

# The cache keyword, as Llama takes it: `past_key_values` is renamed to `cache` (both at once is an error). From 5.24
# the old name warns that it goes away; before, it is the current name, and a version already reached keeps
# transformers' rename silent.
accept_cache_keyword = deprecate_kwarg(
    "past_key_values", "5.40.0" if CACHE_KWARG == "cache" else "5.0.0", new_name="cache", raise_if_both_names=True
)


# What `auto_map` in a saved config.json points at (the flat files save_pretrained copies beside the weights).
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_hf_posenc.PosEncConfig",
    "AutoModel": "modeling_hf_posenc.PosEncModel",
    "AutoModelForCausalLM": "modeling_hf_posenc.PosEncForCausalLM",
    "AutoModelForSequenceClassification": "modeling_hf_posenc.PosEncForSequenceClassification",
}


class PosEncRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class PosEncMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: PosEncConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((second, first), dim=-1)


def prepare_rotary(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Once per forward: (batch, q, head_dim) cos/sin -> (batch, 1, q, head_dim) cos and sign-folded sin.

    ``rotate_half(x) * sin == swap_halves(x) * signed_sin`` bit for bit (only signs move), so every layer
    saves the negation of its queries and keys: the sign is applied once, to the small table.
    """
    first, second = sin.chunk(2, dim=-1)
    signed_sin = torch.cat((-first, second), dim=-1)
    return cos.unsqueeze(1), signed_sin.unsqueeze(1)  # broadcast over heads


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, computed as in Llama to the bit, with one temporary fewer."""
    rotated = swap_halves(x).mul_(signed_sin)  # a fresh tensor from cat: safe to update in place
    return rotated.add_(x * cos)


def apply_rotary(query, key, cos, sin):
    """Rotate (batch, heads, q, head_dim) queries and keys; cos/sin are (batch, q, head_dim)."""
    cos, signed_sin = prepare_rotary(cos, sin)
    return rotate(query, cos, signed_sin), rotate(key, cos, signed_sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim)."""
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, seq, head_dim = hidden_states.shape
    expanded = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, seq, head_dim)
    return expanded.reshape(batch, kv_heads * n_rep, seq, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The reference: explicit softmax(q k^T * scale + mask) v; the only backend returning the weights."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q, kv)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (batch, q, heads, head_dim)
    return output, weights


def flex_attention_with_score_mod(module, query, key, value, block_mask, score_mod, scaling, dropout=0.0):
    """FlexAttention with an encoding's score bias as ``score_mod``: the bias is never materialized."""
    if dropout > 0:
        raise ValueError("attn_implementation='flex_attention' does not support attention_dropout > 0 in training")
    extra = {}
    if query.is_cuda and module.flex_kernel_options:  # Triton block sizes; the CPU kernel takes none
        extra["kernel_options"] = dict(module.flex_kernel_options)
    output = compile_friendly_flex_attention(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=block_mask,
        enable_gqa=query.shape[1] != key.shape[1],
        scale=scaling,
        training=module.training,
        **extra,
    )
    return output.transpose(1, 2).contiguous(), None  # (batch, q, heads, head_dim)


def heads_of_this_rank(mask: torch.Tensor | None, local_heads: int) -> torch.Tensor | None:
    """A per-head (batch, heads, q, kv) mask cut to the heads this rank computes under tensor parallelism.

    The tensor-parallel plan splits the query projection by column, so each rank holds one contiguous block of
    heads, in rank order; the score bias is built for all heads at model level, once per forward.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] in (1, local_heads):  # BlockMask: flex
        return mask
    blocks = mask.shape[1] // local_heads
    block = torch.distributed.get_rank() % blocks
    return mask.narrow(1, block * local_heads, local_heads)  # (batch, local_heads, q, kv)


class PosEncAttention(nn.Module):
    def __init__(self, config: PosEncConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        encoding_class = position_encoding_class(config.position_encoding)
        self.flex_kernel_options = encoding_class.class_of_layer(layer_idx).flex_kernel_options  # a pattern: this layer's
        # Data-dependent encodings (fox, cope) own a module per layer: it sees this layer's inputs, queries and keys.
        self.data_dependent_bias = encoding_class.data_dependent_bias(config, layer_idx)

    def forward(self, hidden_states, attention_mask, rotary=None, score_mod=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        # (batch, q, hidden) -> (batch, q, heads, head_dim) -> (batch, heads, q, head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        if rotary is not None:  # ((cos, signed_sin) of the queries, of the keys) from prepare_rotary
            query, key = rotate(query, *rotary[0]), rotate(key, *rotary[1])
        if self.data_dependent_bias is not None:  # it updates the cache itself: it may keep state with the keys
            key, value, attention_mask, score_mod = self.data_dependent_bias(
                hidden_states, query, key, value, attention_mask, score_mod, cache
            )
        elif cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        dropout = self.config.attention_dropout if self.training else 0.0
        attention_mask = heads_of_this_rank(attention_mask, query.shape[1])
        if score_mod is not None:
            output, weights = flex_attention_with_score_mod(
                self, query, key, value, attention_mask, score_mod, self.scaling, dropout
            )
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            output, weights = attention_interface(
                self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
            )
        output = output.reshape(*input_shape, -1).contiguous()  # (batch, q, heads * head_dim)
        return self.o_proj(output), weights


class PosEncDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: PosEncConfig, layer_idx: int):
        super().__init__()
        self.self_attn = PosEncAttention(config, layer_idx)
        self.mlp = PosEncMLP(config)
        self.input_layernorm = PosEncRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = PosEncRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, rotary=None, score_mod=None, cache=None, **kwargs):
        attended, _ = self.self_attn(
            self.input_layernorm(hidden_states), attention_mask, rotary, score_mod, cache, **kwargs
        )
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


def positions_from_attention_mask(attention_mask, query_offset, query_length, device) -> torch.LongTensor:
    """Positions of the new tokens: counted over non-padding tokens when a 2D mask is given, else arange.

    Left-padded rows thus get the same positions as unpadded ones. Returns (batch or 1, q).
    """
    if attention_mask is not None and attention_mask.ndim == 2:
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 0)
        return positions[:, -query_length:]
    return (torch.arange(query_length, device=device) + query_offset).unsqueeze(0)


def fold_bias_into_mask(bias, mask, dtype):
    """Combine a (batch or 1, heads, q, kv) float32 bias with the mask transformers built for eager / SDPA.

    ``mask`` is None (SDPA would have used is_causal, or no mask for a single query), boolean (True = attend)
    or additive float, shaped (batch, 1, q, kv). A bias shared by the batch stays (1, heads, q, kv) unless the
    mask itself is per example (padding).
    """
    blocked = torch.finfo(dtype).min
    if mask is None:
        query_length, key_length = bias.shape[-2:]
        # (q, kv) as SDPA reads a missing mask: one query sees every key; several are causal from the top left
        causal = torch.ones(query_length, key_length, dtype=torch.bool, device=bias.device)
        causal = causal if query_length == 1 else causal.tril()
        combined = bias.masked_fill(~causal, blocked)
    elif mask.dtype == torch.bool:
        combined = bias.masked_fill(~mask, blocked)
    else:
        combined = (mask.float() + bias).clamp(min=blocked)
    return combined.to(dtype)


def key_positions_with_cache(position_ids, cache, attention_mask, query_offset: int) -> torch.LongTensor:
    """Positions of every key the attention sees, the cached ones first: (batch or 1, cached + q).

    The positions of cached keys are kept on the cache (so packed or custom positions stay exact while
    decoding); a cache filled elsewhere falls back to what positions derived from the mask would have been.
    """
    query_length = position_ids.shape[-1]
    if cache is None:
        return position_ids
    stored = getattr(cache, "hf_posenc_key_positions", None)
    if stored is None or stored.shape[-1] < query_offset or stored.shape[0] not in (1, position_ids.shape[0]):
        full_mask = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        if full_mask is not None and full_mask.shape[-1] != query_offset + query_length:
            full_mask = None
        stored = positions_from_attention_mask(full_mask, 0, query_offset + query_length, position_ids.device)
    previous = stored[..., :query_offset]
    batch = max(previous.shape[0], position_ids.shape[0])
    # (batch or 1, cached) + (batch or 1, q) -> (batch or 1, cached + q)
    keys = torch.cat([previous.expand(batch, -1), position_ids.expand(batch, -1)], dim=-1)
    cache.hf_posenc_key_positions = keys
    return keys


def visible_key_positions(key_positions, key_length: int, key_offset: int) -> torch.LongTensor:
    """The key positions of the slots the mask covers: a sliding window starts at ``key_offset``; a static
    cache has ``key_length`` slots, those not yet written (padded with 0 here) are masked anyway."""
    visible = key_positions[..., key_offset : key_offset + key_length]
    missing = key_length - visible.shape[-1]
    return nn.functional.pad(visible, (0, missing)) if missing > 0 else visible


class BiasPositions(NamedTuple):
    """What every score bias of one forward reads, found once per forward (``PosEncModel._bias_positions``)."""

    query_pos: torch.LongTensor  # (batch or 1, q)
    key_pos: torch.LongTensor  # (batch or 1, kv): the positions of the keys the mask covers
    distance_bound: int  # an upper bound on query minus key position (the length of by-distance tables)
    derived: bool  # positions derived from the attention mask, not given by the caller
    contiguous: bool  # positions are the indices themselves
    index_offset: int  # the first query's index among the keys


class PosEncPreTrainedModel(PreTrainedModel):
    config_class = PosEncConfig
    config: PosEncConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PosEncDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # What capture_outputs records for output_hidden_states / output_attentions (attention weights: eager only).
    _can_record_outputs = {"hidden_states": PosEncDecoderLayer, "attentions": PosEncAttention}

    def save_pretrained(self, save_directory, *args, **kwargs):
        # A saved folder should load with every Auto class, whichever head was saved: list them all.
        if self._auto_class is not None:
            self.config.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # Linear / Embedding: normal(initializer_range); RMSNorm: ones
        if callable(getattr(module, "init_buffers", None)):
            module.init_buffers()  # deterministic buffers (RoPE frequencies, ALiBi slopes) after meta-device loads
        if callable(getattr(module, "init_parameters", None)):
            module.init_parameters()  # an encoding's own parameters (Kerple's r1/r2, FIRE's c and L)


class PosEncModel(PosEncPreTrainedModel):
    def __init__(self, config: PosEncConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.position_encoding = build_position_encoding(config)
        self.layers = nn.ModuleList(PosEncDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = PosEncRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self._warned_beyond_training = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_position_embeddings(self) -> nn.Embedding:
        """The learned position table (transformers' position-embedding API); other encodings have none."""
        table = getattr(self.position_encoding, "position_embeddings", None)
        if not isinstance(table, nn.Embedding):
            raise NotImplementedError(
                f"position_encoding={self.config.position_encoding!r} has no position-embedding table "
                "(only 'learned' has one)"
            )
        return table

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        """Resize the learned table to ``new_num_position_embeddings`` rows: kept rows keep their values, new
        rows are initialized like the table was; ``max_position_embeddings`` follows."""
        if isinstance(new_num_position_embeddings, bool) or not isinstance(new_num_position_embeddings, int) or (
            new_num_position_embeddings < 1
        ):
            raise ValueError(f"new_num_position_embeddings must be an integer >= 1, got {new_num_position_embeddings!r}")
        old = self.get_position_embeddings()
        new = nn.Embedding(new_num_position_embeddings, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.normal_(mean=0.0, std=self.config.initializer_range)
            kept = min(old.num_embeddings, new_num_position_embeddings)
            new.weight[:kept] = old.weight[:kept]
        self.position_encoding.position_embeddings = new
        self.position_encoding.max_positions = new_num_position_embeddings
        self.config.max_position_embeddings = new_num_position_embeddings

    @accept_cache_keyword
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        # Not merge_with_config_defaults: it would turn the cache on in training, and a cache costs SDPA its
        # implicit causal mask (the flash kernel).
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        query_length = inputs_embeds.shape[1]
        query_offset = cache.get_query_offset(0) if cache is not None else 0
        # Positions we derive ourselves are never packed sequences, so the mask builder need not look for packing:
        # that search syncs with the device each forward and, under torch.compile, forces a dense mask (no flash).
        caller_position_ids = position_ids
        if position_ids is None:
            position_ids = positions_from_attention_mask(
                attention_mask, query_offset, query_length, inputs_embeds.device
            )

        self._report_positions_beyond_training(position_ids, caller_position_ids is None, query_offset + query_length)
        encoding = self.position_encoding
        hidden_states = inputs_embeds
        added = encoding.input_embedding(position_ids, inputs_embeds.dtype)
        if added is not None:
            hidden_states = hidden_states + added
        if self._causal_is_implicit(attention_mask, cache, caller_position_ids):
            mask = None  # SDPA applies the causal mask itself (is_causal), with the flash kernel
        else:
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=caller_position_ids,
                **{CACHE_KWARG: cache},
            )

        # Position information once per forward for each encoding in use (one, or a per-layer pattern's parts);
        # every layer gets its own encoding's (rotary, mask, score_mod).
        parts, part_of_layer = encoding.layer_plan(len(self.layers))
        bias_positions = None  # what every score bias needs (key positions, a distance bound), found once
        per_part = []
        for part in parts:
            rotary = part.rotary(hidden_states, position_ids)
            if rotary is not None:  # (cos, sin), or (cos, sin) of the queries then of the keys (xpos scales them apart)
                query_rotary = prepare_rotary(*rotary[:2])
                rotary = (query_rotary, prepare_rotary(*rotary[2:]) if len(rotary) == 4 else query_rotary)
            part_mask, score_mod = mask, None
            if type(part).acts_at("score_bias"):  # the encoding biases attention scores
                if bias_positions is None:
                    bias_positions = self._bias_positions(
                        position_ids, caller_position_ids is None, attention_mask, cache, query_offset, query_length
                    )
                part_mask, score_mod = self._attach_score_bias(part, mask, bias_positions, inputs_embeds)
            per_part.append((rotary, part_mask, score_mod))

        for layer, part_index in zip(self.layers, part_of_layer):
            rotary, layer_mask, score_mod = per_part[part_index]
            # The mask goes by position: reentrant checkpointing passes only positional tensors through its
            # own autograd node, and a learned bias folded into the mask must reach its parameters once per layer.
            hidden_states = layer(hidden_states, layer_mask, rotary=rotary, score_mod=score_mod, cache=cache, **kwargs)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{OUTPUT_CACHE_FIELD: cache if use_cache else None}
        )

    def _report_positions_beyond_training(self, position_ids, derived: bool, index_bound: int) -> None:
        """Warn once per model when a position reaches the trained context length: allowed (length
        generalization is what this model is for), but results there are extrapolation."""
        trained = self.config.trained_context_length
        if trained is None or self._warned_beyond_training or torch.compiler.is_compiling():
            return
        if derived and index_bound <= trained:
            return  # derived positions never exceed their index: no need to look at the tensor (a device sync)
        largest = int(position_ids.max())
        if largest >= trained:
            self._warned_beyond_training = True
            logger.warning(
                f"position {largest} is beyond the trained context length of {trained} tokens "
                f"(config.original_max_position_embeddings); position_encoding={self.config.position_encoding!r} "
                "is extrapolating from here on. This warning is shown once."
            )

    def _causal_is_implicit(self, attention_mask, cache, caller_position_ids) -> bool:
        """True when SDPA's own ``is_causal`` is the whole mask: no padding, no cache, no packed positions.

        transformers returns no mask in this case too, except while tracing (torch.compile) in some releases
        (5.17 does, 5.24 does not), where it builds a dense boolean mask and SDPA loses the flash kernel.
        """
        return (
            self.config._attn_implementation == "sdpa"
            and attention_mask is None
            and cache is None
            and caller_position_ids is None
        )

    def _bias_positions(self, position_ids, derived, attention_mask, cache, query_offset, query_length) -> BiasPositions:
        """The positions every score bias of this forward reads (cached keys included), found once per forward."""
        if cache is not None:
            key_length, key_offset = cache.get_mask_sizes(query_length, 0)
        else:
            key_length, key_offset = query_length, 0
        key_pos = key_positions_with_cache(position_ids, cache, attention_mask, query_offset)
        contiguous = derived and attention_mask is None  # positions are the indices themselves
        return BiasPositions(
            query_pos=position_ids,
            key_pos=visible_key_positions(key_pos, key_length, key_offset),
            distance_bound=self._distance_bound(position_ids, key_pos, key_length, contiguous),
            derived=derived,
            contiguous=contiguous,
            index_offset=query_offset - key_offset,
        )

    def _attach_score_bias(self, encoding, mask, positions: BiasPositions, inputs_embeds):
        """Add ``encoding``'s score bias, a function of query and key *positions*: into the eager / SDPA mask, or
        as a FlexAttention score_mod. Returns ``(mask, score_mod)``.

        Positions shared by the batch give a (1, heads, q, kv) bias broadcast over the batch; per-example
        positions (padding, packed rows) a per-example one. FlexAttention never builds it: the score_mod looks
        the positions up (or, for plain contiguous positions, uses the indices themselves).
        """
        device = inputs_embeds.device
        bias_fn = encoding.score_bias(positions.distance_bound, device, inputs_embeds.dtype)
        if bias_fn is None:
            return mask, None
        query_pos, key_pos = positions.query_pos, positions.key_pos

        implementation = self.config._attn_implementation
        if implementation == "flex_attention":
            if positions.derived:
                # Positions derived from the mask: the indices, up to each row's padding. Relative (distance-only)
                # biases are the same either way, and index arithmetic keeps the kernel free of lookups (a per-row
                # lookup here breaks the CPU FlexAttention compiler on recompiles, torch 2.13).
                offset = torch.as_tensor(positions.index_offset, device=device)
                return mask, positional_score_mod(bias_fn, offset[None, None], torch.zeros_like(offset)[None, None], True)
            return mask, positional_score_mod(bias_fn, query_pos, key_pos, positions.contiguous)
        if implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"position_encoding={self.config.position_encoding!r} adds a bias to attention scores, which "
                f"attn_implementation={implementation!r} cannot take; use 'eager', 'sdpa' or 'flex_attention'"
            )
        heads = torch.arange(self.config.num_attention_heads, device=device)
        # (1, heads, 1, 1), (batch or 1, 1, q, 1), (batch or 1, 1, 1, kv) broadcast to (batch or 1, heads, q, kv)
        bias = bias_fn(heads[None, :, None, None], query_pos[:, None, :, None], key_pos[:, None, None, :])
        return fold_bias_into_mask(bias.float(), mask, inputs_embeds.dtype), None

    @staticmethod
    def _distance_bound(query_pos, key_pos, key_length: int, contiguous: bool) -> int:
        """An upper bound on query minus key position, for encodings that tabulate the bias by distance.

        Positions derived from the mask never exceed their index, so ``key_length`` bounds them with no device
        sync; custom positions (packed, gapped, randomized) are measured, except under torch.compile, where a
        table stays ``key_length`` long and farther distances share its last entry.
        """
        if contiguous or torch.compiler.is_compiling():
            return key_length
        return max(key_length, int(query_pos.max() - key_pos.min()) + 1)


def positional_score_mod(bias_fn, query_pos, key_pos, contiguous: bool):
    """A FlexAttention score_mod adding ``bias_fn(head, query position, key position)``; no L x L tensor."""
    if contiguous:  # positions are the indices, shifted by the first query's and the first key's position
        query_start, key_start = query_pos[0, 0], key_pos[0, 0]

        def score_mod(score, batch, head, query_idx, key_idx):
            return score + bias_fn(head, query_idx + query_start, key_idx + key_start)

        return score_mod
    batch_size = max(query_pos.shape[0], key_pos.shape[0])
    per_example = batch_size > 1
    query_pos = query_pos.expand(batch_size, -1).contiguous()  # (batch or 1, q)
    key_pos = key_pos.expand(batch_size, -1).contiguous()  # (batch or 1, kv)

    def score_mod(score, batch, head, query_idx, key_idx):
        row = batch if per_example else 0
        return score + bias_fn(head, query_pos[row, query_idx], key_pos[row, key_idx])

    return score_mod


class PosEncForCausalLM(PosEncPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: PosEncConfig):
        super().__init__(config)
        self.model = PosEncModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_position_embeddings(self) -> nn.Embedding:
        return self.model.get_position_embeddings()

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        self.model.resize_position_embeddings(new_num_position_embeddings)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @accept_cache_keyword
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # Only compute the logits that are needed (generate asks for the last position only)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{OUTPUT_CACHE_FIELD: getattr(outputs, OUTPUT_CACHE_FIELD)},
        )


class PosEncForSequenceClassification(PosEncPreTrainedModel):
    """Classify a sequence from the hidden state of its last non-padding token."""

    def __init__(self, config: PosEncConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = PosEncModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    def get_position_embeddings(self) -> nn.Embedding:
        return self.model.get_position_embeddings()

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        self.model.resize_position_embeddings(new_num_position_embeddings)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    @accept_cache_keyword
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)  # (batch, seq, num_labels)
        batch_size = logits.shape[0]
        last_token = self._last_token_index(input_ids, attention_mask, batch_size, logits.device)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_token]  # (batch, num_labels)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{OUTPUT_CACHE_FIELD: getattr(outputs, OUTPUT_CACHE_FIELD)},
        )

    def _last_token_index(self, input_ids, attention_mask, batch_size, device):
        """Rightmost real token of each row, for left and right padding alike."""
        if attention_mask is not None and attention_mask.ndim == 2:
            real = attention_mask.to(device, torch.int32)
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(device, torch.int32)
        elif batch_size == 1 or input_ids is None:
            return torch.full((batch_size,), -1, device=device, dtype=torch.long)
        else:
            raise ValueError(
                "PosEncForSequenceClassification needs an attention_mask or config.pad_token_id to find the last "
                "token of each row when batch size > 1"
            )
        token_index = torch.arange(real.shape[-1], device=device, dtype=torch.int32)
        return (token_index * real).argmax(-1)


__all__ = [
    "PosEncPreTrainedModel",
    "PosEncModel",
    "PosEncForCausalLM",
    "PosEncForSequenceClassification",
]
