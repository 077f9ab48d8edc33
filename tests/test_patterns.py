"""Per-layer patterns (``position_encoding="rope+rope+rope+nope"``): parsing and cycling over the layers, the
errors, what each layer computes, position information computed once per forward per encoding, weight names,
the derived class attributes, and the tools that take encodings by name. The guarantees every encoding has
(backends, caches, padding, compile, save/load, remote code, from_llama) run over ``conftest.PATTERNS``."""

import json
import re
import shutil

import pytest
import torch
from helpers_length_generalization import is_png, tiny_run_section, tiny_task_section, write_text_folder
from helpers_model_dir import build_model_dir

from hf_posenc import PositionEncoding, register_position_encoding, unregister_position_encoding
from hf_posenc.bench.models import encoding_has_score_bias, validate_encodings
from hf_posenc.cli import main
from hf_posenc.errors import SettingsError
from hf_posenc.hub import upload as hub
from hf_posenc.model.encodings_hf_posenc import (
    POSITION_ENCODINGS,
    AlibiPositionEncoding,
    NoPositionEncoding,
    PerLayerPositionEncoding,
    RotaryPositionEncoding,
    T5BiasPositionEncoding,
    build_position_encoding,
    position_encoding_class,
)
from hf_posenc.study.compare import compare_config_from_dict, run_compare
from hf_posenc.study.figures import distance_profile, reference_config
from hf_posenc.study.plots import encoding_color
from hf_posenc.study.sweep_config import sweep_config_from_dict
from tests.conftest import cache_of, random_tokens, tiny_config, tiny_model


# ---- parsing and cycling ------------------------------------------------------------------------------------
def test_a_pattern_is_one_cached_class_whose_parts_cycle_over_the_layers():
    cls = position_encoding_class("rope+rope+rope+nope")
    assert issubclass(cls, PerLayerPositionEncoding) and position_encoding_class("rope+rope+rope+nope") is cls
    assert cls.pattern == ("rope", "rope", "rope", "nope")
    assert cls.part_classes == {"rope": RotaryPositionEncoding, "nope": NoPositionEncoding}
    layers = [cls.class_of_layer(i) for i in range(9)]
    assert layers == [RotaryPositionEncoding] * 3 + [NoPositionEncoding] + [RotaryPositionEncoding] * 3 + [
        NoPositionEncoding, RotaryPositionEncoding]

    encoding = build_position_encoding(tiny_config("rope+rope+rope+nope", num_hidden_layers=6))
    parts, part_of_layer = encoding.layer_plan(6)
    assert [type(part) for part in parts] == [RotaryPositionEncoding, NoPositionEncoding]
    assert part_of_layer == [0, 0, 0, 1, 0, 0]


def test_a_single_name_is_its_registered_class_and_acts_in_every_layer():
    assert position_encoding_class("alibi") is AlibiPositionEncoding
    encoding = build_position_encoding(tiny_config("alibi"))
    assert encoding.layer_plan(3) == ([encoding], [0, 0, 0])
    assert AlibiPositionEncoding.class_of_layer(5) is AlibiPositionEncoding and AlibiPositionEncoding.pattern is None


# ---- errors ---------------------------------------------------------------------------------------------------
INSIDE_ATTENTION = re.escape(str([name for name in POSITION_ENCODINGS if name not in ("sinusoidal", "learned")]))


@pytest.mark.parametrize("pattern, message", [
    ("rope+sinusoidal", r"position_encoding='rope\+sinusoidal': 'sinusoidal' adds positions to the input embeddings, "
                        r"so it cannot be chosen per layer; per-layer patterns take encodings that act inside "
                        r"attention: " + INSIDE_ATTENTION),
    ("learned+nope", r"position_encoding='learned\+nope': 'learned' adds positions to the input embeddings"),
    ("rope+rotary", r"position_encoding='rope\+rotary': 'rotary' is not a registered position encoding"),
    ("rope++nope", r"position_encoding='rope\+\+nope': an empty name"),
    ("alibi+", r"position_encoding='alibi\+': an empty name"),
    ("rope+rope", r"position_encoding='rope\+rope' uses 'rope' in every layer; write position_encoding='rope'"),
])
def test_bad_patterns_are_refused_naming_the_bad_part(pattern, message):
    with pytest.raises(ValueError, match=message):
        position_encoding_class(pattern)
    with pytest.raises(ValueError, match=message):  # the config refuses it the same way, before building anything
        tiny_config(pattern)


def test_every_name_of_a_pattern_must_reach_a_layer():
    with pytest.raises(ValueError, match=re.escape(
        "position_encoding='rope+rope+rope+nope' repeats every 4 layers, but with num_hidden_layers=2 no layer uses "
        "['nope']")):
        tiny_config("rope+rope+rope+nope", num_hidden_layers=2)
    assert tiny_config("alibi+rope+nope", num_hidden_layers=3).num_hidden_layers == 3


def test_a_registered_name_cannot_contain_the_separator():
    with pytest.raises(ValueError, match=r"'my\+bias' contains '\+'"):
        register_position_encoding("my+bias", AlibiPositionEncoding)


def test_tools_that_take_encodings_by_name_accept_patterns_and_refuse_bad_ones():
    assert validate_encodings(["rope", "rope+rope+rope+nope"]) == ["rope", "rope+rope+rope+nope"]
    with pytest.raises(SettingsError, match=r"encodings must be among .*'rope\+sinusoidal': 'sinusoidal' adds"):
        validate_encodings(["rope+sinusoidal"])
    space = {"training.lr": [1e-3]}
    assert sweep_config_from_dict({"encodings": ["alibi+rope"], "space": space}).encodings == ["alibi+rope"]
    with pytest.raises(SettingsError, match=r"encodings: position_encoding='alibi\+fire\+t5': 't5' is not"):
        sweep_config_from_dict({"encodings": ["alibi+fire+t5"], "space": space})


# ---- RoPE options and other encoding-dependent config checks ------------------------------------------------
def test_rope_options_apply_to_every_rotary_layer_and_are_refused_without_one():
    config = tiny_config("alibi+rope", rope_fraction=0.5, rope_theta=500.0)
    assert config.uses_rope and config.rope_parameters["rope_theta"] == 500.0
    frequencies = build_position_encoding(config).rope.frequencies.inv_freq  # (head_dim / 2,)
    assert (frequencies[: len(frequencies) // 2] > 0).all() and (frequencies[len(frequencies) // 2 :] == 0).all()
    assert not tiny_config("alibi+nope").uses_rope and not hasattr(tiny_config("alibi+nope"), "rope_parameters")
    with pytest.raises(ValueError, match=r"rope_theta=500.0 is a RoPE option, but position_encoding='alibi\+nope'"):
        tiny_config("alibi+nope", rope_theta=500.0)


def test_flex_attention_is_refused_in_the_layers_of_an_encoding_without_it():
    model = tiny_model("cope+nope", attn_implementation="flex_attention")  # cope first: no flex compile
    with torch.no_grad(), pytest.raises(ValueError, match="cannot run with attn_implementation='flex_attention'"):
        model(random_tokens())


# ---- what each layer computes -------------------------------------------------------------------------------
def part_state(pattern_state: dict, part: str) -> dict:
    """The pattern model's weights as a single-encoding model of ``part`` names them."""
    prefix, state = "model.position_encoding.", {}
    for key, value in pattern_state.items():
        if key.startswith(prefix):
            if key.startswith(f"{prefix}{part}."):
                state[prefix + key[len(f"{prefix}{part}.") :]] = value
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("pattern", ["rope+nope", "alibi+rope", "t5_bias+xpos", "kerple_log+nope", "fox+rope"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_each_layer_computes_what_its_own_encoding_computes(pattern, backend):
    """Layer 0 of an ``a+b`` model is layer 0 of an all-``a`` model, layer 1 is layer 1 of an all-``b`` model."""
    first, second = pattern.split("+")
    model = tiny_model(pattern, backend)
    models = {name: tiny_model(name, backend) for name in (first, second)}
    for name, single in models.items():
        _, unexpected = single.load_state_dict(part_state(model.state_dict(), name), strict=False)
        assert all(".data_dependent_bias." in key for key in unexpected)  # fox's gate in layer 0: not rope's
    ids = random_tokens()
    with torch.no_grad():
        after_first = models[first](ids, output_hidden_states=True).hidden_states[1]
        # the all-`second` model, continued from what the all-`first` model's layer 0 wrote
        handle = models[second].model.layers[0].register_forward_hook(lambda module, args, output: after_first)
        expected = models[second](ids).logits
        handle.remove()
        logits = model(ids).logits
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        for single in models.values():  # and the pattern is neither of them
            assert (single(ids).logits - logits).abs().max() > 1e-3


def test_a_rope_nope_model_rotates_in_its_rope_layers_only():
    model = tiny_model("rope+rope+rope+nope", num_hidden_layers=8)
    seen = {}
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, i=index: seen.__setitem__(i, args[2]), with_kwargs=False
        )
    with torch.no_grad():
        model(random_tokens())
    assert [seen[i] is None for i in range(8)] == [False, False, False, True] * 2
    assert all(seen[i] is seen[0] for i in (1, 2, 4, 5, 6))  # one (cos, sin) for every rope layer


# ---- position information once per forward per encoding ---------------------------------------------------
def count_calls(monkeypatch, module, method: str) -> list:
    calls = []
    original = getattr(module, method)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, method, counted)
    return calls


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_position_information_is_computed_once_per_forward_for_each_encoding(monkeypatch, backend):
    model = tiny_model("alibi+rope+alibi+nope+t5_bias+rope", backend, num_hidden_layers=12)
    encoding = model.model.position_encoding
    rotations = count_calls(monkeypatch, encoding.rope, "rotary")
    alibi = count_calls(monkeypatch, encoding.alibi, "score_bias")
    t5 = count_calls(monkeypatch, encoding.t5_bias, "score_bias")
    masks = {}
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_pre_hook(lambda module, args, i=index: masks.__setitem__(i, args[1]))
    ids = random_tokens(batch=1)
    with torch.no_grad():
        output = model(ids[:, :8], use_cache=True)
        assert (len(rotations), len(alibi), len(t5)) == (1, 1, 1)
        model(ids[:, 8:9], past_key_values=cache_of(output), use_cache=True)  # a decoding step: once again
    assert (len(rotations), len(alibi), len(t5)) == (2, 2, 2)
    # each layer gets its own encoding's mask; layers of one encoding share the same tensor
    by_part = {"alibi": [0, 2, 6, 8], "t5_bias": [4, 10], "plain": [1, 3, 5, 7, 9, 11]}
    for layers in by_part.values():
        assert all(masks[i] is masks[layers[0]] for i in layers)
    assert masks[0] is not masks[4] and masks[0] is not masks[1]
    assert masks[0].shape[1] == model.config.num_attention_heads  # a bias folded in per head
    assert masks[1] is None or masks[1].shape[1] == 1  # rope and nope layers: the causal mask alone


# ---- weights -------------------------------------------------------------------------------------------------
def test_parts_keep_their_weights_under_their_name_and_share_them_across_their_layers():
    model = tiny_model("t5_bias+kerple_log+nope", attn_implementation="sdpa", num_hidden_layers=6).train()
    names = [name for name in model.state_dict() if "position_encoding" in name]
    assert names == [
        "model.position_encoding.t5_bias.relative_attention_bias.weight",
        "model.position_encoding.kerple_log.raw_r1",
        "model.position_encoding.kerple_log.raw_r2",
    ]
    single = tiny_model("t5_bias")  # a single encoding keeps its names
    assert [n for n in single.state_dict() if "position_encoding" in n] == [
        "model.position_encoding.relative_attention_bias.weight"]
    ids = random_tokens()
    model(ids, labels=ids).loss.backward()
    table = model.model.position_encoding.t5_bias.relative_attention_bias.weight
    assert table.grad is not None and table.grad.abs().sum() > 0  # one table, trained by layers 0 and 3
    assert isinstance(model.model.position_encoding.t5_bias, T5BiasPositionEncoding)


def test_data_dependent_parts_build_their_modules_in_their_own_layers_only():
    model = tiny_model("fox+rope+cope", num_hidden_layers=3)
    kinds = [type(layer.self_attn.data_dependent_bias).__name__ for layer in model.model.layers]
    assert kinds == ["ForgetGateBias", "NoneType", "ContextualPositionBias"]
    ids = random_tokens(batch=1, length=10)
    with torch.no_grad():  # incremental decoding equals the full forward
        full = model(ids).logits
        output = model(ids[:, :6], use_cache=True)
        steps = [output.logits[:, -1]]
        for index in range(6, 10):
            output = model(ids[:, index : index + 1], past_key_values=cache_of(output), use_cache=True)
            steps.append(output.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 5:10], atol=1e-5, rtol=1e-5)


# ---- class attributes ----------------------------------------------------------------------------------------
def test_class_attributes_are_derived_from_the_parts():
    cls = position_encoding_class("rope+rope+rope+nope")
    assert cls.uses_rope and cls.extrapolates and cls.supports_flex_attention
    assert cls.acts_at("rotary") and not cls.acts_at("score_bias") and not cls.acts_at("input_embedding")
    assert cls.description.startswith("position encodings chosen per layer: rope, rope, rope, nope (repeating).")
    assert RotaryPositionEncoding.description in cls.description
    assert cls.citation == f"{RotaryPositionEncoding.citation}; {NoPositionEncoding.citation}"
    assert cls.formula.startswith("layer l: [rope, rope, rope, nope][l mod 4]; rope: ")
    # the colour: the mean of the layers' colours (three green layers, one brown)
    rope, nope = RotaryPositionEncoding.color, NoPositionEncoding.color
    mean = [round((3 * int(rope[i : i + 2], 16) + int(nope[i : i + 2], 16)) / 4) for i in (1, 3, 5)]
    assert cls.color == "#" + "".join(f"{value:02x}" for value in mean)
    assert encoding_color("rope+rope+rope+nope") == cls.color
    assert encoding_color("rope+randpos")  # a label that is not an encoding still gets a colour

    mixed = position_encoding_class("cope+alibi")
    assert not mixed.uses_rope and not mixed.supports_flex_attention and mixed.acts_at("score_bias")
    assert mixed.acts_at("data_dependent_bias")
    assert encoding_has_score_bias("cope+alibi") and not encoding_has_score_bias("rope+nope")


def test_distance_profile_draws_every_part():
    profile = distance_profile("alibi+rope", reference_config(), max_distance=32)
    labels = [label for label, _ in profile["curves"]]
    assert labels[0] == "alibi: head 0" and labels[-1] == "rope: q = k (constant vector)"
    assert len(labels) == 8 + 1 and all(len(values) == 33 for _, values in profile["curves"])
    assert "score bias" in profile["ylabel"] and "q.k similarity" in profile["ylabel"]


# ---- compare ---------------------------------------------------------------------------------------------------
def test_compare_runs_a_pattern_and_refuses_one_its_task_models_cannot_hold(tmp_path):
    run = tiny_run_section(write_text_folder(tmp_path / "text"), tmp_path / "cache", steps=2)
    run["model"]["num_hidden_layers"] = 4
    with pytest.raises(SettingsError, match=r"tasks: invalid task model: position_encoding='rope\+rope\+rope\+nope' "
                                            r"repeats every 4 layers, but with num_hidden_layers=1 no layer uses"):
        compare_config_from_dict({"encodings": ["rope+rope+rope+nope"], "run": run, "tasks": tiny_task_section()})

    run["model"]["num_hidden_layers"] = 2
    config = compare_config_from_dict({
        "name": "patterns", "encodings": ["alibi+rope"], "run": run, "tasks": None,
        "eval": {"lengths": [32, 64], "max_windows": 1, "batch_size": 2}, "figures": {"attention_maps": False},
    })
    run_compare(config, tmp_path / "out", show_progress=False)
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    perplexity = [r for r in records if r["record_type"] == "perplexity" and r["status"] == "ok"]
    assert {r["position_encoding"] for r in perplexity} == {"alibi+rope"} and len(perplexity) == 2
    assert is_png(tmp_path / "out" / "encoding_distance_profiles.png")


# ---- the Hub ---------------------------------------------------------------------------------------------------
def test_a_pattern_of_built_in_encodings_is_pushed_with_its_description(tmp_path):
    model_dir = build_model_dir(tmp_path / "model", "alibi+rope")
    out = tmp_path / "upload"
    assert main(["push", str(model_dir), "--repo-id", "someone/tiny-alibi-rope", "--dry-run", str(out)]) == 0
    readme = " ".join((out / "README.md").read_text().split())
    assert "This model uses position encodings chosen per layer: alibi, rope (repeating)." in readme
    assert "rope_theta" in readme  # its rotary layers' RoPE parameters are on the card


class UserBias(PositionEncoding):
    def score_bias(self, key_length, device, dtype):
        return lambda head, query, key: (key - query).float()


def test_a_pattern_with_a_registered_encoding_is_not_pushed(tmp_path):
    register_position_encoding("test_user_bias", UserBias, overwrite=True)
    try:
        model_dir = build_model_dir(tmp_path / "model", "alibi")
        config_path = model_dir / "config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "position_encoding": "alibi+test_user_bias"}))
        with pytest.raises(SettingsError, match="only the built-in encodings"):
            hub.check_model_dir(model_dir)
    finally:
        unregister_position_encoding("test_user_bias")
        shutil.rmtree(tmp_path / "model")
