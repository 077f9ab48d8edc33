"""An encoding knows itself: a class registered here, with no edit anywhere else, goes through a tiny compare,
the figures, the plots' colours, the model card, the sweep and bench checks and the README-style listing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_length_generalization import is_png, tiny_run_section, write_text_folder

from hf_posenc import PositionEncoding, register_position_encoding
from hf_posenc.bench.models import encoding_has_score_bias, validate_encodings
from hf_posenc.hub import card as hub_card
from hf_posenc.model.encodings_hf_posenc import POSITION_ENCODINGS, unregister_position_encoding
from hf_posenc.study.compare import compare_config_from_dict, run_compare
from hf_posenc.study.figures import distance_profile
from hf_posenc.study.plots import encoding_color
from hf_posenc.study.sweep import sweep_config_from_dict
from tests.conftest import tiny_config

NAME = "test_stepped_bias"


class SteppedBias(PositionEncoding):
    """A user encoding: a bias of -1 per 4 tokens of distance, with its own description, colour and profile."""

    description = "a stepped distance penalty registered by the test suite: minus one per four tokens of distance."
    citation = "the hf_posenc test suite"
    formula = "-floor((i - j) / 4)"
    color = "#123456"

    def score_bias(self, key_length, device, dtype):
        return lambda head, query_pos, key_pos: -torch.div(query_pos - key_pos, 4, rounding_mode="floor").float()

    def distance_profile(self, max_distance, trained=False):
        distance = torch.arange(max_distance + 1)
        return {"curves": [("stepped", -torch.div(distance, 4, rounding_mode="floor").float())],
                "ylabel": "stepped bias", "note": "as defined by the test"}


@pytest.fixture(scope="module")
def registered():
    register_position_encoding(NAME, SteppedBias)
    yield NAME
    unregister_position_encoding(NAME)


@pytest.fixture(scope="module")
def compared(registered, tmp_path_factory):
    root = tmp_path_factory.mktemp("registered")
    data = write_text_folder(root / "text")
    raw = {
        "name": "registered",
        "encodings": ["alibi", registered],
        "run": tiny_run_section(data, root / "cache", steps=2),
        "eval": {"lengths": [32, 64], "max_windows": 2, "batch_size": 2, "rope_scaling": []},
        "tasks": None,
        "figures": {"attention_maps": False},
    }
    run_compare(compare_config_from_dict(raw), root / "out", show_progress=False)
    return root / "out"


def test_registered_encoding_runs_through_compare_and_figures(registered, compared):
    records = json.loads((compared / "results.json").read_text())
    ours = [r for r in records if r["record_type"] == "perplexity" and r["position_encoding"] == registered]
    assert {r["eval_length"] for r in ours} == {32, 64} and all(r["status"] == "ok" for r in ours)
    assert is_png(compared / "encoding_distance_profiles.png")
    profile = distance_profile(registered, tiny_config(registered), max_distance=9)
    assert profile["ylabel"] == "stepped bias" and profile["note"] == "as defined by the test"
    torch.testing.assert_close(profile["curves"][0][1], torch.tensor([0, 0, 0, 0, -1, -1, -1, -1, -2, -2.0]))


def test_registered_encoding_has_its_colour_and_its_card(registered, compared):
    assert encoding_color(registered) == "#123456"
    assert encoding_color("alibi") == POSITION_ENCODINGS["alibi"].color
    model_dir = compared / registered
    config = json.loads((model_dir / "config.json").read_text())
    card = hub_card.build_model_card(config, hub_card.read_run_records(model_dir, config), "someone/stepped")
    assert "a stepped distance penalty registered by the test suite" in card.text
    assert "-floor((i - j) / 4)" in card.text and "the hf_posenc test suite" in card.text


def test_registered_encoding_is_accepted_by_sweep_and_bench(registered):
    sweep = sweep_config_from_dict({"encodings": [registered], "space": {"training.lr": [1e-3, 3e-3]}})
    assert sweep.encodings == [registered]
    assert validate_encodings([registered]) == [registered]
    assert encoding_has_score_bias(registered)
