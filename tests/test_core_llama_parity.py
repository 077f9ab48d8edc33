"""With position_encoding='rope' the model is numerically a Llama: from_llama gives the same logits."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_posenc import PosEncForCausalLM, from_llama
from tests.conftest import ENCODINGS, pattern_period, random_tokens


def tiny_llama(seed=0, **overrides):
    values = dict(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0,
    )
    values.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**values)).eval()
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True},
    {"num_key_value_heads": 1, "head_dim": 16},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
], ids=["plain", "tied", "mqa-head_dim", "linear-rope", "yarn-rope"])
def test_logits_equal_llama(overrides):
    llama = tiny_llama(**overrides)
    ids = random_tokens(batch=2, length=20)
    mask = torch.ones_like(ids)
    converted = from_llama(llama)
    assert isinstance(converted, PosEncForCausalLM)
    assert converted.config.position_encoding == "rope"
    with torch.no_grad():
        torch.testing.assert_close(converted(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)


def test_from_a_saved_folder(tmp_path):
    llama = tiny_llama()
    llama.save_pretrained(tmp_path)
    ids = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(from_llama(str(tmp_path))(ids).logits,
                                   llama(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", [name for name in ENCODINGS if name != "rope"])
def test_same_weights_under_another_encoding(encoding):
    llama = tiny_llama(num_hidden_layers=max(2, pattern_period(encoding)))
    # xpos is RoPE plus a decay of a few percent over 12 tokens at its default scale base: make it large
    swapped = from_llama(llama, position_encoding=encoding, **({"xpos_scale_base": 1.0} if encoding == "xpos" else {}))
    assert swapped.config.position_encoding == encoding
    torch.testing.assert_close(swapped.model.layers[1].mlp.up_proj.weight, llama.model.layers[1].mlp.up_proj.weight)
    ids = random_tokens()
    with torch.no_grad():
        assert (swapped(ids).logits - llama(ids).logits).abs().max() > 1e-3  # the encoding matters


def test_converted_model_round_trips(tmp_path):
    converted = from_llama(tiny_llama(), position_encoding="alibi")
    converted.save_pretrained(tmp_path)
    loaded = PosEncForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, converted(ids).logits)


def test_refusals():
    with pytest.raises(ValueError, match="attention_bias=False"):
        from_llama(tiny_llama(attention_bias=True))
    with pytest.raises(ValueError, match="change weight shapes"):
        from_llama(tiny_llama(), intermediate_size=48)
    with pytest.raises(ValueError, match="position_encoding"):
        from_llama(tiny_llama(), position_encoding="no_such_encoding")
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        from_llama(torch.nn.Linear(2, 2))
