"""Data-dependent position encodings: the fourth hook, which sees a layer's inputs, queries and keys.

The three other hooks of ``PositionEncoding`` depend on positions only, so the model computes them once per
forward. The Forgetting Transformer and Contextual Position Encoding decide positions from the content, so
they run inside each attention layer: ``PositionEncoding.data_dependent_bias(config, layer_idx)`` builds a
``DataDependentBias`` module per layer (its parameters are per layer), and the attention calls it once, in
place of the cache update. A subclass overrides three small methods:

* ``key_state(hidden_states)``: a per-token, per-head state to keep with the keys (FoX: ``log f_t``), or None;
* ``dense_bias(query, key, state, query_pos)``: the ``(batch, heads, q, kv)`` float32 bias for eager / SDPA;
* ``score_mod(query, key, state, query_offset)``: the same bias as a FlexAttention ``score_mod``, or None when
  the bias of one score cannot be computed from that score's indices (CoPE).

Per-token state rides in extra channels of the cached keys, so every cache operation (crop, beam-search
reorder, reset, batch selection, static preallocation) applies to it without any code here. It is stored as
per-token values (FoX: ``log f_t``, bounded) in the cache dtype and summed in float32 after reading, never as
running sums, whose magnitude grows with the length and whose low bits bf16 would drop.

Copied next to the weights by ``save_pretrained`` (remote code): imports only torch and the standard library.
"""

from __future__ import annotations

import torch
from torch import nn

# The attention backends whose mask is a dense additive / boolean tensor that a bias can be folded into.
DENSE_BACKENDS = ("eager", "sdpa")


def add_bias_to_mask(bias, mask, query_pos, key_pos, dtype):
    """Fold a ``(batch, heads, q, kv)`` float32 bias into the mask the model built for eager / SDPA.

    ``mask`` is None (causal only, SDPA's implicit case), boolean (True = attend) or additive float, shaped
    ``(batch, 1, q, kv)``. Returns an additive ``(batch, heads, q, kv)`` mask in ``dtype``.
    """
    blocked = torch.finfo(dtype).min
    if mask is None:
        causal = key_pos[None, :] <= query_pos[:, None]  # (q, kv)
        combined = bias.masked_fill(~causal, blocked)
    elif mask.dtype == torch.bool:
        combined = bias.masked_fill(~mask, blocked)
    else:
        combined = (mask.float() + bias).clamp(min=blocked)
    return combined.to(dtype)


class DataDependentBias(nn.Module):
    """Base class of the per-layer module of a data-dependent encoding (see the module docstring)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.scaling = config.head_dim**-0.5

    def key_state(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """``(batch, q, heads, width)`` state of each new token, kept with its key; None by default."""
        return None

    def dense_bias(self, query, key, state, query_pos) -> torch.Tensor:
        """``(batch, heads, q, kv)`` float32 bias. ``key`` holds every key (cache included), ``(batch, kv_heads,
        kv, head_dim)``; ``state`` is ``(batch, heads, kv, width)`` float32 or None; ``query_pos`` the
        ``(q,)`` indices of the queries among the keys."""
        raise NotImplementedError

    def score_mod(self, query, key, state, query_offset):
        """A FlexAttention ``score_mod(score, batch, head, q_idx, kv_idx)`` adding the bias, or None if the
        encoding cannot be expressed one score at a time. ``q_idx + query_offset`` indexes the keys."""
        return None

    # What ``explain`` returns, for figures: the bias by default.
    explained = "score bias"

    def explain(self, hidden_states, query, key) -> torch.Tensor:
        """``(batch, heads, q, q)`` float32 quantity this layer computes on a text without cache (for figures):
        the bias by default (FoX: the log decay), or whatever ``explained`` names (CoPE: the positions)."""
        state = self.key_state(hidden_states)
        if state is not None:
            state = state.float().permute(0, 2, 1, 3)  # (batch, q, heads, width) -> (batch, heads, q, width)
        return self.dense_bias(query, key, state, torch.arange(query.shape[-2], device=query.device))

    def forward(self, hidden_states, query, key, value, mask, score_mod, cache):
        """Update the cache and attach the bias. Returns ``(key, value, mask, score_mod)`` for the backend."""
        head_dim, groups = key.shape[-1], query.shape[1] // key.shape[1]
        state = self.key_state(hidden_states)
        if state is not None:
            state = self._heads_of_this_rank(state, query.shape[1])
            key = torch.cat((key, self._pack(state, groups, key.dtype)), dim=-1)
        query_offset = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        if isinstance(query_offset, torch.Tensor):  # a static cache's counter, which its update increments in place
            query_offset = query_offset.clone()
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if state is not None:
            key, state = key[..., :head_dim], self._unpack(key[..., head_dim:], groups)

        backend = self.config._attn_implementation
        name = self.config.position_encoding
        if backend == "flex_attention":
            own = self.score_mod(query, key, state, torch.as_tensor(query_offset, device=query.device))
            if own is None:
                raise ValueError(
                    f"position_encoding={name!r} cannot run with attn_implementation='flex_attention': its bias "
                    f"is not a function of one score's indices; use one of {list(DENSE_BACKENDS)}"
                )
            return key.contiguous(), value, mask, _compose(score_mod, own)
        if backend not in DENSE_BACKENDS:
            raise ValueError(
                f"position_encoding={name!r} adds a data-dependent bias to attention scores, which "
                f"attn_implementation={backend!r} cannot take; use 'eager', 'sdpa' or 'flex_attention'"
            )
        query_pos = torch.arange(query.shape[-2], device=query.device) + query_offset
        key_pos = torch.arange(key.shape[-2], device=query.device)
        bias = self.dense_bias(query, key, state, query_pos)
        return key, value, add_bias_to_mask(bias, mask, query_pos, key_pos, query.dtype), None

    @staticmethod
    def _heads_of_this_rank(state, local_heads):
        """Under tensor parallelism each rank computes one contiguous block of heads (the query projection is
        split by column, in rank order); the state is computed for all heads: keep this rank's block."""
        if state.shape[2] == local_heads:
            return state
        block = torch.distributed.get_rank() % (state.shape[2] // local_heads)
        return state.narrow(2, block * local_heads, local_heads)

    @staticmethod
    def _pack(state, groups, dtype):
        """(batch, q, heads, width) -> (batch, kv_heads, q, groups * width): extra key channels per kv head."""
        batch, length, _, width = state.shape
        state = state.reshape(batch, length, -1, groups * width)
        return state.transpose(1, 2).to(dtype)

    @staticmethod
    def _unpack(channels, groups):
        """(batch, kv_heads, kv, groups * width) -> (batch, heads, kv, width) float32; head = kv_head * groups + g."""
        batch, kv_heads, length, channels_per_head = channels.shape
        width = channels_per_head // groups
        channels = channels.float().reshape(batch, kv_heads, length, groups, width)
        return channels.permute(0, 1, 3, 2, 4).reshape(batch, kv_heads * groups, length, width)


def _compose(first, second):
    if first is None:
        return second

    def score_mod(score, batch, head, query_idx, key_idx):
        return second(first(score, batch, head, query_idx, key_idx), batch, head, query_idx, key_idx)

    return score_mod


class ForgetGateBias(DataDependentBias):
    """FoX (Lin et al., ICLR 2025): a per-head forget gate ``f_t = sigmoid(w_h . x_t + b_h)`` on the layer input.

    The score of query i for key j gets ``sum_{t in (j, i]} log f_t = c_i - c_j``, ``c`` the cumulative sum of
    ``log f``: a learned, content-dependent decay (``f_t`` near 1 keeps the past, near 0 forgets it). The gate
    values ``log f_t`` are the per-token state kept with the keys; ``c`` is summed in float32 over all keys.
    """

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.forget_gate = nn.Linear(config.hidden_size, config.num_attention_heads, bias=True)

    def key_state(self, hidden_states):
        log_forget = nn.functional.logsigmoid(self.forget_gate(hidden_states).float())  # (batch, q, heads)
        return log_forget.unsqueeze(-1)

    @staticmethod
    def cumulative(state):
        return state[..., 0].cumsum(-1)  # (batch, heads, kv): c_j = sum_{t <= j} log f_t

    def dense_bias(self, query, key, state, query_pos):
        cumulative = self.cumulative(state)
        at_queries = cumulative[..., query_pos]  # (batch, heads, q)
        return at_queries[..., :, None] - cumulative[..., None, :]  # (batch, heads, q, kv)

    def score_mod(self, query, key, state, query_offset):
        cumulative = self.cumulative(state)
        query_pos = torch.arange(query.shape[-2], device=query.device) + query_offset
        at_queries = cumulative[..., query_pos].contiguous()  # (batch, heads, q)

        def score_mod(score, batch, head, query_idx, key_idx):
            return score + at_queries[batch, head, query_idx] - cumulative[batch, head, key_idx]

        return score_mod


class ContextualPositionBias(DataDependentBias):
    """CoPE (Golovneva et al., 2024): positions counted by content-dependent gates.

    Gates ``g_ij = sigmoid(q_i . k_j / sqrt(d))`` (the scaled logits, as in the authors' code), position
    ``p_ij = sum_{t=j..i} g_it`` (a suffix sum over the keys of row i), clamped to ``cope_max_positions - 1``;
    the bias is ``q_i . e[p_ij]`` with ``e`` a learned table per layer (shared by heads), linearly interpolated
    between ``e[floor p]`` and ``e[ceil p]``. No state beyond the keys. A suffix sum over a whole row does not
    fit a FlexAttention ``score_mod`` (which sees one score at a time), so CoPE runs on eager and SDPA only.
    """

    explained = "contextual position p_ij"

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.max_positions = config.cope_max_positions
        self.position_embeddings = nn.Embedding(config.cope_max_positions, config.head_dim)

    def positions(self, query, key, query_pos) -> torch.Tensor:
        """``(batch, heads, q, kv)`` contextual positions p_ij, clamped to the table."""
        keys = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # (batch, heads, kv, head_dim)
        logits = torch.matmul(query.float(), keys.float().transpose(-1, -2)) * self.scaling  # (batch, heads, q, kv)
        key_pos = torch.arange(key.shape[-2], device=key.device)
        causal = key_pos[None, :] <= query_pos[:, None]  # (q, kv): only keys up to the query are counted
        gates = torch.sigmoid(logits) * causal
        return gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.max_positions - 1)  # suffix sums over keys

    def explain(self, hidden_states, query, key):
        return self.positions(query, key, torch.arange(query.shape[-2], device=query.device))

    def dense_bias(self, query, key, state, query_pos):
        positions = self.positions(query, key, query_pos)
        per_position = torch.matmul(query.float(), self.position_embeddings.weight.float().t())  # (batch, heads, q, P)
        lower = positions.floor()
        below = per_position.gather(-1, lower.long())
        above = per_position.gather(-1, positions.ceil().long())
        return below + (positions - lower) * (above - below)
