"""Fully sharded training on two CPU processes (torch FSDP2 over gloo): train, checkpoint, resume, export."""

import json
import shutil

import pytest
import torch
from helpers_multiprocess import torchrun_train as run_two_processes
from helpers_multiprocess import write_run_config
from safetensors.torch import load_file

from hf_posenc.model.loading import load_model_folder
from hf_posenc.train.checkpoints import complete_checkpoints
from hf_posenc.train.engine import prepare_data
from hf_posenc.train.run_config import load_run_config

CONFIG = """
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 64}}
data: {{name: {data}, block_size: 32}}
tokenizer: {{vocab_size: 300, cache_dir: {cache}}}
training: {{max_steps: 4, per_device_batch_size: 4, lr: 1.0e-2, warmup_steps: 1, logging_steps: 1, eval_steps: 4,
            eval_max_batches: 1, save_steps: 2, save_total_limit: 2, report_to: none, cpu_threads: 1}}
"""


def torchrun_train(config, output_dir, *extra):
    """``hf-posenc train`` in 2 CPU processes with FSDP asked for as ``accelerate launch`` would ask for it."""
    return run_two_processes(config, output_dir, *extra, env={"ACCELERATE_USE_FSDP": "true"}, timeout=300)


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_checkpoints_resumes_and_exports(tmp_path):
    config = write_run_config(tmp_path, CONFIG)

    full = tmp_path / "full"
    first = torchrun_train(config, full)
    assert "Sharding the model with torch FSDP2 across 2 CPU processes" in first.stderr
    assert [step for step, _ in complete_checkpoints(full)] == [2, 4]
    checkpoint = full / "checkpoints" / "checkpoint-4"
    assert {p.name for p in checkpoint.iterdir()} >= {"rng_state_0.safetensors", "rng_state_1.safetensors"}
    assert {p.suffix for p in checkpoint.iterdir()} <= {".safetensors", ".json"}  # no pickle under FSDP either

    # Resume the sharded run from its step-2 checkpoint: the same final weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    (resumed / "model.safetensors").unlink()
    assert "checkpoint-2 (step 2)" in torchrun_train(config, resumed, "--resume").stderr
    expected, got = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)

    # The exported folder is a plain model (our remote code, no FSDP sources) holding the gathered weights...
    names = {p.name for p in full.iterdir()}
    assert "modeling_hf_posenc.py" in names and not any(name.startswith("_fsdp") for name in names)
    exported = load_model_folder(full).eval()
    gathered = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(exported.state_dict()[name], gathered[name]) for name in gathered)
    # ...whose logits are the trained model's: its loss on the validation rows is the one the sharded run logged.
    run_config = load_run_config(full / "run_config.yaml")
    rows = prepare_data(run_config, show_progress=False).eval_blocks[:8]["input_ids"]  # 1 batch x 4 rows x 2 processes
    with torch.no_grad():
        loss = exported(input_ids=rows, labels=rows).loss.item()
    summary = json.loads((full / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and loss == pytest.approx(summary["final_eval_loss"], rel=1e-5)
