"""``hf-posenc train`` on the command line: flags, and bad input refused before training with one clear line."""

import json
import subprocess
import sys

import pytest

from hf_posenc.cli import main
from hf_posenc.data.corpus import embedded_corpus_root

SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")

TINY = """
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 64}}
data: {{name: {data}, block_size: 32}}
tokenizer: {{vocab_size: 300, cache_dir: {cache}}}
training: {{max_steps: 40, per_device_batch_size: 4, logging_steps: 1, eval_steps: 0, eval_max_batches: 1,
            save_steps: 0, report_to: none, cpu_threads: 1}}
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for name in SOURCE_MODULES:
        (folder / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    return folder


@pytest.fixture()
def config_file(corpus, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(data=corpus, cache=tmp_path / "cache"))
    return path


def run_cli(capsys, *argv):
    code = main(["train", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_flags_override_the_config(config_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        capsys, "--config", str(config_file), "--position-encoding", "alibi", "--max-steps", "3", "--save-steps", "2",
        "--output-dir", str(out), "--set", "training.lr=2e-3", "--set", "model.num_hidden_layers=1", "--no-progress",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["position_encoding"] == "alibi" and summary["steps_completed"] == 3
    resolved = (out / "run_config.yaml").read_text()
    assert "lr: 0.002" in resolved and "num_hidden_layers: 1" in resolved and "save_steps: 2" in resolved
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and (out / "checkpoints" / "checkpoint-3").is_dir()
    code, _, err = run_cli(capsys, "--config", str(config_file), "--max-steps", "5", "--output-dir", str(out), "--resume",
                           "--no-progress", "--set", "model.num_hidden_layers=1", "--position-encoding", "alibi",
                           "--set", "training.lr=2e-3", "--save-steps", "2")
    assert code == 0 and "Resuming from" in err and "checkpoint-3" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "training.lrr=1"], "unknown config key 'training.lrr'"),
        (["--set", "training.max_steps=many"], "with overrides must be an integer, got 'many'"),
        (["--position-encoding", "rotary"], "model.position_encoding must be one of"),
        (["--data", "./does/not/exist.txt"], "data file or folder not found: './does/not/exist.txt'"),
        (["--set", "model.position_encoding=learned", "--set", "data.block_size=128"],
         "data.block_size=128 is beyond what position_encoding='learned' allows (model.max_position_embeddings=64)"),
        (["--set", "training.lr"], "--set expects key=value"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(config_file, tmp_path, capsys, extra, message):
    code, _, err = run_cli(capsys, "--config", str(config_file), "--output-dir", str(tmp_path / "out"), *extra)
    assert code == 2
    assert err.startswith("hf-posenc train: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file not found" in err


def test_unknown_key_in_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  max_stepz: 3\n")
    code, _, err = run_cli(capsys, "--config", str(path))
    assert code == 2 and "unknown key 'training.max_stepz'" in err and "did you mean 'training.max_steps'" in err


def test_empty_dataset(config_file, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli(capsys, "--config", str(config_file), "--data", str(empty), "--output-dir", str(tmp_path / "o"))
    last_line = err.rstrip().split("\n")[-1]  # after the datasets progress bars
    assert code == 2 and last_line.startswith("hf-posenc train: error: data ") and "empty" in last_line


@pytest.mark.slow
def test_console_script_prints_no_traceback(tmp_path):
    """The real entry point, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "hf_posenc.cli", "train", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"hf-posenc train: error: config file not found: '{tmp_path / 'nope.yaml'}'"]
