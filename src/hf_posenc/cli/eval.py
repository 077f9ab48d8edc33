"""``hf-posenc eval``: perplexity of a trained model at several evaluation lengths (docs/length_generalization.md)."""

from __future__ import annotations

import argparse

from ..errors import SettingsError
from .options import add_progress_argument, int_or_text, name_flags

# library argument -> the flag that sets it (for error messages)
FLAG_NAMES = {name: "--" + name.replace("_", "-") for name in
              ("lengths", "stride", "max_tokens", "max_windows", "batch_size", "rope_scaling", "rope_factor")}


def parse_lengths(text: str) -> list:
    """``"256,512"`` -> ``[256, 512]``; items that are not integers are passed on for the library to refuse."""
    items = [int_or_text(part) for part in text.split(",")]
    if items == [""]:
        raise SettingsError("--lengths needs at least one evaluation length, e.g. --lengths 256,512,1024", field="lengths")
    return items


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity at several evaluation lengths (length generalization), written to MODEL_DIR/eval.json",
        description=(
            "Score held-out text in windows of each evaluation length and report perplexity per length. "
            "Lengths the position encoding cannot represent (learned beyond max_position_embeddings) are reported "
            "as 'unsupported'. Writes MODEL_DIR/eval.json (or --output); with --rope-scaling, --data other than "
            "the training data or --split train it writes MODEL_DIR/eval_variants/<variant>.json instead, so "
            "eval.json always holds the model's own measurement."
        ),
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by hf-posenc train")
    parser.add_argument("--lengths", default="256,512,1024,2048", metavar="L1,L2,...",
                        help="comma-separated evaluation lengths in tokens (default: 256,512,1024,2048)")
    parser.add_argument("--data", metavar="PATH_OR_HUB_NAME",
                        help="evaluation text: 'stdlib', a .txt/.jsonl file or folder, or a Hub dataset "
                             "(default: the model's training data, from run_config.yaml)")
    parser.add_argument("--data-config", metavar="NAME", help="Hub dataset configuration")
    parser.add_argument("--text-field", metavar="FIELD", help="JSON / Hub column with the text (default: the run's)")
    parser.add_argument("--split", default="validation", choices=["validation", "train"],
                        help="which split of the data to score (default: validation)")
    parser.add_argument("--stride", metavar="N",
                        help="sliding windows that advance N tokens (each scored token sees >= L - N tokens of context); "
                             "default: non-overlapping windows")
    parser.add_argument("--rope-scaling", choices=["linear", "dynamic", "yarn"],
                        help="RoPE scaling applied at evaluation time (rope models only), via transformers' RoPE utilities")
    parser.add_argument("--rope-factor", type=float, metavar="F",
                        help="RoPE scaling factor (>= 1; needs --rope-scaling; default: longest length / training length)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-tokens", metavar="N", help="score about N tokens per length (whole windows) to bound cost")
    budget.add_argument("--max-windows", metavar="N", help="score at most N windows per length")
    parser.add_argument("--batch-size", default="8", metavar="N", help="windows per forward pass (default: 8)")
    parser.add_argument("--output", metavar="FILE.json", help="where to write the results (default: MODEL_DIR/eval.json, or "
                        "MODEL_DIR/eval_variants/<variant>.json for RoPE scaling / other data / the train split)")
    parser.add_argument("--device", metavar="DEVICE", help="torch device (default: cuda if available, else cpu)")
    add_progress_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.perplexity import evaluate_model_dir, format_eval_table

    name_flags(args, FLAG_NAMES, only_given=False)  # every setting of this command comes from a flag
    evaluation = evaluate_model_dir(
        args.model_dir,
        parse_lengths(args.lengths),
        data=args.data,
        data_config=args.data_config,
        text_field=args.text_field,
        split=args.split,
        stride=int_or_text(args.stride),
        rope_scaling=args.rope_scaling,
        rope_factor=args.rope_factor,
        max_tokens=int_or_text(args.max_tokens),
        max_windows=int_or_text(args.max_windows),
        batch_size=int_or_text(args.batch_size),
        output=args.output,
        device=args.device,
        show_progress=not args.no_progress,
    )
    print(format_eval_table(evaluation))
    from ..run_folder import default_eval_path

    print(f"\nwritten: {args.output or default_eval_path(args.model_dir, evaluation['variant'])}")
    if evaluation["variant"] is not None:
        print(f"(a variant, {evaluation['variant']!r}: the model's own measurement in eval.json is left as it was)")
    return 0
