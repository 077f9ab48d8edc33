"""Share a trained model on the Hugging Face Hub: validate, build the model card, assemble the folder, upload.

``push(model_dir, repo_id, ...)`` runs the whole job in this order:

1. validation, before any work: the repo id, the license id, the model directory (config.json of model_type
   ``hf_posenc`` with a built-in encoding, weights, tokenizer), its run records (run_config.yaml,
   train_summary.json, metrics.jsonl, eval.json: any may be missing, a malformed one is refused), and then
   either the dry-run output folder or the upload preconditions (not offline, a token exists);
2. assembly of the upload folder: the model is loaded with hf_posenc and written with ``save_pretrained``
   (safetensors weights, ``auto_map`` and the flat remote-code files), the tokenizer is re-saved, the small run
   records are copied and README.md is the model card. Pickle files (.bin/.pt/.pth/.pkl, optimizer and RNG
   states, checkpoints/) are never copied; ``verify_upload_folder`` checks the result;
3. ``--dry-run``: the folder is moved into place and nothing is sent. Otherwise it is uploaded with
   ``HfApi.create_repo(exist_ok=True)`` + ``HfApi.upload_folder``; a failure becomes one ``HubUploadError`` line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import run_folder
from ..errors import UsageError
from ..model.encodings_hf_posenc import BUILTIN_POSITION_ENCODINGS as BUILTIN_ENCODINGS, position_encoding_class
from .card import DEFAULT_LICENSE, build_model_card, check_template, read_run_records
from ..run_folder import RUN_RECORD_FILES
REMOTE_CODE_FILES = ("configuration_hf_posenc.py", "modeling_hf_posenc.py", "encodings_hf_posenc.py")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Pickle-based or training-state files: never part of an upload (loading a pickle can run arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# Deleted from the Hub repo in the same commit, so a re-push over an older upload leaves no pickle behind.
STALE_REMOTE_PATTERNS = [f"*{suffix}" for suffix in PICKLE_SUFFIXES] + ["checkpoints/*"]
_ABSOLUTE_PACKAGE_IMPORT = re.compile(r"^\s*(from\s+hf_posenc[\s.]|import\s+hf_posenc\b)", re.MULTILINE)
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\b", re.MULTILINE)
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+\-]*$")


class HubUploadError(Exception):
    """The upload could not be done (offline, no token, network or Hub error). One line, never the token."""


# ---------------------------------------------------------------- validation (before any work)


def check_repo_id(repo_id: str | None) -> str:
    """Refuse anything but a valid ``ORG/NAME`` Hub repo id (a bare NAME would land in whoever owns the token)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id:
        raise UsageError("repo_id is required, in the form ORG/NAME (e.g. my-user/tiny-alibi)", field="repo_id")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        detail = str(error).split(" Use `repo_type`")[0]  # that hint is about the Python API, not this CLI
        raise UsageError(f"repo_id {repo_id!r} is not a valid Hub repo id: {detail}", field="repo_id") from None
    if repo_id.count("/") != 1:
        raise UsageError(
            f"repo_id must be ORG/NAME (your user name or an organization, a slash, the model name), got {repo_id!r}",
            field="repo_id",
        )
    return repo_id


def check_license(license_id: str) -> str:
    if not license_id or not _LICENSE_ID.match(license_id):
        raise UsageError(
            f"license_id must be a Hub license identifier such as apache-2.0, mit, cc-by-4.0 or other, got {license_id!r}",
            field="license_id",
        )
    return license_id


def check_model_dir(model_dir: str | os.PathLike) -> dict:
    """Return config.json of an hf_posenc model directory, or raise UsageError naming what is wrong."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = run_folder.read_model_config(model_dir)
    encoding = config.get("position_encoding")
    try:  # a per-layer pattern is pushed when all its names are built-in
        names = position_encoding_class(encoding).pattern or (encoding,)
    except ValueError:
        names = (encoding,)
    if any(name not in BUILTIN_ENCODINGS for name in names):
        raise UsageError(
            f"{config_path} has position_encoding {encoding!r}; only the built-in encodings {list(BUILTIN_ENCODINGS)} "
            "(and per-layer patterns of them) can be pushed, because the remote code shipped with the model cannot "
            "know encodings registered at runtime"
        )
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"MODEL_DIR {str(model_dir)!r} has no weights (expected one of {list(WEIGHT_FILES)})")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(
            f"MODEL_DIR {str(model_dir)!r} has no tokenizer (expected {' or '.join(TOKENIZER_FILES)}); "
            "downstream users need it to run the model"
        )
    return config


def check_dry_run_dir(out_dir: str | os.PathLike) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"dry_run {str(out_dir)!r} exists and is not an empty directory; choose a new folder",
                         field="dry_run")
    return run_folder.check_writable_dir(out_dir, "dry_run")




def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON ({error}); fix or remove it") from None


# ---------------------------------------------------------------- the upload folder


def assemble_upload_folder(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    license_id: str = DEFAULT_LICENSE,
    template_text: str | None = None,
) -> list[str]:
    """Write into the empty folder `out_dir` exactly what is uploaded; return its relative file paths."""
    from ..model.loading import load_model_folder, load_tokenizer_folder

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = check_model_dir(model_dir)
    records = read_run_records(model_dir, config)

    # Loading and re-saving with the installed hf_posenc writes safetensors (also from a .bin), auto_map and
    # the current remote-code files. Any weight that does not match the config is refused, not re-initialized.
    model = load_model_folder(model_dir, dtype="auto")
    model.save_pretrained(out_dir)

    tokenizer = load_tokenizer_folder(model_dir)
    if len(tokenizer) > model.config.vocab_size:
        raise UsageError(
            f"the tokenizer in {model_dir} has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}"
        )
    tokenizer.save_pretrained(out_dir)

    for name in RUN_RECORD_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    for name in records.eval_variants:  # labelled as variants on the card, never as the model's perplexity
        (out_dir / run_folder.EVAL_VARIANTS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(run_folder.default_eval_path(model_dir, name), run_folder.default_eval_path(out_dir, name))
    card = build_model_card(
        config, records, repo_id, license_id=license_id, num_parameters=model.num_parameters(),
        template_text=template_text,
    )
    card.save(out_dir / "README.md")
    return verify_upload_folder(out_dir)


def verify_upload_folder(folder: str | os.PathLike) -> list[str]:
    """Check an assembled folder (no pickles, weights, auto_map, self-contained remote code); list its files."""
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    pickles = [name for name in files if name.lower().endswith(PICKLE_SUFFIXES) or name.startswith("checkpoints/")]
    if pickles:
        raise RuntimeError(f"refusing to upload pickle or training-state files: {pickles}")
    if "model.safetensors" not in files and "model.safetensors.index.json" not in files:
        raise RuntimeError(f"no safetensors weights in the upload folder: {files}")
    for name in ("config.json", "generation_config.json", "README.md", *REMOTE_CODE_FILES):
        if name not in files:
            raise RuntimeError(f"the upload folder lacks {name}: {files}")
    auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map", {})
    for auto_class in ("AutoConfig", "AutoModelForCausalLM"):
        module = auto_map.get(auto_class, "").split(".")[0]
        if f"{module}.py" not in files:
            raise RuntimeError(f"config.json auto_map[{auto_class!r}] = {auto_map.get(auto_class)!r} has no matching file")
    for name in (name for name in files if name.endswith(".py")):
        source = (folder / name).read_text(encoding="utf-8")
        if _ABSOLUTE_PACKAGE_IMPORT.search(source):
            raise RuntimeError(f"{name} imports hf_posenc absolutely; remote code would fail where it is not installed")
        missing = [module for module in _RELATIVE_IMPORT.findall(source) if f"{module}.py" not in files]
        if missing:
            raise RuntimeError(f"{name} imports sibling module(s) {missing} that are not in the upload folder")
    return files


# ---------------------------------------------------------------- upload


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _upload_errors() -> tuple[type[BaseException], ...]:
    """Network and Hub errors of whichever HTTP client this huggingface_hub uses (httpx, httpx2 or requests)."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]  # OSError covers ConnectionError, OfflineModeIsEnabled
    for module_name, attribute in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _one_line(error: BaseException, token: str | None) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if token:
        text = text.replace(token, "***")
    return f"{type(error).__name__}: {text[:300]}"


def resolve_token() -> str:
    """The Hub token (HF_TOKEN or the `hf auth login` cache), after checking the Hub can be reached at all."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE or _truthy(os.environ.get("HF_HUB_OFFLINE")):
        raise HubUploadError(
            "cannot upload: offline mode is on (HF_HUB_OFFLINE is set); unset it, or make a dry run "
            "(`dry_run` OUT_DIR) to write the folder without sending it"
        )
    try:
        token = get_token()
    except Exception as error:  # e.g. a failed OIDC token exchange (HF_OIDC_RESOURCE set)
        raise HubUploadError(f"cannot upload: no usable Hugging Face token ({type(error).__name__})") from None
    if not token:
        raise HubUploadError("cannot upload: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    return token


def upload_folder_to_hub(folder: Path, repo_id: str, *, token: str, private: bool, commit_message: str) -> str:
    """Create the repo if needed and upload the folder in one commit; return the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        # private=None keeps the Hub's default (public unless the organization says otherwise).
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=folder,
            commit_message=commit_message,
            delete_patterns=STALE_REMOTE_PATTERNS,
        )
    except _upload_errors() as error:
        hint = "" if isinstance(error, HfHubHTTPError) else " (check the network and HF_ENDPOINT, or make a dry run: `dry_run` OUT_DIR)"
        raise HubUploadError(f"upload to {api.endpoint}/{repo_id} failed: {_one_line(error, token)}{hint}") from None
    return getattr(commit, "commit_url", None) or f"{api.endpoint}/{repo_id}"


@dataclass
class PushResult:
    files: list[str]
    folder: Path | None  # the dry-run folder, or None after an upload
    url: str | None  # the commit URL after an upload
    notes: list[str]


def push(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    dry_run: str | os.PathLike | None = None,
    private: bool = False,
    license_id: str = DEFAULT_LICENSE,
    commit_message: str | None = None,
    template: str | os.PathLike | None = None,
) -> PushResult:
    """Validate everything, assemble the upload folder, then write it to `dry_run` or upload it to `repo_id`."""
    check_repo_id(repo_id)
    check_license(license_id)
    config = check_model_dir(model_dir)
    records = read_run_records(model_dir, config)
    template_text = check_template(template)
    build_model_card(config, records, repo_id, license_id=license_id, template_text=template_text)  # renders?
    if dry_run is not None:
        out_dir = check_dry_run_dir(dry_run)
        token = None
    else:
        token = resolve_token()

    if dry_run is not None:
        # Assemble next to the target, then move it into place: a failure leaves no half-written folder.
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        try:
            files = assemble_upload_folder(model_dir, staging, repo_id, license_id=license_id, template_text=template_text)
            if out_dir.exists():
                out_dir.rmdir()  # checked empty above
            staging.rename(out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return PushResult(files, out_dir, None, records.notes)

    message = commit_message or f"Upload hf_posenc model ({config['position_encoding']}) with hf-posenc push"
    with tempfile.TemporaryDirectory(prefix="hf_posenc_push_") as folder:
        files = assemble_upload_folder(model_dir, folder, repo_id, license_id=license_id, template_text=template_text)
        url = upload_folder_to_hub(Path(folder), repo_id, token=token, private=private, commit_message=message)
    return PushResult(files, None, url, records.notes)
