"""Run configs: YAML sections as typed dataclasses, dotted overrides, and early, named errors."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from hf_posenc import PosEncConfig, PosEncForCausalLM
from hf_posenc.errors import UsageError
from hf_posenc.cli.options import parse_set
from hf_posenc.train.run_config import ModelSection, RunConfig, load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load_and_are_valid_for_every_encoding():
    for name in ("tiny.yaml", "small-125m.yaml"):
        config = load_run_config(CONFIGS / name)
        assert config.run_name == Path(name).stem
        for encoding in ("sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope"):
            load_run_config(CONFIGS / name, {"model.position_encoding": encoding})


def test_small_125m_is_about_125m_parameters_with_sequence_1024_in_bf16():
    config = load_run_config(CONFIGS / "small-125m.yaml")
    assert config.data.block_size in (1024, 2048) and config.training.mixed_precision in ("auto", "bf16")
    with torch.device("meta"):
        model = PosEncForCausalLM(config.model_config(vocab_size=config.tokenizer.vocab_size))
    assert 115e6 < sum(p.numel() for p in model.parameters()) < 135e6


def test_model_section_fields_are_posenc_config_arguments():
    accepted = set(inspect.signature(PosEncConfig.__init__).parameters)
    fields = {f.name for f in dataclasses.fields(ModelSection)} - {"attn_implementation", "extra_config"}
    assert fields <= accepted, fields - accepted
    settable = accepted - {"self", "kwargs", *ModelSection.NOT_CONFIGURABLE}
    assert settable <= fields, f"PosEncConfig arguments a run config cannot set: {settable - fields}"


def test_extra_config_reaches_posenc_config(tmp_path):
    config = load_run_config(write(tmp_path, "model:\n  position_encoding: alibi\n  extra_config: {my_option: 3}\n"))
    assert config.model_config(vocab_size=300).my_option == 3
    with pytest.raises(UsageError, match="invalid model section"):
        load_run_config(write(tmp_path, "model:\n  position_encoding: alibi\n  extra_config: {rope_fraction: 0.5}\n"))


def test_overrides_are_typed_and_parsed(tmp_path):
    path = write(tmp_path, "training:\n  lr: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string: still a float here
    config = load_run_config(
        path,
        parse_set(
            ["training.max_steps=7", "training.lr=2e-4", "model.rope_scaling={rope_type: linear, factor: 2.0}",
             "data.name=123", "data.config=null", "training.eval_max_batches=null", "model.tie_word_embeddings=true"]
        ),
    )
    t = config.training
    assert t.max_steps == 7 and t.lr == 2e-4 and isinstance(t.lr, float) and t.eval_max_batches is None
    assert config.model.rope_scaling == {"rope_type": "linear", "factor": 2.0} and config.model.tie_word_embeddings is True
    assert config.data.name == "123" and config.data.config is None  # string fields stay verbatim
    assert config.run_name == "run"


def test_yaml_round_trip(tmp_path):
    config = load_run_config(CONFIGS / "tiny.yaml", {"model.position_encoding": "alibi"})
    again = load_run_config(write(tmp_path, config.to_yaml()))
    assert again == config


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("training:\n  lrr: 1\n", {}, r"unknown key 'training\.lrr'.*did you mean 'training\.lr'"),
        ("modle: {}\n", {}, r"unknown key 'modle'.*did you mean 'model'"),
        ("", {"training.nope": "1"}, r"unknown config key 'training\.nope'"),
        ("", {"lr": "1"}, r"unknown config key 'lr'"),
        ("training:\n  max_steps: ten\n", {}, r"training\.max_steps .* must be an integer, got 'ten'"),
        ("training:\n  max_steps: 1.5\n", {}, r"training\.max_steps .* must be an integer"),
        ("", {"training.lr": "fast"}, r"training\.lr .* must be a number, got 'fast'"),
        ("", {"model.tie_word_embeddings": "maybe"}, r"tie_word_embeddings .* must be a boolean"),
        ("", {"training.lr": "-1"}, r"training\.lr must be a finite number > 0"),
        ("", {"training.adam_beta2": "1.0"}, r"adam_beta2 must be in \[0, 1\)"),
        ("", {"training.mixed_precision": "fp8"}, r"mixed_precision must be one of"),
        ("", {"model.attn_implementation": "flash"}, r"attn_implementation must be one of"),
        ("", {"model.position_encoding": "rotary"}, r"model\.position_encoding must be one of .*'alibi'.*got 'rotary'"),
        ("", {"model.hidden_size": "100", "model.num_attention_heads": "3"}, r"invalid model section: model\.hidden_size"),
        ("model:\n  position_encoding: learned\n  max_position_embeddings: 64\ndata:\n  block_size: 128\n", {},
         r"data\.block_size=128 is beyond what position_encoding='learned' allows \(model\.max_position_embeddings=64\)"),
        ("tokenizer:\n  vocab_size: 10\n", {}, r"tokenizer\.vocab_size must be >= 258"),
        ("- just\n- a list\n", {}, r"must be a YAML mapping"),
        ("training: [1, 2]\n", {}, r"section 'training' .* must be a mapping"),
        ("training: {lr: 1\n", {}, r"not valid YAML"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_field(tmp_path, text, overrides, message):
    with pytest.raises(UsageError, match=message):
        load_run_config(write(tmp_path, text), overrides)


def test_block_size_within_learned_limit_and_other_encodings_unlimited(tmp_path):
    text = "model:\n  position_encoding: {}\n  max_position_embeddings: 64\ndata:\n  block_size: {}\n"
    load_run_config(write(tmp_path, text.format("learned", 64)))
    config = load_run_config(write(tmp_path, text.format("alibi", 4096)))
    assert config.max_positions() is None


def test_missing_config_file_and_bad_set_syntax(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="--set expects key=value"):
        parse_set(["training.lr"])


def test_model_config_carries_fields_and_special_tokens():
    config = RunConfig.from_dict({"model": {"position_encoding": "t5_bias", "hidden_size": 64, "num_attention_heads": 4}})
    model_config = config.model_config(vocab_size=500, eos_token_id=0, pad_token_id=1)
    assert model_config.position_encoding == "t5_bias" and model_config.vocab_size == 500
    assert model_config.hidden_size == 64 and model_config.pad_token_id == 1 and model_config.eos_token_id == 0
