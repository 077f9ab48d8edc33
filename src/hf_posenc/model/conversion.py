"""Convert a Llama-architecture checkpoint into an hf_posenc model, optionally with another encoding."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .configuration_hf_posenc import PosEncConfig
from .encodings_hf_posenc import position_encoding_class
from .modeling_hf_posenc import PosEncForCausalLM

if TYPE_CHECKING:  # importing transformers' Llama costs seconds: only from_llama needs it
    from transformers import LlamaConfig, LlamaForCausalLM

# LlamaConfig fields that carry over one to one.
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "attention_dropout",
    "tie_word_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "use_cache",
)


def config_from_llama(llama_config: LlamaConfig, **config_overrides) -> PosEncConfig:
    """A PosEncConfig with the Llama's shape and RoPE parameters, then ``config_overrides`` applied."""
    if getattr(llama_config, "model_type", None) != "llama":
        raise ValueError(f"from_llama needs a Llama-architecture model, got model_type={llama_config.model_type!r}")
    for field, unsupported in (("attention_bias", True), ("mlp_bias", True)):
        if getattr(llama_config, field, False) == unsupported:
            raise ValueError(f"from_llama supports {field}=False only (hf_posenc has no biases), got {unsupported}")
    if llama_config.hidden_act != "silu":
        raise ValueError(f"from_llama supports hidden_act='silu' only, got {llama_config.hidden_act!r}")
    values = {field: getattr(llama_config, field) for field in _SHARED_FIELDS if hasattr(llama_config, field)}
    values["position_encoding"] = "rope"
    values.update(config_overrides)
    if position_encoding_class(values["position_encoding"]).uses_rope:  # a ValueError for an unknown encoding
        values.setdefault("rope_parameters", dict(llama_config.rope_parameters or {}))
    return PosEncConfig(**values)  # another encoding drops the Llama's RoPE parameters: it has no use for them


def from_llama(model_or_path: LlamaForCausalLM | str | os.PathLike, **config_overrides) -> PosEncForCausalLM:
    """Turn a Llama-architecture causal LM into ``PosEncForCausalLM``.

    Args:
        model_or_path: a ``LlamaForCausalLM`` instance, or a local folder / Hub id that loads as one.
        **config_overrides: ``PosEncConfig`` fields to change, e.g. ``position_encoding="nope"`` to study the
            same weights under another encoding. Fields that change weight shapes are refused.

    With no overrides the result computes the same logits as the Llama (same weights, RoPE, masks).
    Weights an encoding adds (a learned position table, the T5 bias table, FoX's gates) are freshly initialized.
    """
    from transformers import LlamaForCausalLM

    llama = model_or_path
    if not isinstance(llama, torch.nn.Module):
        llama = LlamaForCausalLM.from_pretrained(model_or_path)
    if not isinstance(llama, LlamaForCausalLM):
        raise ValueError(f"from_llama needs a LlamaForCausalLM, got {type(llama).__name__}")
    config = config_from_llama(llama.config, **config_overrides)
    config._attn_implementation = llama.config._attn_implementation
    model = PosEncForCausalLM(config).to(dtype=llama.dtype)

    state = llama.state_dict()
    expected = model.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if mismatched:
        raise ValueError(
            f"config_overrides {sorted(config_overrides)} change weight shapes ({mismatched[:3]} ...); "
            "only overrides that keep the Llama's shapes can reuse its weights"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
    encoding_weights = (".position_encoding.", ".data_dependent_bias.")  # what the encoding adds: freshly initialized
    missing = [k for k in missing if not any(part in k for part in encoding_weights) and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"Llama weights do not map onto hf_posenc: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(device=llama.device)
