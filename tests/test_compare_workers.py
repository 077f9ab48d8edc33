"""compare with several worker processes: the same results as one process, jobs in the expected order."""

from __future__ import annotations

import json

import pytest
from helpers_length_generalization import tiny_run_section, tiny_task_section, write_text_folder

from hf_posenc.study.compare import compare_config_from_dict, run_compare
from hf_posenc.study.jobs import default_workers, study_jobs


def _mini_raw(root, workers: int) -> dict:
    return {
        "name": "mini", "encodings": ["rope", "alibi"], "seeds": 2, "workers": workers, "threads": 1,
        "run": tiny_run_section(write_text_folder(root / "text"), root / "cache"),
        "eval": {"lengths": [32, 64], "max_windows": 2, "batch_size": 2, "rope_scaling": [], "sliding_stride": None,
                 "position_loss_windows": 2},
        "tasks": tiny_task_section(),
        "passkey": {"max_steps": 2, "batch_size": 2, "train_context": 12, "test_contexts": [12, 24],
                    "depths": [0.0, 1.0], "num_test_examples": 2, "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 1, "num_attention_heads": 4},
        "figures": {"windows": 2},
    }


def _results(out):
    records = json.loads((out / "results.json").read_text())
    return sorted(json.dumps({k: v for k, v in r.items() if "time" not in k and "runtime" not in k}, sort_keys=True)
                  for r in records)


def test_two_workers_give_the_same_results_as_one(tmp_path):
    one = run_compare(compare_config_from_dict(_mini_raw(tmp_path / "a", 1)), tmp_path / "a" / "out",
                      show_progress=False, skip_figures=True)
    two = run_compare(compare_config_from_dict(_mini_raw(tmp_path / "b", 2)), tmp_path / "b" / "out",
                      show_progress=False, skip_figures=True)
    assert one["timings"]["workers"] == 1 and two["timings"]["workers"] == 2
    assert _results(tmp_path / "a" / "out") == _results(tmp_path / "b" / "out")
    assert set(two["timings"]["phases"]) >= {"train", "eval", "tasks", "passkey"}  # the workers' times came back
    assert two["timings"]["total"]["cpu_s"] >= sum(two["timings"]["phases"][p]["cpu_s"] for p in ("train", "tasks"))
    assert "2 worker processes" in (tmp_path / "b" / "out" / "results.md").read_text()
    # and a rerun with workers reuses everything
    again = run_compare(compare_config_from_dict(_mini_raw(tmp_path / "b", 2)), tmp_path / "b" / "out",
                        show_progress=False, skip_figures=True)
    assert sorted(again["timings"]["reused"]["train"]) == ["alibi", "alibi@seed1", "rope", "rope@seed1"]
    assert "train" not in again["timings"]["phases"]


def test_jobs_put_language_models_first_and_skip_tasks_when_asked(tmp_path):
    config = compare_config_from_dict(_mini_raw(tmp_path, 2))
    jobs = study_jobs(config, skip_tasks=False)
    kinds = [job.kind for job in jobs]
    assert kinds == ["model"] * 4 + ["tasks"] * 4 + ["passkey"] * 4
    assert [(job.seed, job.model.label) for job in jobs[:4]] == [(0, "rope"), (0, "alibi"), (1, "rope"), (1, "alibi")]
    assert [job.kind for job in study_jobs(config, skip_tasks=True)] == ["model"] * 4
    assert default_workers(1) == 1 and default_workers(100) >= 1


def test_bad_workers_are_refused(tmp_path):
    raw = _mini_raw(tmp_path, 0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        compare_config_from_dict(raw)
