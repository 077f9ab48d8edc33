"""Synthetic length-generalization tasks: exact targets, exact-match accuracy, greedy decoding with the cache."""

from __future__ import annotations

import json
import random

import pytest
import torch

from hf_posenc.errors import UsageError
from hf_posenc.evaluation.tasks import (
    EOS,
    SYMBOL_IDS,
    VOCABULARY,
    TaskSettings,
    addition_target,
    answer_before_eos,
    build_task_model,
    build_task_tokenizer,
    copy_target,
    encode,
    exact_match_accuracy,
    greedy_answers,
    make_example,
    make_test_set,
    reverse_target,
    run_task_study,
    sequence_length,
    training_batch,
)


def test_targets_by_hand():
    assert copy_target(list("3141")) == list("3141")
    assert reverse_target(list("3141")) == list("1413")
    # least-significant digit first: 413 + 972 = 1385 -> "5 8 3 1"
    assert addition_target(list("314"), list("279")) == list("5831")
    assert addition_target(list("99"), list("11")) == list("011")  # 99 + 11 = 110
    assert addition_target(list("0"), list("0")) == list("00")
    with pytest.raises(ValueError):
        addition_target(list("12"), list("3"))


@pytest.mark.parametrize("task", ["copy", "reverse", "addition"])
def test_examples_are_well_formed_and_correct(task):
    rng = random.Random(0)
    for length in (1, 5, 17):
        example = make_example(task, length, rng)
        prompt = example.prompt
        assert prompt[0] == "<s>" and prompt[1] == f"[{task}]" and prompt[-1] == "="
        inputs = prompt[2:-1]
        if task == "addition":
            a, b = inputs[:length], inputs[length + 1 :]
            assert inputs[length] == "+" and len(b) == length
            value = int("".join(reversed(a))) + int("".join(reversed(b)))
            assert int("".join(reversed(example.answer))) == value and len(example.answer) == length + 1
        else:
            assert len(inputs) == length
            assert list(example.answer) == (list(inputs) if task == "copy" else list(reversed(inputs)))
        assert sequence_length(task, length) == len(prompt) + len(example.answer) + 1


def test_bad_task_input_is_refused():
    with pytest.raises(UsageError, match="unknown task"):
        make_example("sort", 3, random.Random(0))
    with pytest.raises(UsageError, match="length"):
        make_example("copy", 0, random.Random(0))
    with pytest.raises(UsageError, match="train_min_length"):
        TaskSettings.from_dict({"train_min_length": 5, "train_max_length": 2})
    with pytest.raises(UsageError, match="unknown key"):
        TaskSettings.from_dict({"steps": 5})


def test_exact_match_gives_no_partial_credit():
    targets = [[1, 2, 3], [4, 5], [6]]
    assert exact_match_accuracy([[1, 2, 3], [4, 5], [6]], targets) == 1.0
    assert exact_match_accuracy([[1, 2, 3], [4, 9], [6]], targets) == pytest.approx(2 / 3)
    assert exact_match_accuracy([[1, 2], [4, 5, 0], []], targets) == 0.0  # too short, too long, empty
    with pytest.raises(ValueError):
        exact_match_accuracy([[1]], targets)
    assert answer_before_eos([5, 6, SYMBOL_IDS[EOS], 7]) == [5, 6]
    assert answer_before_eos([5, 6]) == [5, 6]


def test_test_sets_are_fixed_and_tokenizer_matches_ids():
    settings = TaskSettings(num_test_examples=5)
    assert make_test_set("copy", 4, settings) == make_test_set("copy", 4, settings)
    assert make_test_set("copy", 4, settings) != make_test_set("reverse", 4, settings)
    tokenizer = build_task_tokenizer()
    example = make_example("addition", 3, random.Random(1))
    text = " ".join(example.prompt + example.answer)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == encode(example.prompt + example.answer)
    assert len(tokenizer) == len(VOCABULARY)


def test_training_batch_labels_only_the_answers():
    settings = TaskSettings(batch_size=4, train_max_length=3)
    batch = training_batch(settings, random.Random(0))
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        real = ids[mask.bool()].tolist()
        scored = labels[labels != -100].tolist()
        assert real[-len(scored):] == scored and scored[-1] == SYMBOL_IDS[EOS]
        assert real[len(real) - len(scored) - 1] == SYMBOL_IDS["="]


@torch.no_grad()
def test_greedy_decoding_with_cache_matches_a_plain_argmax_loop():
    settings = TaskSettings(hidden_size=32, intermediate_size=64, num_hidden_layers=2, test_lengths=[3, 5])
    torch.manual_seed(0)
    model = build_task_model("alibi", settings).eval()
    examples = make_test_set("reverse", 5, TaskSettings(num_test_examples=4))
    decoded = greedy_answers(model, examples, batch_size=3)
    for example, answer in zip(examples, decoded):
        sequence = encode(example.prompt)
        generated = []
        for _ in range(len(example.answer) + 1):  # recompute the whole sequence each step: no cache
            logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            generated.append(token)
            sequence.append(token)
            if token == SYMBOL_IDS[EOS]:
                break
        assert answer == answer_before_eos(generated)


def test_training_lowers_the_loss_and_the_study_writes_its_folder(tmp_path):
    settings = TaskSettings(tasks=["copy"], train_max_length=3, test_lengths=[2, 6], num_test_examples=8,
                            hidden_size=32, intermediate_size=64, num_hidden_layers=1, max_steps=40, batch_size=16,
                            logging_steps=10, warmup_steps=2, lr=1e-2)
    results = run_task_study("rope", settings, tmp_path / "study", show_progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "study" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.8
    assert [(r["task"], r["length"], r["num_examples"]) for r in results] == [("copy", 2, 8), ("copy", 6, 8)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results)
    assert results[0]["in_distribution"] and not results[1]["in_distribution"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval.json", "task_summary.json", "metrics.jsonl"):
        assert (tmp_path / "study" / name).is_file()
    mtime = (tmp_path / "study" / "model.safetensors").stat().st_mtime_ns
    assert run_task_study("rope", settings, tmp_path / "study", show_progress=False) == results  # reused, not retrained
    assert (tmp_path / "study" / "model.safetensors").stat().st_mtime_ns == mtime
