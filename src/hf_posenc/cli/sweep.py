"""``hf-posenc sweep``: hyperparameter search per position encoding (docs/length_generalization.md)."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="sweep config, e.g. configs/sweep-tiny.yaml")
    parser.add_argument("--output-dir", metavar="DIR", help="default: output_dir of the config (runs/<name>)")
    parser.add_argument("--search", choices=["grid", "random", "optuna"], help="overrides the config's search method")
    parser.add_argument("--num-trials", type=int, metavar="N", help="overrides num_trials (per encoding)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set run.training.max_steps=20 --set encodings=[rope] (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..train.run_config import parse_set_arguments
    from ..study.sweep import load_sweep_config, run_sweep

    overrides = parse_set_arguments(args.overrides)
    if args.search:
        overrides["search"] = args.search
    if args.num_trials is not None:
        if args.num_trials < 1:
            raise UsageError(f"--num-trials must be >= 1, got {args.num_trials}")
        overrides["num_trials"] = str(args.num_trials)
    config = load_sweep_config(args.config, overrides)
    result = run_sweep(config, args.output_dir, show_progress=not args.no_progress)
    print(result["markdown"])
    print(f"{result['ran']} trial(s) run, {result['reused']} reused from {result['output_dir']}/trials.jsonl; "
          f"plot: {result['plot']}")
    failed = [t for t in result["trials"] if t["status"] == "failed"]
    return 1 if failed else 0
