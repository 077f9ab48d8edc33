"""Two CPU processes (torchrun, gloo) follow the same loss curve as one process with the same global batch."""

import json

import pytest
import torch
from helpers_multiprocess import torchrun_train, write_run_config
from safetensors.torch import load_file

from hf_posenc.cli import main

CONFIG = """
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 64}}
data: {{name: {data}, block_size: 32}}
tokenizer: {{vocab_size: 300, cache_dir: {cache}}}
training: {{max_steps: 8, per_device_batch_size: 8, lr: 1.0e-2, warmup_steps: 2, logging_steps: 1, eval_steps: 4,
            eval_max_batches: 2, save_steps: 0, report_to: none, cpu_threads: 1}}
"""


def losses(output_dir, key):
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    config = write_run_config(tmp_path, CONFIG)

    # One process, 8 rows per step.
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "one"), "--no-progress"]) == 0
    # Two processes, 4 rows each: the same 8 rows per step (global batches are sliced by rank).
    torchrun_train(config, tmp_path / "two", "--set", "training.per_device_batch_size=4")

    one, two = tmp_path / "one", tmp_path / "two"
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    assert summary["tokens_seen"] == json.loads((one / "train_summary.json").read_text())["tokens_seen"]
    # Same data and the same mathematics; only the order of fp32 reductions differs (per-rank means, then
    # the gradient all-reduce), so the curves agree to ~1e-6 relative and drift a little as steps compound.
    one_losses, two_losses = losses(one, "loss"), losses(two, "loss")
    assert len(one_losses) == len(two_losses) == 8
    assert two_losses == pytest.approx(one_losses, rel=1e-5)  # measured: <= 2e-7
    assert one_losses[-1] < one_losses[0] - 0.5  # and it is a real learning curve, not a flat line
    assert losses(two, "eval_loss") == pytest.approx(losses(one, "eval_loss"), rel=1e-5)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)
