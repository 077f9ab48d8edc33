"""Users register their own encoding and select it by name in the config."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from hf_posenc import PositionEncoding, available_position_encodings, register_position_encoding
from hf_posenc.model.encodings_hf_posenc import unregister_position_encoding
from tests.conftest import random_tokens, tiny_config


class KerpleLogBias(PositionEncoding):
    """Example user encoding: a learned logarithmic distance penalty per head (KERPLE-log style)."""

    def __init__(self, config):
        super().__init__(config)
        self.strength = nn.Parameter(torch.full((config.num_attention_heads,), 0.5))

    def score_bias(self, key_length, device, dtype):
        strength = self.strength.float()

        def bias(head, query_pos, key_pos):
            return -strength[head] * torch.log1p((query_pos - key_pos).clamp(min=0).float())

        return bias


class ScaledSinusoid(PositionEncoding):
    """Example user encoding acting at the embedding point."""

    def input_embedding(self, position_ids, dtype):
        return torch.sin(position_ids.float())[..., None].expand(*position_ids.shape, self.config.hidden_size).to(dtype) * 0.01


@pytest.fixture
def registered():
    register_position_encoding("user_log_bias", KerpleLogBias)
    register_position_encoding("scaled_sinusoid")(ScaledSinusoid)  # decorator form
    yield
    unregister_position_encoding("user_log_bias")
    unregister_position_encoding("scaled_sinusoid")


def test_registered_encoding_is_selected_by_name(registered):
    assert {"user_log_bias", "scaled_sinusoid"} <= set(available_position_encodings())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("user_log_bias"))
    assert isinstance(model.model.position_encoding, KerpleLogBias)
    ids = random_tokens()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        outputs[implementation] = model(ids).logits
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-4, rtol=1e-4)
    outputs["eager"].sum().backward()
    assert model.model.position_encoding.strength.grad.abs().sum() > 0  # the bias is trained


def test_registered_bias_encoding_matches_on_flex(registered):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("user_log_bias")).eval()
    ids = random_tokens()
    with torch.no_grad():
        eager = model(ids).logits
        model.set_attn_implementation("flex_attention")
        flex = model(ids).logits
    torch.testing.assert_close(eager, flex, atol=1e-4, rtol=1e-4)


def test_registered_embedding_encoding_runs(registered):
    model = AutoModelForCausalLM.from_config(tiny_config("scaled_sinusoid"))
    assert model(random_tokens()).logits.shape == (2, 12, 101)


def test_registry_refuses_silent_overwrite(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_position_encoding("user_log_bias", ScaledSinusoid)
    with pytest.raises(ValueError, match="already registered"):
        register_position_encoding("alibi", KerpleLogBias)
    register_position_encoding("user_log_bias", ScaledSinusoid, overwrite=True)


def test_registry_refuses_non_encodings_and_builtin_removal():
    with pytest.raises(TypeError, match="subclass of PositionEncoding"):
        register_position_encoding("linear_layer", nn.Linear)
    with pytest.raises(ValueError, match="built-in"):
        unregister_position_encoding("rope")
