"""``hf-posenc sweep``: hyperparameter search per position encoding (docs/length_generalization.md)."""

from __future__ import annotations

import argparse

from .options import add_config_arguments, add_progress_argument, name_flags, parse_set


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="hyperparameter search (grid, random or optuna) per position encoding; resumable",
        description=(
            "Train one small run per trial (parameters from the config's search space, per encoding), log every "
            "trial to DIR/trials.jsonl, skip trials already logged, and write DIR/results.md (sorted by validation "
            "loss) and DIR/sweep.png."
        ),
    )
    add_config_arguments(parser, config_help="sweep config, e.g. configs/sweep-tiny.yaml", required=True,
                         output_help="default: output_dir of the config (runs/<name>)",
                         set_example="--set run.training.max_steps=20 --set encodings=[rope]")
    parser.add_argument("--search", choices=["grid", "random", "optuna"], help="overrides the config's search method")
    parser.add_argument("--num-trials", type=int, metavar="N", help="overrides num_trials (per encoding)")
    add_progress_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..study.sweep import load_sweep_config, run_sweep

    name_flags(args, {"num_trials": "--num-trials", "search": "--search"})
    overrides = parse_set(args.overrides)
    if args.search:
        overrides["search"] = args.search
    if args.num_trials is not None:
        overrides["num_trials"] = args.num_trials
    config = load_sweep_config(args.config, overrides)
    result = run_sweep(config, args.output_dir, show_progress=not args.no_progress)
    print(result["markdown"])
    print(f"{result['ran']} trial(s) run, {result['reused']} reused from {result['output_dir']}/trials.jsonl; "
          f"plot: {result['plot']}")
    failed = [t for t in result["trials"] if t["status"] == "failed"]
    return 1 if failed else 0
