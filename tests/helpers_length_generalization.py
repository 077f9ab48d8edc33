"""Small shared pieces of the length-generalization tests (eval, compare, sweep, figures).

Real text nobody here wrote (standard-library sources) in a local folder, and a tiny run config that trains
a byte-level model on it in seconds, with the tokenizer cached inside the test's tmp folder.
"""

from __future__ import annotations

import json
from pathlib import Path

# Modules whose sources become the text files: a few hundred KB of real Python in all.
TEXT_MODULES = ("json.decoder", "json.encoder", "textwrap", "string", "fractions", "shlex")


def write_text_folder(path: Path) -> Path:
    """A folder of .txt files (split into train/validation by file) for --data."""
    import importlib

    path.mkdir(parents=True, exist_ok=True)
    for name in TEXT_MODULES:
        source = Path(importlib.import_module(name).__file__).read_text(encoding="utf-8")
        (path / f"{name.replace('.', '_')}.txt").write_text(source, encoding="utf-8")
    return path


def tiny_run_section(data_dir: Path, cache_dir: Path, *, steps: int = 3, block_size: int = 32, max_positions: int = 64) -> dict:
    """The `run:` section of a compare / sweep config: 1 layer, hidden 32, byte-level, a few steps."""
    return {
        "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": max_positions, "t5_num_buckets": 8,
                  "t5_max_distance": 32, "attn_implementation": "sdpa"},
        "data": {"name": str(data_dir), "block_size": block_size},
        "tokenizer": {"vocab_size": 258, "cache_dir": str(cache_dir)},
        "training": {"seed": 0, "max_steps": steps, "per_device_batch_size": 4, "lr": 3e-3, "warmup_steps": 1,
                     "mixed_precision": "no", "logging_steps": 1, "eval_steps": 2, "eval_max_batches": 2,
                     "save_steps": 0, "report_to": "none"},
    }


def tiny_task_section() -> dict:
    return {"tasks": ["copy", "reverse", "addition"], "train_min_length": 1, "train_max_length": 3,
            "test_lengths": [2, 4], "num_test_examples": 6, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_steps": 3, "batch_size": 8, "warmup_steps": 1,
            "logging_steps": 1, "eval_batch_size": 6}


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def read_json(path: Path):
    return json.loads(Path(path).read_text())

