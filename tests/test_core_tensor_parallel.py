"""The tensor-parallel plan (Llama's): two CPU processes (torchrun, gloo) shard every encoding's model with
``from_pretrained(..., tp_plan="auto")`` and compute the unsharded model's logits."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENCODINGS, tiny_model
from helpers_multiprocess import free_port


@pytest.mark.slow
def test_tp_plan_auto_shards_every_encoding_on_two_gloo_processes(tmp_path):
    folders = []
    for encoding in ENCODINGS:
        tiny_model(encoding, attn_implementation="sdpa").save_pretrained(tmp_path / encoding)
        folders.append(str(tmp_path / encoding))
    worker = Path(__file__).with_name("tensor_parallel_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(worker), *folders],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("max |sharded - full|") == 2 * len(ENCODINGS)
