"""``hf-posenc push MODEL_DIR --repo-id ORG/NAME [--private] [--dry-run OUT_DIR]``: share a model on the Hub."""

from __future__ import annotations

import argparse
import sys

from ..hub.upload import DEFAULT_LICENSE, HubUploadError, push
from .options import error_message, name_flags


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a trained model on the Hugging Face Hub (model card, remote code, safetensors)",
        description=(
            "Build the model card from the model's config, run records and eval.json, assemble the folder "
            "(config.json with auto_map, model.safetensors, remote-code .py files, tokenizer, README.md, run "
            "records; never pickle files) and upload it. The token comes from HF_TOKEN or `hf auth login`."
        ),
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="output folder of hf-posenc train (optionally evaluated)")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hub repository, e.g. my-user/tiny-alibi")
    parser.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    parser.add_argument(
        "--dry-run", metavar="OUT_DIR", default=None,
        help="write exactly the folder that would be uploaded to OUT_DIR (new or empty) and send nothing",
    )
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"Hub license id for the card (default {DEFAULT_LICENSE})")
    parser.add_argument("--commit-message", default=None, help="commit message of the upload")
    parser.add_argument("--template", default=None, metavar="PATH", help="a Jinja model card template to use instead of ours")
    parser.set_defaults(handler=run_push)


# library argument -> the flag that sets it (for error messages)
FLAG_NAMES = {"repo_id": "--repo-id", "license_id": "--license", "dry_run": "--dry-run", "template": "--template"}


def run_push(args: argparse.Namespace) -> int:
    name_flags(args, FLAG_NAMES, only_given=False)
    try:
        result = push(
            args.model_dir,
            args.repo_id,
            dry_run=args.dry_run,
            private=args.private,
            license_id=args.license,
            commit_message=args.commit_message,
            template=args.template,
        )
    except HubUploadError as error:
        print(f"hf-posenc push: error: {error_message(error, args.flag_names)}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"hf-posenc push: note: {note}", file=sys.stderr)
    if result.folder is not None:
        print(f"Dry run: wrote {len(result.files)} files to {result.folder} (nothing was uploaded):")
        for name in result.files:
            print(f"  {name}")
    else:
        print(f"Uploaded {len(result.files)} files to {args.repo_id}: {result.url}")
    return 0
