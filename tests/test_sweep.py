"""hf-posenc sweep: search spaces, trial log, resumability (finished trials are not rerun), table and plot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from helpers_length_generalization import is_png, tiny_run_section, write_text_folder

from hf_posenc.cli import main
from hf_posenc.errors import UsageError
from hf_posenc.study.sweep import grid_params, load_sweep_config, parse_space, read_trials, run_sweep, sweep_config_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_sweep_tiny_config_loads():
    config = load_sweep_config(REPO / "configs" / "sweep-tiny.yaml")
    assert config.search == "random" and config.num_trials >= 2 and len(config.encodings) == 2
    names = {p.name for p in config.parameters}
    assert {"model.num_hidden_layers", "model.hidden_size", "training.lr", "training.warmup_steps"} <= names


def test_space_sampling_and_grid():
    space = parse_space({"training.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "training.warmup_steps": {"low": 0, "high": 5},
                         "model.num_hidden_layers": [1, 2, 3]}, "test")
    rng = random.Random(0)
    for _ in range(50):
        lr, warmup, layers = (p.sample(rng) for p in space)
        assert 1e-4 <= lr <= 1e-2 and isinstance(warmup, int) and 0 <= warmup <= 5 and layers in (1, 2, 3)
    grid = grid_params(parse_space({"model.num_hidden_layers": [1, 2], "training.lr": [1e-3, 3e-3, 1e-2]}, "test"))
    assert len(grid) == 6 and {"model.num_hidden_layers": 2, "training.lr": 1e-2} in grid


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": "bayes"}, "search"),
        ({"space": {"training.learning_rate": [1e-3]}}, "not a run-config field"),
        ({"space": {"training.lr": {"low": 1e-2, "high": 1e-3}}}, "low <= high"),
        ({"space": {"training.lr": {"low": 0, "high": 1e-3, "log": True}}}, "low must be > 0"),
        ({"search": "grid", "space": {"training.lr": {"low": 1e-3, "high": 1e-2}}}, "grid needs a list"),
        ({"encodings": ["rope", "rope"]}, "without repeats"),
        ({"num_trials": 0}, "num_trials"),
    ],
)
def test_bad_sweep_configs_are_refused(change, message):
    raw = yaml.safe_load((REPO / "configs" / "sweep-tiny.yaml").read_text())
    raw.update(change)
    with pytest.raises(UsageError, match=message):
        sweep_config_from_dict(raw)


def test_cli_missing_config_exits_2(tmp_path, capsys):
    assert main(["sweep", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_grid_sweep_logs_every_trial_and_resumes(tmp_path):
    data = write_text_folder(tmp_path / "text")
    raw = {
        "name": "mini-sweep",
        "encodings": ["alibi"],
        "search": "grid",
        "space": {"training.lr": [1e-3, 1e-2], "model.num_attention_heads": [4, 3]},  # hidden 32 / 3 heads: invalid
        "run": tiny_run_section(data, tmp_path / "cache", steps=2),
    }
    out = tmp_path / "sweep"
    first = run_sweep(sweep_config_from_dict(raw), out, show_progress=False)
    trials = read_trials(out / "trials.jsonl")
    assert len(trials) == 4 and first["ran"] == 2 and first["reused"] == 0
    assert sorted(t["status"] for t in trials) == ["invalid", "invalid", "ok", "ok"]
    for trial in trials:
        assert {"trial", "key", "position_encoding", "params", "status", "eval_loss"} <= set(trial)
        if trial["status"] == "ok":
            assert trial["eval_loss"] > 0 and Path(trial["output_dir"], "train_summary.json").is_file()
        else:
            assert "num_attention_heads" in trial["error"] or "divisible" in trial["error"]
    # the table is sorted by validation loss, best first
    markdown = (out / "results.md").read_text()
    ok = sorted(t["eval_loss"] for t in trials if t["status"] == "ok")
    assert markdown.index(f"{ok[0]:.4f}") < markdown.index(f"{ok[1]:.4f}")
    assert is_png(out / "sweep.png")

    # rerun: nothing is trained again, nothing new is logged
    summary = Path(next(t["output_dir"] for t in trials if t["status"] == "ok"), "model.safetensors")
    before = summary.stat().st_mtime_ns
    second = run_sweep(sweep_config_from_dict(raw), out, show_progress=False)
    assert second["ran"] == 0 and second["reused"] == 4
    assert len(read_trials(out / "trials.jsonl")) == 4
    assert summary.stat().st_mtime_ns == before

    # a trial logged as failed (e.g. the machine died) is rerun; a cut last line is ignored
    lines = (out / "trials.jsonl").read_text().splitlines()
    failed = json.loads(next(line for line in lines if '"ok"' in line))
    log = [line for line in lines if json.loads(line)["key"] != failed["key"]]
    failed.update(status="failed", error="RuntimeError: test")
    (out / "trials.jsonl").write_text("\n".join(log + [json.dumps(failed)]) + "\n{\"trial\": 9, \"ke")
    third = run_sweep(sweep_config_from_dict(raw), out, show_progress=False)
    assert third["ran"] == 1 and third["reused"] == 3


def test_optuna_search_resumes_with_the_same_number_of_trials(tmp_path):
    pytest.importorskip("optuna")
    data = write_text_folder(tmp_path / "text")
    raw = {
        "name": "optuna-sweep",
        "encodings": ["rope"],
        "search": "optuna",
        "num_trials": 2,
        "space": {"training.lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        "run": tiny_run_section(data, tmp_path / "cache", steps=1),
    }
    out = tmp_path / "sweep"
    first = run_sweep(sweep_config_from_dict(raw), out, show_progress=False)
    assert first["ran"] == 2
    second = run_sweep(sweep_config_from_dict(raw), out, show_progress=False)
    assert second["ran"] == 0 and second["reused"] == 2
    raw["num_trials"] = 3
    third = run_sweep(sweep_config_from_dict(raw), out, show_progress=False)
    assert third["ran"] == 1
    assert len([t for t in read_trials(out / "trials.jsonl") if t["status"] == "ok"]) == 3
