"""Run by torchrun (2 CPU processes, gloo) from test_core_tensor_parallel.py: for each saved model folder, load it
with ``tp_plan="auto"`` and check that the sharded model's logits equal the unsharded model's."""

import sys

import torch
from transformers import AutoModelForCausalLM

import hf_posenc  # noqa: F401  (registers the Auto classes)

for folder in sys.argv[1:]:
    sharded = AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto")
    full = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.randint(3, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (sharded(ids).logits - full(ids).logits).abs().max().item()
    local = {n: p.to_local() if hasattr(p, "to_local") else p for n, p in sharded.named_parameters()}  # DTensor or not
    split = [n for n, p in local.items() if p.shape != full.get_parameter(n).shape]
    print(f"{folder}: max |sharded - full| = {difference:.2e}, split parameters {len(split)}", flush=True)
    assert difference < 1e-5, folder
    assert {f"model.layers.0.self_attn.{name}_proj.weight" for name in "qkvo"} <= set(split), split
