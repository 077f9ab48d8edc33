"""Build a tiny MODEL_DIR that follows the model directory contract (see docs/hub.md), for the hub tests.

The folder is what `hf-posenc train` (and `hf-posenc eval`) would leave behind, made here without their
code so the hub tests do not depend on the training command:

    config.json, model.safetensors (or pytorch_model.bin), generation_config.json, remote-code .py files
    tokenizer files (a byte-level BPE trained with `tokenizers`, saved as a transformers fast tokenizer)
    run_config.yaml, metrics.jsonl, train_summary.json, optionally eval.json, optionally checkpoints/

Every number written here is computed from the tiny model (losses, perplexities) or counted (tokens,
parameters); nothing is made up.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import hf_posenc  # noqa: F401  (registers the Auto classes and remote code)
from hf_posenc import PosEncConfig, PosEncForCausalLM
from hf_posenc.data.corpus import describe_data  # the data description format of train_summary.json / eval.json

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


def tiny_lm(tokenizer, position_encoding: str, seed: int = 0) -> PosEncForCausalLM:
    torch.manual_seed(seed)
    config = PosEncConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
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
        "stride": None,
        "rope_scaling": None,
        "results": results,
        "tasks": [],
    }


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
        run_config = {
            "position_encoding": position_encoding,
            "data": data,
            "block_size": BLOCK_SIZE,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 1,
            "seed": 0,
            "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
        }
        (path / "run_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False), encoding="utf-8")
        rows = [
            {"step": 1, "loss": train_loss, "lr": 1e-3, "tokens_per_s": 1000.0, "epoch": 0.5},
            {"step": 2, "loss": train_loss, "lr": 5e-4, "tokens_per_s": 1000.0, "epoch": 1.0},
            {"step": 2, "eval_loss": eval_loss},
        ]
        (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        summary = {
            "position_encoding": position_encoding,
            "block_size": BLOCK_SIZE,
            "max_steps": 2,
            "tokens_seen": 2 * BLOCK_SIZE,
            "final_loss": train_loss,
            "final_eval_loss": eval_loss,
            "train_runtime_s": 0.5,
            "data": describe_data(data),
            "num_parameters": model.num_parameters(),
        }
        (path / "train_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if with_eval:
        evaluation = measured_eval(model, token_ids) | {"model_dir": str(path), "data": describe_data(data)}
        (path / "eval.json").write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
    if with_checkpoints:
        checkpoint = path / "checkpoints" / "checkpoint-2"
        checkpoint.mkdir(parents=True)
        torch.save({"state": {}}, checkpoint / "optimizer.pt")
        torch.save({"last_epoch": 2}, checkpoint / "scheduler.pt")
        torch.save({"python": 0}, checkpoint / "rng_state.pth")
        torch.save(model.state_dict(), checkpoint / "pytorch_model.bin")
    return path
