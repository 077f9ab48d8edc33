"""`hf-posenc bench`: speed and memory of every encoding next to transformers' Llama / GPT-2 / Bloom."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from .options import error_message, name_flags

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _list(text: str) -> list[str]:
    """'a,b c' -> ['a', 'b', 'c'] (commas or spaces)."""
    return [item for item in text.replace(",", " ").split() if item]


def _positive_ints(field: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(item) for item in _list(text))
    except ValueError:
        raise UsageError(f"{field} must be a comma-separated list of positive integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise UsageError(f"{field} must be a comma-separated list of positive integers, got {text!r}")
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark training / decoding speed and memory of every encoding against transformers' models",
        description=(
            "Train-step tokens/s, MFU (GPU) and peak memory, decode tokens/s with the cache, and time/memory against "
            "sequence length, for every position encoding next to transformers' LlamaForCausalLM of the same shape "
            "(and GPT2LMHeadModel with learned, BloomForCausalLM with alibi). Models are timed in interleaved rounds; "
            "figures are medians. See docs/benchmark.md."
        ),
    )
    parser.add_argument("--preset", default="tiny", help="model shape and workload: tiny (CPU) or small-125m (GPU)")
    parser.add_argument("--output", help="write the records here (JSON list); the scaling plot goes next to it")
    parser.add_argument("--summary", help="write {environment, targets} here (JSON)")
    parser.add_argument("--plot", help="scaling plot PNG (default: <output stem>_scaling.png)")
    parser.add_argument("--encodings", default=None, help="comma-separated encodings (default: every registered one)")
    parser.add_argument(
        "--references",
        default="auto",
        help="transformers models to include: auto (hf:llama, + hf:gpt2 with learned, + hf:bloom with alibi), "
        "none, or a comma-separated list",
    )
    parser.add_argument("--modes", default="train,decode,scaling", help="sections to run: train, decode, scaling")
    parser.add_argument("--steps", type=int, default=None, help="timed training rounds (default: 5 on GPU, 9 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warmup steps per model (compilation happens here)")
    parser.add_argument("--attn", default="auto", help="auto | sdpa | flex_attention | eager (auto: see docs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (training; static-cache decode on GPU)")
    parser.add_argument("--compile-models", default=None, help="compile only these models (eager variants are kept)")
    parser.add_argument("--eager-too", action="store_true", help="with --compile, also time every model uncompiled")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="training batch size (preset default)")
    parser.add_argument("--seq-len", type=int, default=None, help="training sequence length (preset default)")
    parser.add_argument("--decode-batches", default=None, help="comma-separated decode batch sizes (preset default)")
    parser.add_argument("--decode-new-tokens", type=int, default=None, help="new tokens per generate call")
    parser.add_argument("--decode-prompt-len", type=int, default=None, help="prompt length for decoding")
    parser.add_argument("--decode-cache", default=None, help="dynamic,static (default: dynamic on CPU, both on GPU)")
    parser.add_argument("--decode-repeats", type=int, default=2, help="timed generate calls per model and batch")
    parser.add_argument("--scaling-lengths", default=None, help="comma-separated sequence lengths (preset default)")
    parser.add_argument("--scaling-encodings", default=None, help="encodings for the scaling table (default: --encodings)")
    parser.add_argument("--scaling-kinds", default="eval,train", help="eval (forward, no grad) and/or train (forward+backward)")
    parser.add_argument("--scaling-repeats", type=int, default=2, help="timed passes per length")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 ceiling for MFU (default 798: an H200's bf16 matmul, docs/benchmark.md)")
    parser.add_argument("--measure-peak", action="store_true", help="measure the 8192^3 matmul ceiling and use it for MFU")
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop timing new rounds / lengths after this")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def _resolve_device(text: str):
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text not in ("cpu", "cuda") and not text.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {text} was asked for, but torch.cuda.is_available() is False on this machine")
    return torch.device(text)


# library argument -> the flag that sets it (for error messages)
FLAG_NAMES = {"preset": "--preset", "references": "--references", "encodings": "--encodings", "attn": "--attn",
              "modes": "--modes"}


def build_options(args):
    """The ``BenchOptions`` of the parsed flags; every flag is checked here, before any model is built."""
    import torch

    from ..bench.runner import DEFAULT_PEAK_TFLOPS, BenchOptions

    device = _resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    _check_numbers(args)
    encodings, references, names, modes = _models_and_modes(args)
    preset = _preset(args, encodings, modes)
    compile_models, eager_too = _compile_choice(args, names)
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else DEFAULT_PEAK_TFLOPS
    if peak_tflops <= 0:
        raise UsageError(f"--peak-tflops must be positive, got {peak_tflops}")
    return BenchOptions(
        preset=preset,
        encodings=encodings,
        references=references,
        modes=modes,
        device=device,
        dtype=getattr(torch, dtype_name),
        attn=args.attn,
        compile_models=compile_models,
        eager_too=eager_too,
        warmup_steps=args.warmup,
        steps=args.steps if args.steps is not None else (5 if device.type == "cuda" else 9),
        decode_repeats=args.decode_repeats,
        decode_caches=_decode_caches(args, device),
        scaling_encodings=_validated_encodings(args.scaling_encodings) if args.scaling_encodings else None,
        scaling_kinds=_subset("--scaling-kinds", args.scaling_kinds, ("eval", "train")),
        scaling_repeats=args.scaling_repeats,
        peak_tflops=peak_tflops,
        time_budget_s=args.time_budget_s,
        seed=args.seed,
        progress=not args.no_progress,
    )


def _check_numbers(args) -> None:
    from ..bench.models import ATTN_CHOICES

    if args.attn not in ATTN_CHOICES:
        raise UsageError(f"--attn must be one of {list(ATTN_CHOICES)}, got {args.attn!r}")
    for field in ("steps", "warmup", "batch", "seq_len", "decode_new_tokens", "decode_prompt_len", "decode_repeats",
                  "scaling_repeats", "threads"):
        value = getattr(args, field)
        if value is not None and value < (0 if field == "warmup" else 1):
            raise UsageError(f"--{field.replace('_', '-')} must be a positive integer, got {value}")
    if args.time_budget_s is not None and args.time_budget_s <= 0:
        raise UsageError(f"--time-budget-s must be positive, got {args.time_budget_s}")


def _validated_encodings(text: str) -> list[str]:
    from ..bench.models import validate_encodings

    return validate_encodings(_list(text))


def _models_and_modes(args):
    """(encodings, references (None: automatic), model names, modes) of the flags."""
    from ..bench.models import MODES, model_names
    from ..model.encodings_hf_posenc import available_position_encodings

    encodings = _validated_encodings(args.encodings) if args.encodings else list(available_position_encodings())
    references = {"auto": None, "none": []}.get(args.references)
    if args.references not in ("auto", "none"):
        references = _list(args.references)
    names = model_names(encodings, references)  # validates --references
    return encodings, references, names, _subset("--modes", args.modes, MODES)


def _subset(flag: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(_list(text))
    if not chosen or any(item not in allowed for item in chosen):
        raise UsageError(f"{flag} must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return chosen


def _preset(args, encodings: list[str], modes: tuple[str, ...]):
    from ..bench.models import get_preset

    preset = get_preset(
        args.preset,
        train_batch=args.batch,
        train_seq_len=args.seq_len,
        decode_batches=_positive_ints("--decode-batches", args.decode_batches),
        decode_new_tokens=args.decode_new_tokens,
        decode_prompt_len=args.decode_prompt_len,
        scaling_lengths=_positive_ints("--scaling-lengths", args.scaling_lengths),
    )
    longest = max(preset.train_seq_len, preset.decode_prompt_len + preset.decode_new_tokens)
    if "learned" in encodings and longest > preset.shape["max_position_embeddings"] and ("train" in modes or "decode" in modes):
        raise UsageError(
            f"--seq-len / decode lengths up to {longest} exceed max_position_embeddings="
            f"{preset.shape['max_position_embeddings']} of preset {preset.name!r}, which learned positions cannot go past"
        )
    return preset


def _compile_choice(args, names: list[str]) -> tuple[list[str], bool]:
    """(models to compile, whether uncompiled variants are timed too)."""
    if args.compile_models is None:
        return (list(names) if args.compile else []), args.eager_too or not args.compile
    compile_models = _list(args.compile_models)
    unknown = [name for name in compile_models if name not in names]
    if unknown:
        raise UsageError(f"--compile-models must be among the benchmarked models {names}, got {unknown}")
    return compile_models, True


def _decode_caches(args, device) -> tuple[str, ...]:
    if not args.decode_cache:
        return ("dynamic", "static") if device.type == "cuda" else ("dynamic",)
    return _subset("--decode-cache", args.decode_cache, ("dynamic", "static"))


def run(args) -> int:
    import torch

    from ..bench.runner import environment, run_benchmark
    from ..bench.measure import measure_matmul_tflops
    from ..bench.report import add_ratios, evaluate_targets, format_table, format_targets, plot_scaling, write_json

    from ..run_folder import check_writable_file

    for flag in ("output", "plot", "summary"):  # found now, not after minutes of measuring
        if getattr(args, flag, None):
            check_writable_file(getattr(args, flag), f"--{flag}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name_flags(args, FLAG_NAMES, only_given=False)
    options = build_options(args)
    measured_peak = None
    if args.measure_peak:
        if options.device.type != "cuda":
            raise UsageError("--measure-peak needs a GPU (MFU is only reported on GPU)")
        measured_peak = measure_matmul_tflops(options.device, torch.bfloat16)
        print(f"measured bf16 8192^3 matmul: {measured_peak:.0f} TFLOP/s (used for MFU)")
        options.peak_tflops = measured_peak

    records = add_ratios(run_benchmark(options))
    print(format_table(records))
    targets = evaluate_targets(records, options.device.type)
    print()
    print(format_targets(targets))
    if args.output:
        path = write_json(records, args.output)
        print(f"records: {path}")
        plot_path = args.plot or str(Path(args.output).with_name(Path(args.output).stem + "_scaling.png"))
        if plot_scaling(records, plot_path):
            print(f"scaling plot: {plot_path}")
    elif args.plot and plot_scaling(records, args.plot):
        print(f"scaling plot: {args.plot}")
    if args.summary:
        summary = {"environment": environment(options), "peak_tflops": options.peak_tflops,
                   "measured_peak_tflops": measured_peak, "targets": targets}
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"summary: {args.summary}")
    failed = [r for r in records if r.get("status") not in ("ok", "skipped")]
    return 1 if failed and len(failed) == len(records) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hf_posenc.cli.bench ...``: the bench command alone, without importing the other commands
    (the GPU check script uses it on machines that lack the training stack's optional packages)."""
    import sys

    parser = argparse.ArgumentParser(prog="hf-posenc")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"hf-posenc bench: error: {error_message(error, getattr(args, 'flag_names', None))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
