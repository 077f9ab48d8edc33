"""``hf-posenc compare``: train, evaluate and test one model per position encoding (docs/length_generalization.md)."""

from __future__ import annotations

import argparse

from .options import add_config_arguments, add_progress_argument, int_or_text, name_flags, parse_set


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train one model per position encoding, evaluate length generalization, write tables and plots",
        description=(
            "Train one language model per position encoding (same data, budget, seeds and tokenizer), evaluate "
            "perplexity at several lengths, train and test small models on synthetic copy / reverse / addition "
            "tasks, and write DIR/results.json, DIR/results.md and PNG plots. With no arguments it runs the "
            "embedded default (configs/compare-tiny.yaml: CPU, two seeds, aimed at 15 minutes on 2 idle cores) into "
            "runs/compare-tiny. "
            "Finished encodings are reused on rerun."
        ),
    )
    add_config_arguments(parser, config_help="compare config (default: the embedded configs/compare-tiny.yaml)",
                         required=False, output_help="default: output_dir of the config (runs/compare-tiny)",
                         set_example="--set run.training.max_steps=50 --set eval.lengths=[128,256]")
    parser.add_argument("--encodings", metavar="A,B,...", help="only these encodings (comma-separated)")
    parser.add_argument("--overwrite", action="store_true", help="retrain and re-evaluate everything instead of reusing")
    parser.add_argument("--skip-tasks", action="store_true", help="no synthetic tasks")
    parser.add_argument("--skip-figures", action="store_true", help="no encoding / attention figures (plots are still drawn)")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="train and test every encoding with N seeds (default: the config's seeds); tables give mean ± std")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads per process (default: the config's, else the cores divided among workers)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="train and test models in N processes side by side (default: the config's, else one per "
                             "CPU core); the results do not depend on it")
    parser.add_argument("--random-positions", metavar="M",
                        help="also train every encoding with randomized positions (sorted random subsets of [0, M), "
                             "Ruoss et al. 2023) as a variant of its own, <encoding>-randpos; M > the block size and "
                             ">= the longest evaluation length")
    parser.add_argument("--random-positions-encodings", metavar="A,B,...",
                        help="only these encodings get the randomized variant (default: every encoding of the study)")
    add_progress_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..study.compare import load_compare_config, run_compare

    name_flags(args, {"threads": "--threads", "workers": "--workers", "encodings": "--encodings", "random_positions.max": "--random-positions",
                      "random_positions.encodings": "--random-positions-encodings"})
    name_flags(args, {"overwrite": "--overwrite", "output_dir": "--output-dir"}, only_given=False)  # remedies, named in errors
    overrides = parse_set(args.overrides)
    if args.encodings:
        overrides["encodings"] = [e.strip() for e in args.encodings.split(",") if e.strip()]
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.random_positions is not None:
        overrides["random_positions.max"] = int_or_text(args.random_positions)  # a non-integer is refused by name
    if args.random_positions_encodings:
        overrides["random_positions.encodings"] = [e.strip() for e in args.random_positions_encodings.split(",")
                                                   if e.strip()]
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be an integer >= 1, got {args.seeds}")
        overrides["seeds"] = args.seeds
    config = load_compare_config(args.config, overrides)
    result = run_compare(config, args.output_dir, overwrite=args.overwrite, show_progress=not args.no_progress,
                         skip_tasks=args.skip_tasks, skip_figures=args.skip_figures)
    print(result["markdown"])
    print(f"written: {result['output_dir']}/results.json, results.md, timings.json and {len(result['files'])} PNG files")
    return 0
