"""Shared set-up of the multi-process CPU tests: a small real corpus and ``hf-posenc train`` under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from hf_posenc.data.corpus import embedded_corpus_root

# A few standard-library modules: real text, small enough for seconds of training.
SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")


def write_run_config(tmp_path: Path, template: str) -> Path:
    """Copy the corpus into ``tmp_path/corpus`` and write ``template`` (with {data}, {cache}) as run.yaml."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in SOURCE_MODULES:
        (corpus / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    config = tmp_path / "run.yaml"
    config.write_text(template.format(data=corpus, cache=tmp_path / "cache"))
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_train(config: Path, output_dir: Path, *extra: str, env: dict | None = None,
                   timeout: int = 400) -> subprocess.CompletedProcess:
    """``hf-posenc train`` in 2 CPU processes (gloo); asserts it exits 0 and returns the finished process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "hf_posenc.cli", "train", "--config", str(config),
               "--output-dir", str(output_dir), "--no-progress", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return result
