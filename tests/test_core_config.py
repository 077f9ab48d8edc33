"""PosEncConfig: defaults, round trips, RoPE parameters through transformers' utilities, clear errors."""

import json
import re

import pytest
from transformers import AutoConfig

from hf_posenc import PosEncConfig
from hf_posenc.model.encodings_hf_posenc import position_encoding_class
from tests.conftest import ENCODINGS, NAMES, tiny_config


def uses_rope(encoding: str) -> bool:
    return position_encoding_class(encoding).uses_rope


def test_defaults_are_a_llama_with_rope():
    config = PosEncConfig()
    assert config.model_type == "hf_posenc"
    assert config.position_encoding == "rope"
    assert config.num_key_value_heads == config.num_attention_heads
    assert config.head_dim == config.hidden_size // config.num_attention_heads
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize("position_encoding", ENCODINGS)
def test_save_and_load_round_trip(tmp_path, position_encoding):
    config = tiny_config(position_encoding, tie_word_embeddings=True, rope_theta=5000.0 if uses_rope(position_encoding) else None)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PosEncConfig)
    for field in ("position_encoding", "tie_word_embeddings", "num_key_value_heads", "t5_num_buckets", "head_dim"):
        assert getattr(loaded, field) == getattr(config, field)
    if uses_rope(position_encoding):
        assert loaded.rope_parameters == config.rope_parameters
        assert loaded.rope_parameters["rope_theta"] == 5000.0
    else:  # RoPE parameters exist only where RoPE is used
        assert not hasattr(loaded, "rope_parameters")
        assert "rope_parameters" not in loaded.to_dict()


def test_rope_scaling_is_merged_into_rope_parameters():
    config = tiny_config(rope_theta=500.0, rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert config.rope_parameters == {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0}
    legacy = tiny_config(rope_scaling={"type": "dynamic", "factor": 2.0})
    assert legacy.rope_parameters["rope_type"] == "dynamic"
    yarn = tiny_config(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    assert yarn.rope_parameters["original_max_position_embeddings"] == yarn.max_position_embeddings


def test_sinusoidal_scale_defaults_to_embedding_rms():
    assert tiny_config("sinusoidal", initializer_range=0.02).effective_sinusoidal_scale == pytest.approx(0.02 * 2**0.5)
    assert tiny_config("sinusoidal", sinusoidal_scale=1.0).effective_sinusoidal_scale == 1.0


BAD_VALUES = [
    ({"position_encoding": "absolute"}, "position_encoding", "'absolute'"),
    ({"hidden_size": 0}, "hidden_size", "0"),
    ({"vocab_size": 10.5}, "vocab_size", "10.5"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers", "'2'"),
    ({"num_attention_heads": 3}, "hidden_size must be divisible by num_attention_heads", "3"),
    ({"num_key_value_heads": 3}, "num_key_value_heads", "3"),
    ({"max_position_embeddings": -1}, "max_position_embeddings", "-1"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps", "0.0"),
    ({"initializer_range": float("nan")}, "initializer_range", "nan"),
    ({"attention_dropout": 1.5}, "attention_dropout", "1.5"),
    ({"hidden_act": "gelu"}, "hidden_act", "'gelu'"),
    ({"t5_num_buckets": 1}, "t5_num_buckets", "1"),
    ({"t5_max_distance": 4}, "t5_max_distance", "4"),
    ({"sinusoidal_scale": -1.0}, "sinusoidal_scale", "-1.0"),
    ({"rope_theta": -5.0}, "rope_theta", "-5.0"),
    ({"rope_scaling": "linear"}, "rope_scaling", "'linear'"),
    ({"rope_scaling": {"rope_type": "ntk-magic", "factor": 2.0}}, "rope_type", "'ntk-magic'"),
    ({"rope_scaling": {"rope_type": "linear"}}, "factor", "linear"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "factor", "0.5"),
    ({"pad_token_id": -3}, "pad_token_id", "-3"),
    ({"head_dim": 7, "position_encoding": "rope"}, "head_dim must be even", "7"),
]


@pytest.mark.parametrize("overrides, field, value", BAD_VALUES, ids=[str(v[0]) for v in BAD_VALUES])
def test_invalid_values_name_field_and_value(overrides, field, value):
    with pytest.raises(ValueError) as error:
        tiny_config(**overrides)
    message = str(error.value)
    assert field in message
    assert value in message


def test_error_lists_allowed_encodings():
    with pytest.raises(ValueError, match=re.escape(str(NAMES))):
        tiny_config("absolute")


@pytest.mark.parametrize("position_encoding", [e for e in ENCODINGS if not uses_rope(e)])
@pytest.mark.parametrize(
    "option",
    [{"rope_theta": 500.0}, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}],
    ids=["rope_theta", "rope_scaling", "rope_parameters"],
)
def test_rope_options_on_another_encoding_are_an_error(position_encoding, option):
    with pytest.raises(ValueError, match=rf"{next(iter(option))}=.*is a RoPE option.*{re.escape(repr(position_encoding))} does not use RoPE"):
        tiny_config(position_encoding, **option)


def test_configs_saved_with_the_default_rope_parameters_still_load(tmp_path):
    """Before RoPE parameters became RoPE-only, every config.json carried the default ones."""
    config = tiny_config("alibi")
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.position_encoding == "alibi" and not hasattr(loaded, "rope_parameters")
    assert PosEncConfig(position_encoding="nope", rope_theta=10000.0).uses_rope is False


def test_trained_context_length_is_saved_under_transformers_name_and_read_by_evaluators(tmp_path):
    config = tiny_config("learned", max_position_embeddings=64, original_max_position_embeddings=16)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["original_max_position_embeddings"] == 16
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.trained_context_length == 16 and loaded.max_position_embeddings == 64
    # lm-evaluation-harness takes the first of n_positions, max_position_embeddings, n_ctx that the config has
    first = next(getattr(loaded, a) for a in ("n_positions", "max_position_embeddings", "n_ctx") if hasattr(loaded, a))
    assert first == 16
    untrained = tiny_config("learned", max_position_embeddings=64)
    assert untrained.trained_context_length is None and untrained.n_positions == 64
    # RoPE scalings anchored at the pretraining length take it (transformers' convention, as in Phi-3)
    yarn = tiny_config(original_max_position_embeddings=16, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert yarn.rope_parameters["original_max_position_embeddings"] == 16
    with pytest.raises(ValueError, match="original_max_position_embeddings.*0"):
        tiny_config(original_max_position_embeddings=0)
