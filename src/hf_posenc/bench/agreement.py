"""Do the fast paths compute what eager attention computes? Checks for any device and dtype.

For each encoding and fast path (SDPA, FlexAttention, torch.compile of a training step, decoding with the cache)
the same model (same weights, same batch) runs the fast path and the eager reference, and the difference is
recorded. In float32 the bar is a tight absolute tolerance. In bfloat16 both the fast path and eager are
compared to a float32 eager run of the same weights, and the fast path passes when its error is at most
``BF16_ERROR_FACTOR`` times eager's own bf16 error plus a small floor (2% of the reference RMS; 0.2% of the
loss): rounding differs between kernels, while a real bug (a dropped bias, a wrong mask or offset) gives errors
tens of times larger (a dropped ALiBi bias: logits off by 1.4 against a tolerance of 0.04).

Run as ``python -m hf_posenc.bench.agreement --device cuda --dtype bfloat16 --output agreement.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from ..model.encodings_hf_posenc import position_encoding_class
from .models import build_model, encoding_has_score_bias

FP32_ATOL = 1e-4
BF16_ERROR_FACTOR = 3.0
BF16_FLOOR = 2e-2  # relative to the RMS of the float32 reference
BF16_SCALAR_FLOOR = 2e-3  # relative to the float32 loss

# A small GQA model: enough heads and length for FlexAttention blocks to matter, quick to compile.
AGREEMENT_SHAPE = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=512,
)


def _tokens(batch: int, length: int, device, seed: int = 1) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, AGREEMENT_SHAPE["vocab_size"], (batch, length), generator=generator).to(device)


def _padded_batch(device, length: int):
    ids = _tokens(3, length, device)
    mask = torch.ones_like(ids)
    mask[0, : length // 3] = 0  # left padding
    mask[2, -(length // 4) :] = 0  # right padding
    return ids.masked_fill(mask == 0, 0), mask


def _error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).abs().max())


def _rms(tensor: torch.Tensor) -> float:
    return float(tensor.float().pow(2).mean().sqrt())


class Judge:
    """Turns (fast, eager, float32 reference) results into a pass/fail record."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def record(self, name, fast, eager, reference, **fields) -> dict:
        fast_error = _error(fast, reference)
        eager_error = _error(eager, reference)
        if self.dtype == torch.float32:
            tolerance = FP32_ATOL * max(1.0, _rms(reference))
        else:  # a scalar (the loss) gets a tighter floor: 2% of its value would hide real differences
            floor = BF16_FLOOR * _rms(reference) if reference.numel() > 1 else BF16_SCALAR_FLOOR * abs(float(reference))
            tolerance = BF16_ERROR_FACTOR * eager_error + floor
        return {
            "check": name,
            **fields,
            "max_abs_error": fast_error,
            "eager_max_abs_error": eager_error,
            "tolerance": tolerance,
            "ok": bool(fast_error <= tolerance),
        }


def _model(encoding: str, attn: str, device, dtype, reference_dtype=None):
    # A per-layer pattern gets at least one whole period of layers, so that every part is checked.
    period = len(position_encoding_class(encoding).pattern or ())
    shape = {**AGREEMENT_SHAPE, "num_hidden_layers": max(AGREEMENT_SHAPE["num_hidden_layers"], period)}
    return build_model(f"hf_posenc:{encoding}", shape, attn, device, reference_dtype or dtype, seed=0)


def _with_dtype_and_attn(model, attn: str, dtype):
    other = copy.deepcopy(model).to(dtype)
    other.set_attn_implementation(attn)
    return other


def check_forward(encoding: str, backend: str, device, dtype, length: int) -> list[dict]:
    """Logits on a padded batch and an unpadded one (where SDPA uses is_causal / flex a plain causal block mask)."""
    judge = Judge(dtype)
    reference = _model(encoding, "eager", device, dtype, reference_dtype=torch.float32).eval()
    eager = _with_dtype_and_attn(reference, "eager", dtype)
    fast = _with_dtype_and_attn(reference, backend, dtype)
    records = []
    ids, mask = _padded_batch(device, length)
    real = mask.bool()
    unpadded = _tokens(2, length, device, seed=2)
    with torch.no_grad():
        outputs = [model(ids, attention_mask=mask).logits[real] for model in (fast, eager, reference)]
        records.append(judge.record("forward_padded", *outputs, encoding=encoding, backend=backend))
        outputs = [model(unpadded).logits for model in (fast, eager, reference)]
        records.append(judge.record("forward", *outputs, encoding=encoding, backend=backend))
    return records


def _loss_and_grads(model, ids):
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads


def check_training(encoding: str, backend: str, device, dtype, length: int, compiled: bool = False) -> list[dict]:
    """Loss and the flattened gradient of one training step: fast path (optionally compiled) vs eager."""
    judge = Judge(dtype)
    reference = _model(encoding, "eager", device, dtype, reference_dtype=torch.float32)
    eager = _with_dtype_and_attn(reference, "eager", dtype)
    fast = _with_dtype_and_attn(reference, backend, dtype)
    ids = _tokens(2, length, device, seed=3)
    start = time.perf_counter()
    runner = torch.compile(fast) if compiled else fast
    fast_loss, fast_grads = _loss_and_grads(runner, ids)
    first_step_s = time.perf_counter() - start
    eager_loss, eager_grads = _loss_and_grads(eager, ids)
    ref_loss, ref_grads = _loss_and_grads(reference, ids)
    fields = dict(encoding=encoding, backend=backend, compiled=compiled)
    loss_record = judge.record("train_loss", fast_loss, eager_loss, ref_loss, **fields)
    grad_record = judge.record("train_grads", fast_grads, eager_grads, ref_grads, **fields)
    if compiled:
        loss_record["first_step_s"] = first_step_s  # compile time included
    return [loss_record, grad_record]


def check_decode(encoding: str, backend: str, device, dtype, length: int, steps: int = 8) -> list[dict]:
    """Logits of step-by-step decoding with a dynamic cache vs one forward over the whole sequence (eager)."""
    from transformers import DynamicCache

    judge = Judge(dtype)
    reference = _model(encoding, "eager", device, dtype, reference_dtype=torch.float32).eval()
    eager = _with_dtype_and_attn(reference, "eager", dtype)
    fast = _with_dtype_and_attn(reference, backend, dtype)
    ids = _tokens(2, length + steps, device, seed=4)
    with torch.no_grad():
        # logits at position p predict token p + 1: the prefill's last row is position length - 1
        full = [model(ids).logits[:, length - 1 : length + steps - 1] for model in (eager, reference)]
        cache = DynamicCache(config=fast.config)
        step_logits = [fast(ids[:, :length], use_cache=True, past_key_values=cache).logits[:, -1:]]
        for index in range(length, length + steps - 1):
            step_logits.append(fast(ids[:, index : index + 1], use_cache=True, past_key_values=cache).logits)
        cached = torch.cat(step_logits, dim=1)
    return [judge.record("decode_with_cache", cached, full[0], full[1], encoding=encoding, backend=backend)]


def run_agreement(
    encodings: list[str],
    device: torch.device,
    dtype: torch.dtype,
    backends: tuple[str, ...] = ("sdpa", "flex_attention"),
    flex_encodings: list[str] | None = None,
    compile_encodings: list[str] | None = None,
    length: int = 256,
    time_budget_s: float | None = None,
    log=print,
) -> list[dict]:
    """Every check for every encoding; ``flex_encodings`` limits FlexAttention (None: bias encodings and nope)."""
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    if flex_encodings is None:
        flex_encodings = [e for e in encodings if e == "nope" or encoding_has_score_bias(e)]
    # Order: SDPA for everything (cheap), compiled training steps, then FlexAttention in eager mode (each shape
    # compiles its own kernels), so that a time budget cuts the least informative checks.
    plan = []
    for backend in backends:
        if backend == "flex_attention":
            continue
        for encoding in encodings:
            plan += [(check_forward, encoding, backend, {}), (check_training, encoding, backend, {}),
                     (check_decode, encoding, backend, {})]
    for encoding in compile_encodings or []:
        backend = "flex_attention" if device.type == "cuda" and encoding in flex_encodings else "sdpa"
        plan.append((check_training, encoding, backend, {"compiled": True}))
    if "flex_attention" in backends:
        for encoding in (e for e in encodings if e in flex_encodings):
            plan.append((check_forward, encoding, "flex_attention", {}))
            if device.type == "cuda":  # FlexAttention has no CPU backward
                plan.append((check_training, encoding, "flex_attention", {}))
            plan.append((check_decode, encoding, "flex_attention", {}))

    records = []
    for check, encoding, backend, extra in plan:
        name = f"{check.__name__}({encoding}, {backend}{', compiled' if extra else ''})"
        if deadline is not None and time.monotonic() > deadline:
            records.append({"check": check.__name__, "encoding": encoding, "backend": backend, **extra,
                            "ok": None, "status": "skipped", "reason": "time budget reached"})
            log(f"SKIP  {name}: time budget reached")
            continue
        start = time.perf_counter()
        try:
            results = check(encoding, backend, device, dtype, length, **extra)
        except Exception as error:  # noqa: BLE001 - report and go on with the other checks
            results = [{"check": check.__name__, "encoding": encoding, "backend": backend, **extra, "ok": False,
                        "status": "error", "reason": f"{type(error).__name__}: {str(error)[:500]}"}]
        elapsed = time.perf_counter() - start
        for result in results:
            result.setdefault("status", "ok" if result["ok"] else "mismatch")
            result["seconds"] = elapsed
            result["dtype"] = str(dtype).replace("torch.", "")
            result["device"] = device.type
            verdict = {True: "OK", False: "FAIL", None: "SKIP"}[result["ok"]]
            detail = result.get("reason") or (
                f"error {result['max_abs_error']:.3g} (eager {result['eager_max_abs_error']:.3g}, "
                f"tolerance {result['tolerance']:.3g})"
            )
            log(f"{verdict:5} {result['check']}({encoding}, {backend}{', compiled' if extra else ''}): {detail} [{elapsed:.1f}s]")
        records.extend(results)
    return records


def main(argv: list[str] | None = None) -> int:
    from ..model.encodings_hf_posenc import available_position_encodings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--encodings", default=",".join(available_position_encodings()))
    parser.add_argument("--backends", default="sdpa,flex_attention")
    parser.add_argument("--flex-encodings", default=None, help="default: nope and the bias encodings")
    parser.add_argument("--compile-encodings", default="", help="also check a compiled training step for these")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--time-budget-s", type=float, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    def split(text):
        return [item for item in text.replace(",", " ").split() if item]

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    records = run_agreement(
        split(args.encodings),
        device,
        dtype,
        backends=tuple(split(args.backends)),
        flex_encodings=split(args.flex_encodings) if args.flex_encodings is not None else None,
        compile_encodings=split(args.compile_encodings),
        length=args.length,
        time_budget_s=args.time_budget_s,
        log=lambda line: print(line, flush=True),
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(records, indent=2) + "\n")
    failed = [r for r in records if r["ok"] is False]
    print(f"{len(records) - len(failed)} of {len(records)} checks passed or skipped; {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
