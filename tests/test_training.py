"""The training loop in one process: the model-directory contract, learning, accumulation, NaN stop, callbacks."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_posenc  # noqa: F401
import hf_posenc.train.engine as training
from hf_posenc.train.checkpoints import complete_checkpoints
from hf_posenc.data.corpus import embedded_corpus_root
from hf_posenc.errors import UsageError
from hf_posenc.train.run_config import RunConfig, load_run_config
from hf_posenc.train.engine import StopTraining, TrainingDiverged, train

SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py", "colorsys.py", "keyword.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for name in SOURCE_MODULES:
        (folder / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    return folder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def tiny_config(corpus, cache_dir, **training_overrides) -> RunConfig:
    training_section = {
        "max_steps": 30, "per_device_batch_size": 8, "lr": 1e-2, "warmup_steps": 3, "logging_steps": 5,
        "eval_steps": 10, "eval_max_batches": 2, "save_steps": 0, "report_to": "none", "cpu_threads": 1,
    }
    training_section.update(training_overrides)
    return RunConfig.from_dict({
        "run_name": "unit",
        "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": 64},
        "data": {"name": str(corpus), "block_size": 32},
        "tokenizer": {"vocab_size": 300, "cache_dir": str(cache_dir)},
        "training": training_section,
    })


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_dir_follows_the_model_directory_contract_and_the_loss_falls(corpus, cache_dir, tmp_path):
    out = tmp_path / "model"
    summary = train(tiny_config(corpus, cache_dir, save_steps=10), out, show_progress=False)

    for name in ("config.json", "model.safetensors", "generation_config.json", "modeling_hf_posenc.py",
                 "configuration_hf_posenc.py", "tokenizer.json", "tokenizer_config.json", "run_config.yaml",
                 "metrics.jsonl", "train_summary.json"):
        assert (out / name).is_file(), name
    assert [step for step, _ in complete_checkpoints(out)] == [20, 30]  # save_total_limit=2 keeps the newest

    rows = read_rows(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in eval_rows] == [10, 20, 30]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    for key in ("lr", "tokens_per_s", "epoch", "grad_norm", "tokens_seen"):
        assert key in train_rows[0]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 1.0, train_rows  # it learns
    assert eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"]

    assert summary == json.loads((out / "train_summary.json").read_text())
    assert summary["position_encoding"] == "rope" and summary["block_size"] == 32 and summary["max_steps"] == 30
    assert summary["tokens_seen"] == 30 * 8 * 32 and summary["final_loss"] == train_rows[-1]["loss"]
    assert summary["final_eval_loss"] == eval_rows[-1]["eval_loss"] and summary["data"]["kind"] == "local"
    assert summary["data"]["description"].startswith("local: ")
    assert summary["num_parameters"] > 0 and summary["train_runtime_s"] > 0
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["original_max_position_embeddings"] == 32  # the trained context length, for evaluators

    resolved = load_run_config(out / "run_config.yaml")
    assert resolved.model.vocab_size == 300 and resolved.data.block_size == 32

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.position_encoding == "rope" and model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("def f(x):", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 5)


def test_same_seed_gives_identical_weights_and_an_existing_run_is_not_overwritten(corpus, cache_dir, tmp_path):
    config = tiny_config(corpus, cache_dir, max_steps=4, eval_steps=0)
    train(config, tmp_path / "a", show_progress=False)
    train(config, tmp_path / "b", show_progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UsageError, match="already holds a run.*with `resume`"):
        train(config, tmp_path / "a", show_progress=False)
    train(config, tmp_path / "a", overwrite=True, show_progress=False)


@pytest.mark.parametrize("encoding", ["sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope"])
def test_every_encoding_trains(corpus, cache_dir, tmp_path, encoding):
    config = tiny_config(corpus, cache_dir, max_steps=3, eval_steps=0, logging_steps=1).with_overrides(
        {"model.position_encoding": encoding}
    )
    summary = train(config, tmp_path, show_progress=False)
    assert summary["position_encoding"] == encoding and summary["final_loss"] < 6.0  # ln(300) = 5.7 at init
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.position_encoding == encoding


def test_gradient_accumulation_matches_a_bigger_batch(corpus, cache_dir, tmp_path):
    big = train(tiny_config(corpus, cache_dir, max_steps=6, logging_steps=1, eval_steps=0), tmp_path / "big", show_progress=False)
    accumulated = train(
        tiny_config(corpus, cache_dir, max_steps=6, logging_steps=1, eval_steps=0, per_device_batch_size=4,
                    gradient_accumulation_steps=2),
        tmp_path / "acc", show_progress=False,
    )
    assert big["tokens_seen"] == accumulated["tokens_seen"]
    big_losses = [r["loss"] for r in read_rows(tmp_path / "big" / "metrics.jsonl") if "loss" in r]
    acc_losses = [r["loss"] for r in read_rows(tmp_path / "acc" / "metrics.jsonl") if "loss" in r]
    assert big_losses == pytest.approx(acc_losses, rel=1e-4, abs=1e-4)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(corpus, cache_dir, tmp_path, monkeypatch):
    build = training.build_model

    def model_that_diverges_at_step_7(run_config, tokenizer):
        model = build(run_config, tokenizer)
        original, calls = model.forward, {"n": 0}

        def forward(*args, **kwargs):
            output = original(*args, **kwargs)
            if model.training:
                calls["n"] += 1
                if calls["n"] >= 7:
                    output.loss = output.loss * float("nan")
            return output

        model.forward = forward
        return model

    monkeypatch.setattr(training, "build_model", model_that_diverges_at_step_7)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at step 7.*last good checkpoint is .*checkpoint-5"):
        train(tiny_config(corpus, cache_dir, max_steps=20, save_steps=5, logging_steps=2), out, show_progress=False)
    assert [step for step, _ in complete_checkpoints(out)] == [5]
    state = load_file(out / "checkpoints" / "checkpoint-5" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values())
    assert not (out / "model.safetensors").exists()  # no export of a diverged model


def test_cli_reports_divergence_with_exit_code_1(corpus, cache_dir, tmp_path, monkeypatch, capsys):
    from hf_posenc.cli import main

    def diverged(*args, **kwargs):
        raise TrainingDiverged("the training loss or gradient norm became NaN/inf at step 3")

    monkeypatch.setattr(training, "train", diverged)
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(corpus, cache_dir).to_yaml())
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 1
    assert "hf-posenc train: error: the training loss" in capsys.readouterr().err


def test_callbacks_see_every_row_and_can_stop_the_run(corpus, cache_dir, tmp_path):
    seen = []

    def stop_at_step_10(row):
        seen.append(row)
        if row["step"] >= 10 and "loss" in row:
            raise StopTraining

    summary = train(tiny_config(corpus, cache_dir, max_steps=30, eval_steps=5), tmp_path, show_progress=False,
                    callbacks=[stop_at_step_10])
    assert summary["stopped_early"] and summary["steps_completed"] == 10
    assert [r["step"] for r in seen] == [5, 5, 10]
    assert (tmp_path / "model.safetensors").is_file()


def test_run_config_yaml_of_a_run_is_written_before_training(corpus, cache_dir, tmp_path, monkeypatch):
    """A run killed early still leaves the config that --resume checks against."""
    seen = {}

    def stop_immediately(row):
        seen["config"] = yaml.safe_load((tmp_path / "run_config.yaml").read_text())
        raise StopTraining

    train(tiny_config(corpus, cache_dir, max_steps=10, logging_steps=1), tmp_path, show_progress=False,
          callbacks=[stop_immediately])
    assert seen["config"]["data"]["block_size"] == 32 and seen["config"]["model"]["vocab_size"] == 300


def test_data_too_small_for_one_batch_is_refused_before_training(cache_dir, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("tiny text " * 40)
    (small / "b.txt").write_text("other text " * 40)
    config = tiny_config(small, cache_dir)
    with pytest.raises(UsageError, match="fewer than one global batch"):
        train(config, tmp_path / "out", show_progress=False)


def test_tensorboard_tracker_receives_the_metrics(corpus, cache_dir, tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny_config(corpus, cache_dir, max_steps=4, eval_steps=2, report_to="auto"), tmp_path, show_progress=False)
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events and max(path.stat().st_size for path in events) > 0
