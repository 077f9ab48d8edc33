"""``hf-posenc train``: pretrain a causal LM from a YAML run config (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
import sys

from .options import add_config_arguments, add_progress_argument, name_flags, parse_set


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML run config (CPU, one GPU, or many with accelerate launch)",
        description=(
            "Train a causal LM with the position encoding of your choice. The output directory is a "
            "from_pretrained-ready folder (model, tokenizer, run_config.yaml, metrics.jsonl, train_summary.json) "
            "with resumable checkpoints under checkpoints/."
        ),
    )
    parser.add_argument("--position-encoding", metavar="NAME", help="overrides model.position_encoding")
    parser.add_argument("--max-steps", type=int, metavar="N", help="overrides training.max_steps")
    parser.add_argument("--save-steps", type=int, metavar="N", help="overrides training.save_steps (0: no checkpoints)")
    parser.add_argument("--data", metavar="PATH_OR_HUB_NAME", help="overrides data.name: 'stdlib', a .txt/.jsonl file or folder, or a Hub dataset")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output-dir")
    add_config_arguments(parser, config_help="run config, e.g. configs/tiny.yaml", required=True,
                         output_help="default: output_dir from the config, else runs/<config>-<encoding>",
                         set_example="--set training.lr=1e-3 --set model.num_hidden_layers=2")
    add_progress_argument(parser)
    parser.set_defaults(handler=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The dotted overrides of the convenience flags, then --set (which wins)."""
    overrides = {}
    for flag, key in (
        ("position_encoding", "model.position_encoding"),
        ("max_steps", "training.max_steps"),
        ("save_steps", "training.save_steps"),
        ("data", "data.name"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    overrides.update(parse_set(args.overrides))
    return overrides


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..train.run_config import load_run_config
    from ..train.engine import TrainingDiverged, train

    name_flags(args, {"output_dir": "--output-dir", "resume": "--resume", "overwrite": "--overwrite"}, only_given=False)
    config = load_run_config(args.config, overrides_from_args(args))
    try:
        summary = train(config, args.output_dir, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress)
    except TrainingDiverged as error:
        print(f"hf-posenc train: error: {error}", file=sys.stderr)
        return 1
    if PartialState().is_main_process:  # one summary per run, not one per process
        print(json.dumps(summary, indent=2))
    return 0
