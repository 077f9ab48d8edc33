"""Fault tolerance: kill -9 a run (during a save, and between saves), resume, and get the exact same model."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_posenc.train.checkpoints import COMPLETE_MARKER, complete_checkpoints, latest_complete_checkpoint
from hf_posenc.cli import main
from hf_posenc.data.corpus import embedded_corpus_root

SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")

CONFIG = """
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 64}}
data: {{name: {data}, block_size: 32}}
tokenizer: {{vocab_size: 300, cache_dir: {cache}}}
training: {{max_steps: 12, per_device_batch_size: 4, lr: 1.0e-2, warmup_steps: 2, logging_steps: 1, eval_steps: 4,
            eval_max_batches: 2, save_steps: 4, save_total_limit: 2, report_to: none, cpu_threads: 1}}
"""

# Runs the real CLI; SIGKILLs itself (no cleanup of any kind, like kill -9) at a chosen point.
DRIVER = """
import os, signal, sys
import hf_posenc.train.checkpoints as checkpointing
import hf_posenc.train.engine as training
from hf_posenc.cli import main

during_save = int(os.environ.get("KILL_DURING_SAVE_AT", "0"))
after_step = int(os.environ.get("KILL_AFTER_STEP", "0"))
write_json, write_row = checkpointing._write_json, training.MetricsLog.write

def write_json_then_maybe_die(path, payload):
    if during_save and path.name == checkpointing.COMPLETE_MARKER and payload["step"] == during_save:
        os.kill(os.getpid(), signal.SIGKILL)  # state files written, marker not yet: a half-made checkpoint
    write_json(path, payload)

def write_row_then_maybe_die(self, row):
    write_row(self, row)
    if after_step and row["step"] == after_step and "loss" in row:
        os.kill(os.getpid(), signal.SIGKILL)

checkpointing._write_json = write_json_then_maybe_die
training.MetricsLog.write = write_row_then_maybe_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in SOURCE_MODULES:
        (corpus / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    (root / "run.yaml").write_text(CONFIG.format(data=corpus, cache=root / "cache"))
    (root / "driver.py").write_text(DRIVER)
    return root


def run_train(setup, output_dir, *extra, **kill):
    env = {**os.environ, **{key.upper(): str(value) for key, value in kill.items()}}
    command = [sys.executable, str(setup / "driver.py"), "train", "--config", str(setup / "run.yaml"),
               "--output-dir", str(output_dir), "--no-progress", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def rows(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill_during_save_and_between_saves_then_resume_is_bit_exact(setup, tmp_path):
    # The uninterrupted reference runs in this process (same thread count: training.cpu_threads=1).
    assert main(["train", "--config", str(setup / "run.yaml"), "--output-dir", str(tmp_path / "reference"), "--no-progress"]) == 0

    out = tmp_path / "interrupted"
    killed = run_train(setup, out, kill_during_save_at=8)
    assert killed.returncode == -signal.SIGKILL
    assert [step for step, _ in complete_checkpoints(out)] == [4]  # the half-written step-8 save is not picked up
    staging = out / "checkpoints" / ".staging-checkpoint-8"
    assert staging.is_dir() and not (staging / COMPLETE_MARKER).exists() and (staging / "model.safetensors").exists()

    killed_again = run_train(setup, out, "--resume", kill_after_step=10)
    assert killed_again.returncode == -signal.SIGKILL
    assert "Resuming from" in killed_again.stderr and "checkpoint-4 (step 4)" in killed_again.stderr
    assert latest_complete_checkpoint(out).name == "checkpoint-8" and not staging.exists()
    assert max(row["step"] for row in rows(out)) == 10  # rows 9 and 10 were written before the kill

    finished = run_train(setup, out, "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "checkpoint-8 (step 8)" in finished.stderr

    expected, resumed = load_file(tmp_path / "reference" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name  # bit-exact on CPU
    assert rows(out) == [
        {**row, "tokens_per_s": r["tokens_per_s"], "elapsed_s": r["elapsed_s"]} if "loss" in row else row
        for row, r in zip(rows(tmp_path / "reference"), rows(out))
    ]  # same rows (timings aside), each step once, in order
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps_completed"] == 12 and summary["tokens_seen"] == 12 * 4 * 32
    assert [step for step, _ in complete_checkpoints(out)] == [8, 12]


def test_only_complete_checkpoints_are_candidates(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("checkpoint-3", True), ("checkpoint-10", True), ("checkpoint-12", False),
                           (".staging-checkpoint-14", True), ("checkpoint-x", True), ("notes", True)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / COMPLETE_MARKER).write_text("{}")
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 10]  # numeric order, not text order
    assert latest_complete_checkpoint(tmp_path) == root / "checkpoint-10"
    assert latest_complete_checkpoint(tmp_path / "elsewhere") is None


def test_resume_with_a_different_model_is_refused(setup, tmp_path, capsys):
    arguments = ["train", "--config", str(setup / "run.yaml"), "--output-dir", str(tmp_path / "run"), "--no-progress"]
    assert main([*arguments, "--max-steps", "4"]) == 0
    capsys.readouterr()
    assert main([*arguments, "--resume", "--set", "model.num_hidden_layers=3"]) == 2
    assert "cannot resume: model.num_hidden_layers differ(s)" in capsys.readouterr().err
