"""Passkey retrieval: instance generation, settings checks, a tiny train-and-test run and its reuse."""

from __future__ import annotations

import json
import random

import pytest

from hf_posenc import run_folder
from hf_posenc.errors import UsageError
from hf_posenc.evaluation.passkey import (PasskeySettings, make_passkey_example, passkey_batch,
                                          run_passkey_study)
from hf_posenc.evaluation.tasks import BOS, PLUS, SEP


@pytest.mark.parametrize("depth, before", [(0.0, 0), (0.5, 6), (1.0, 12)])
def test_example_has_the_context_length_and_the_key_at_its_depth(depth, before):
    example = make_passkey_example(20, depth, 4, random.Random(0))  # 20 - (4 + 4) = 12 filler tokens
    prompt = example.prompt
    assert len(prompt) == 20 and prompt[0] == BOS and prompt[-1] == SEP
    first = prompt.index(PLUS)
    assert first == 1 + before and prompt[first + 5] == PLUS
    assert tuple(prompt[first + 1 : first + 5]) == example.answer and len(example.answer) == 4


def test_too_short_a_context_is_refused():
    with pytest.raises(UsageError, match="context >= 8"):
        make_passkey_example(7, 0.5, 4, random.Random(0))


@pytest.mark.parametrize("change, message", [
    ({"depths": [0.5, 1.5]}, "depths"),
    ({"test_contexts": [4]}, "test_contexts must be an integer >= 8"),
    ({"depths": [-0.5]}, "depths"),
    ({"train_context": 2}, "train_context"),
    ({"colour": 1}, "unknown key"),
    ({"lr": 0}, "lr"),
])
def test_bad_settings_are_refused(change, message):
    with pytest.raises(UsageError, match=message):
        PasskeySettings.from_dict(change)


def test_training_batch_puts_the_loss_on_the_key_only():
    settings = PasskeySettings(batch_size=4, train_context=16)
    batch = passkey_batch(settings, random.Random(0))
    labelled = (batch["labels"] != -100).sum(dim=1)
    assert labelled.tolist() == [5] * 4  # 4 key digits and </s>
    assert batch["input_ids"].shape[1] <= 16 + 5


def test_tiny_study_writes_every_cell_and_is_reused(tmp_path):
    settings = PasskeySettings(train_context=12, test_contexts=[12, 24], depths=[0.0, 1.0], num_test_examples=3,
                               hidden_size=32, intermediate_size=64, num_hidden_layers=1, max_steps=3, batch_size=4,
                               warmup_steps=1)
    results = run_passkey_study("alibi", settings, tmp_path / "alibi", show_progress=False)
    assert {(r["context"], r["depth"]) for r in results} == {(12, 0.0), (12, 1.0), (24, 0.0), (24, 1.0)}
    assert all(0 <= r["accuracy"] <= 1 and r["num_examples"] == 3 for r in results)
    assert [r["in_distribution"] for r in results] == [True, True, False, False]
    saved = tmp_path / "alibi" / run_folder.PASSKEY_FILE
    before = saved.stat().st_mtime_ns
    assert run_passkey_study("alibi", settings, tmp_path / "alibi", show_progress=False) == results
    assert saved.stat().st_mtime_ns == before and json.loads(saved.read_text())["settings"] == settings.to_dict()
