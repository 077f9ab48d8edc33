"""``hf-posenc figures``: draw the figures that explain the position encodings into a folder."""

from __future__ import annotations

import argparse

from .options import name_flags


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "figures",
        help="draw figures that explain the encodings (bias / similarity by distance, attention maps)",
        description=(
            "Per encoding, the attention bias or query-key similarity as a function of relative distance, computed "
            "from the encodings themselves; with --models (trained model folders or a compare output directory) "
            "the learned parameters are used and average attention maps of the trained models are drawn too."
        ),
    )
    parser.add_argument("--output-dir", default="docs/figures", metavar="DIR", help="where the PNGs go (default: docs/figures)")
    parser.add_argument("--models", nargs="+", default=[], metavar="DIR",
                        help="trained model folders, or a folder holding them (e.g. runs/compare-tiny)")
    parser.add_argument("--length", type=int, metavar="N", help="attention-map window length (default: the training length)")
    parser.add_argument("--windows", type=int, default=8, metavar="N", help="validation windows averaged (default: 8)")
    parser.add_argument("--max-distance", type=int, metavar="D", help="largest distance in the profile figure (default: 2 x length)")
    parser.add_argument("--data", metavar="PATH_OR_HUB_NAME", help="text for the attention maps (default: each model's validation data)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..study.figures import draw_figures

    name_flags(args, {"models": "--models"}, only_given=False)

    for name in ("length", "windows", "max_distance"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "length" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be >= {2 if name == 'length' else 1}, got {value}")
    written = draw_figures(args.output_dir, args.models, length=args.length, windows=args.windows, data=args.data,
                           max_distance=args.max_distance, show_progress=not args.no_progress)
    for path in written:
        print(path)
    return 0
