"""hf-posenc compare: config checks, a mini run (2 encodings, a few steps), results schema, reuse on rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers_length_generalization import is_png, tiny_run_section, tiny_task_section, write_text_folder

from hf_posenc.cli import main
from hf_posenc.study.compare import EMBEDDED_DEFAULT_CONFIG, compare_config_from_dict, load_compare_config, run_compare
from hf_posenc.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def test_embedded_default_is_configs_compare_tiny():
    assert yaml.safe_load(EMBEDDED_DEFAULT_CONFIG) == yaml.safe_load((REPO / "configs" / "compare-tiny.yaml").read_text())
    config = load_compare_config()
    assert config.encodings == ["sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope"]
    assert config.output_dir == "runs/compare-tiny" and config.tasks is not None
    assert max(config.eval.lengths) <= 1024 and config.run.data.block_size == 128


def test_gpu_config_loads():
    config = load_compare_config(REPO / "configs" / "compare-small.yaml")
    assert len(config.encodings) == 6 and config.run.data.block_size > 128


@pytest.mark.parametrize(
    "change, message",
    [
        ({"encodings": ["rope", "rotary"]}, "encodings: position_encoding must be one of .* got 'rotary'"),
        ({"encodings": ["rope", "rope"]}, "twice"),
        ({"encodings": ["rope", "rope+sinusoidal"]}, "encodings: position_encoding='rope\\+sinusoidal': 'sinusoidal' adds"),
        ({"colour": "red"}, "unknown key"),
        ({"eval": {"lengths": [0, 64]}}, "integers >= 2"),
        ({"eval": {"lengths": [64], "stride": 100}}, "stride"),
        ({"eval": {"rope_scaling": ["ntk"]}}, "rope_scaling"),
        ({"run": {"data": {"block_size": 1024}, "model": {"max_position_embeddings": 512}}}, "block_size=1024"),
        ({"tasks": {"tasks": ["sorting"]}}, "unknown task"),
        ({"seeds": 0}, "seeds must be >= 1"),
        ({"seeds": "three"}, "seeds"),
        ({"eval": {"lengths": [64], "sliding_stride": 100}}, "sliding_stride"),
        ({"eval": {"position_loss": "yes"}}, "position_loss"),
        ({"passkey": {"depths": [2.0]}}, "depths"),
    ],
)
def test_bad_configs_are_refused(change, message):
    raw = yaml.safe_load(EMBEDDED_DEFAULT_CONFIG)
    raw.update(change)
    with pytest.raises(UsageError, match=message):
        compare_config_from_dict(raw)


def test_cli_bad_config_exits_2(tmp_path, capsys):
    assert main(["compare", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["compare", "--set", "eval.lengths=[1]"]) == 2
    assert "integers >= 2" in capsys.readouterr().err
    assert main(["compare", "--seeds", "0"]) == 2
    assert "--seeds must be an integer >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = write_text_folder(root / "text")
    raw = {
        "name": "mini",
        "encodings": ["rope", "learned"],
        "seeds": 2,
        "run": tiny_run_section(data, root / "cache"),
        "eval": {"lengths": [32, 64, 128], "max_windows": 2, "batch_size": 2, "rope_scaling": ["dynamic"],
                 "sliding_stride": 16, "position_loss_windows": 2},
        "tasks": tiny_task_section(),
        "figures": {"windows": 2},
    }
    config = compare_config_from_dict(raw)
    result = run_compare(config, root / "out", show_progress=False)
    return raw, config, result, root / "out"


def test_mini_compare_writes_results_tables_and_plots(mini):
    _, _, result, out = mini
    records = json.loads((out / "results.json").read_text())
    ppl = [r for r in records if r["record_type"] == "perplexity" and not r["sliding"]]
    assert {r["label"] for r in ppl} == {"rope", "rope + dynamic x4", "learned"}
    assert {r["seed"] for r in records if r["record_type"] != "claim"} == {0, 1}  # every model once per seed
    assert len([r for r in ppl if r["label"] == "rope" and r["eval_length"] == 32]) == 2
    sliding = [r for r in records if r["record_type"] == "perplexity" and r["sliding"]]
    assert {r["stride"] for r in sliding} == {16} and {r["position_encoding"] for r in sliding} == {"rope", "learned"}
    position = [r for r in records if r["record_type"] == "position_loss"]
    assert {(r["position_encoding"], r["eval_length"]) for r in position} >= {("rope", 128), ("learned", 64)}
    assert all(b["loss"] > 0 for r in position for b in r["buckets"])
    for r in ppl:
        assert {"position_encoding", "eval_length", "perplexity", "status"} <= set(r)
    learned = {r["eval_length"]: r for r in ppl if r["position_encoding"] == "learned" and r["seed"] == 0}
    assert learned[128]["status"] == "unsupported" and learned[128]["perplexity"] is None
    assert learned[32]["status"] == "ok" and learned[32]["perplexity"] > 1
    tasks = [r for r in records if r["record_type"] == "task" and r["seed"] == 0]
    assert {(r["position_encoding"], r["task"], r["length"]) for r in tasks} == {
        (e, t, n) for e in ("rope", "learned") for t in ("copy", "reverse", "addition") for n in (2, 4)}
    assert all(0 <= r["accuracy"] <= 1 and r["num_examples"] == 6 for r in tasks)
    markdown = (out / "results.md").read_text()
    assert "| rope + dynamic x4 |" in markdown and "unsupported" in markdown and "**addition**" in markdown
    assert "## Published findings" in markdown and "± " in markdown and "## Perplexity with sliding windows" in markdown
    claims = [r for r in records if r["record_type"] == "claim"]
    assert {r["verdict"] for r in claims} <= {"agrees", "disagrees", "inconclusive"} and len(claims) >= 5
    assert all(r["source"] and r["published"] for r in claims)
    assert (out / "seeds" / "seed-1" / "rope" / "train_summary.json").is_file()
    assert (out / "seeds" / "seed-1" / "tasks" / "learned" / "eval.json").is_file()
    for name in ("loss_curves", "perplexity_vs_length", "task_accuracy", "loss_by_position", "encoding_distance_profiles",
                 "attention_maps", "attention_by_distance"):
        assert is_png(out / f"{name}.png"), name
    for encoding in ("rope", "learned"):  # the model directory contract
        evaluation = json.loads((out / encoding / "eval.json").read_text())
        assert {"model_dir", "position_encoding", "train_length", "data", "stride", "rope_scaling", "results", "tasks"} <= set(evaluation)
        assert evaluation["train_length"] == 32
        assert (out / encoding / "train_summary.json").is_file() and (out / "tasks" / encoding / "eval.json").is_file()
    assert set(result["timings"]["phases"]) >= {"train", "eval", "tasks", "plots", "figures"}


def test_rerun_reuses_finished_work_and_refuses_changed_configs(mini):
    raw, config, _, out = mini
    weights = out / "rope" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = run_compare(config, out, show_progress=False, skip_figures=True)
    assert weights.stat().st_mtime_ns == before
    assert again["timings"]["reused"]["train"] == ["rope", "learned", "rope@seed1", "learned@seed1"]
    assert set(again["timings"]["reused"]["eval"]) == {
        f"{model}{suffix}" for model in ("rope", "learned", "rope@seed1", "learned@seed1") for suffix in ("", "+sliding")
    } | {"rope+dynamic", "rope@seed1+dynamic"}
    assert again["timings"]["reused"]["tasks"] == ["rope", "learned", "rope@seed1", "learned@seed1"]
    assert "train" not in again["timings"]["phases"]
    changed = dict(raw, run={**raw["run"], "training": {**raw["run"]["training"], "max_steps": 5}})
    with pytest.raises(UsageError, match="training.max_steps"):
        run_compare(compare_config_from_dict(changed), out, show_progress=False)
