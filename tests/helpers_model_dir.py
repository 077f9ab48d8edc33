"""Build a tiny MODEL_DIR that follows the model directory contract (see docs/hub.md), for the hub tests.

The folder is what `hf-posenc train` (and `hf-posenc eval`) would leave behind, made here without running
them (so the hub tests stay fast), but written through the same run-folder writers and the same nested
RunConfig that training uses, so the fixture cannot drift from what a real run writes:

    config.json, model.safetensors (or pytorch_model.bin), generation_config.json, remote-code .py files
    tokenizer files (a byte-level BPE trained with `tokenizers`, saved as a transformers fast tokenizer)
    run_config.yaml, metrics.jsonl, train_summary.json, optionally eval.json, optionally checkpoints/

Every number written here is computed from the tiny model (losses, perplexities) or counted (tokens,
parameters); nothing is made up.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import hf_posenc  # noqa: F401  (registers the Auto classes and remote code)
from hf_posenc import PosEncConfig, PosEncForCausalLM
from hf_posenc import run_folder
from hf_posenc.data.corpus import data_source_record
from hf_posenc.train.run_config import RunConfig
from tests.conftest import pattern_period

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
BLOCK_SIZE = 32
MAX_POSITIONS = 64  # learned encoding: positions 0..63 only


def sample_text() -> str:
    """A few KB of real text nobody here wrote: the source of the standard library's json package."""
    import json as json_module

    return Path(json_module.__file__).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(sample_text().splitlines(keepends=True), trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()), **SPECIAL_TOKENS)


def layers_for(position_encoding: str) -> int:
    """Two layers, or one period of a per-layer pattern when that is longer."""
    return max(2, pattern_period(position_encoding))


def tiny_lm(tokenizer, position_encoding: str, seed: int = 0) -> PosEncForCausalLM:
    torch.manual_seed(seed)
    config = PosEncConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers_for(position_encoding),
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        position_encoding=position_encoding,
        t5_num_buckets=8,
        t5_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return PosEncForCausalLM(config).eval()


def _loss_on(model, token_ids: list[int]) -> float:
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def measured_eval(model, token_ids: list[int], lengths=(32, 64, 128)) -> dict:
    """An eval.json body with perplexities measured on the first `length` tokens (unsupported past max_positions)."""
    encoding = model.config.position_encoding
    limit = model.config.max_position_embeddings if encoding == "learned" else None
    results = []
    for length in lengths:
        if limit is not None and length > limit:
            reason = f"learned position embeddings cover {limit} positions"
            results.append(
                {"eval_length": length, "perplexity": None, "loss": None, "num_tokens": 0,
                 "status": "unsupported", "reason": reason}
            )
            continue
        loss = _loss_on(model, token_ids[:length])
        results.append(
            {"eval_length": length, "perplexity": math.exp(loss), "loss": loss, "num_tokens": length - 1,
             "status": "ok", "reason": None}
        )
    return {
        "model_dir": None,
        "position_encoding": encoding,
        "train_length": BLOCK_SIZE,
        "data": None,
        "variant": None,
        "split": "validation",
        "stride": None,
        "rope_scaling": None,
        "max_tokens": None,
        "max_windows": None,
        "eval_runtime_s": 0.0,
        "results": results,
        "tasks": [],
    }


def tiny_run_config(position_encoding: str, data: str, vocab_size: int) -> RunConfig:
    """The nested run config a real `hf-posenc train` of this tiny model would save."""
    return RunConfig.from_dict({
        "model": {"position_encoding": position_encoding, "hidden_size": 32, "intermediate_size": 64,
                  "num_hidden_layers": layers_for(position_encoding), "num_attention_heads": 4, "num_key_value_heads": 2,
                  "max_position_embeddings": MAX_POSITIONS, "vocab_size": vocab_size},
        "data": {"name": data, "block_size": BLOCK_SIZE},
        "tokenizer": {"vocab_size": vocab_size},
        "training": {"max_steps": 2, "per_device_batch_size": 1, "lr": 1e-3, "seed": 0, "warmup_steps": 1},
    })


def build_model_dir(
    path: Path,
    position_encoding: str = "alibi",
    *,
    with_eval: bool = False,
    weights: str = "safetensors",
    with_checkpoints: bool = False,
    with_run_files: bool = True,
    data: str = "stdlib",
) -> Path:
    """Write a contract-following MODEL_DIR at `path` and return it.

    weights: "safetensors" (what save_pretrained writes) or "bin" (a legacy pickle checkpoint only).
    with_checkpoints: add checkpoints/checkpoint-2/ with optimizer/scheduler/rng pickles (must never be uploaded).
    with_run_files: write run_config.yaml, metrics.jsonl and train_summary.json.
    """
    path = Path(path)
    tokenizer = tiny_tokenizer()
    model = tiny_lm(tokenizer, position_encoding)
    model.save_pretrained(path)
    if weights == "bin":
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    elif weights != "safetensors":
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")
    tokenizer.save_pretrained(path)

    token_ids = tokenizer(sample_text())["input_ids"]
    if with_run_files:
        train_loss = _loss_on(model, token_ids[:BLOCK_SIZE])
        eval_loss = _loss_on(model, token_ids[BLOCK_SIZE : 2 * BLOCK_SIZE])
        run_folder.write_run_config(path, tiny_run_config(position_encoding, data, len(tokenizer)).to_dict())
        metrics = run_folder.MetricsLog(path / run_folder.METRICS_FILE)
        for step, lr in ((1, 1e-3), (2, 5e-4)):
            metrics.write({"step": step, "loss": train_loss, "lr": lr, "grad_norm": 1.0, "tokens_per_s": 1000.0,
                           "tokens_seen": step * BLOCK_SIZE, "epoch": step / 2, "elapsed_s": 0.25 * step})
        metrics.write({"step": 2, "eval_loss": eval_loss})
        run_folder.write_train_summary(path, {
            "position_encoding": position_encoding,
            "block_size": BLOCK_SIZE,
            "max_steps": 2,
            "steps_completed": 2,
            "stopped_early": False,
            "tokens_seen": 2 * BLOCK_SIZE,
            "final_loss": train_loss,
            "final_eval_loss": eval_loss,
            "train_runtime_s": 0.5,
            "data": data_source_record(data),
            "num_parameters": model.num_parameters(),
            "num_processes": 1,
            "global_batch_size": 1,
            "mixed_precision": "no",
            "vocab_size": len(tokenizer),
        })
    if with_eval:
        evaluation = measured_eval(model, token_ids) | {"model_dir": str(path), "data": data_source_record(data)}
        run_folder.write_eval(path / run_folder.EVAL_FILE, evaluation)
    if with_checkpoints:
        checkpoint = path / "checkpoints" / "checkpoint-2"
        checkpoint.mkdir(parents=True)
        torch.save({"state": {}}, checkpoint / "optimizer.pt")
        torch.save({"last_epoch": 2}, checkpoint / "scheduler.pt")
        torch.save({"python": 0}, checkpoint / "rng_state.pth")
        torch.save(model.state_dict(), checkpoint / "pytorch_model.bin")
    return path
