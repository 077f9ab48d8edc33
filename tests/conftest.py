"""Shared test helpers: the tiny "debug model" used everywhere (2 layers, hidden 32, GQA 4/2 heads)."""

import pytest
import torch

import hf_posenc  # noqa: F401  (registers the Auto classes)
from hf_posenc import PosEncConfig
from hf_posenc.model.encodings_hf_posenc import BUILTIN_POSITION_ENCODINGS, position_encoding_class

# Every built-in encoding, from the registry: a new built-in is tested everywhere with no edit here.
NAMES = list(BUILTIN_POSITION_ENCODINGS)
# Per-layer patterns, with the same guarantees: rotary and NoPE layers (Llama 4), a bias and a rotation, a learned
# bias shared by its layers. tiny_config gives a pattern at least one period of layers.
PATTERNS = ["rope+rope+rope+nope", "alibi+rope", "kerple_log+nope"]
ENCODINGS = NAMES + PATTERNS
# Those that add a bias to the attention scores (the FlexAttention score_mod / folded-mask paths).
BIAS_ENCODINGS = [name for name in ENCODINGS if position_encoding_class(name).acts_at("score_bias")]
# Those defined at any position (all but learned).
EXTRAPOLATING_ENCODINGS = [name for name in ENCODINGS if position_encoding_class(name).extrapolates]


def pattern_period(position_encoding) -> int:
    """Layers in one period of a per-layer pattern (1 for a single encoding)."""
    try:
        pattern = position_encoding_class(position_encoding).pattern
    except ValueError:  # a bad name: the config under test reports it
        return 1
    return len(pattern) if pattern else 1


def tiny_config(position_encoding="rope", **overrides) -> PosEncConfig:
    values = dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=max(2, pattern_period(position_encoding)),
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        position_encoding=position_encoding,
        t5_num_buckets=8,
        t5_max_distance=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    values.update(overrides)
    return PosEncConfig(**values)


def tiny_model(position_encoding="rope", attn_implementation="eager", seed=0, **overrides):
    from hf_posenc import PosEncForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(position_encoding, **overrides)
    model = PosEncForCausalLM(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def random_tokens(batch=2, length=12, vocab=101, seed=1) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=generator)


def cache_of(output):
    """The cache of a model output, under its transformers 5.24+ or older name."""
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


@pytest.fixture(params=ENCODINGS)
def encoding(request):
    return request.param
