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
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import run_folder
from ..errors import UsageError
from ..model.encodings_hf_posenc import BUILTIN_POSITION_ENCODINGS as BUILTIN_ENCODINGS
from ..model.encodings_hf_posenc import POSITION_ENCODINGS, PositionEncoding
from ..run_folder import RUN_RECORD_FILES, RunRecords, is_measured as _is_measured
REMOTE_CODE_FILES = ("configuration_hf_posenc.py", "modeling_hf_posenc.py", "encodings_hf_posenc.py")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Pickle-based or training-state files: never part of an upload (loading a pickle can run arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# Deleted from the Hub repo in the same commit, so a re-push over an older upload leaves no pickle behind.
STALE_REMOTE_PATTERNS = [f"*{suffix}" for suffix in PICKLE_SUFFIXES] + ["checkpoints/*"]
CARD_TEMPLATE_NAME = "hf_posenc_model_card.md.j2"
DEFAULT_LICENSE = "apache-2.0"
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
    if encoding not in BUILTIN_ENCODINGS:
        raise UsageError(
            f"{config_path} has position_encoding {encoding!r}; only the built-in encodings {list(BUILTIN_ENCODINGS)} "
            "can be pushed, because the remote code shipped with the model cannot know encodings registered at runtime"
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


def check_template(template: str | os.PathLike | None) -> str:
    """The card template's text: the packaged one, or the user's file."""
    if template is None:
        return resources.files("hf_posenc.hub").joinpath("templates", CARD_TEMPLATE_NAME).read_text(encoding="utf-8")
    path = Path(template)
    if not path.is_file():
        raise UsageError(f"template {str(template)!r} is not a file", field="template")
    return path.read_text(encoding="utf-8")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON ({error}); fix or remove it") from None


# ---------------------------------------------------------------- run records (defensive: any may be missing)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run_records(model_dir: str | os.PathLike, config: dict) -> RunRecords:
    """The folder's run records through the one run-folder reader (eval.json checked against ``config``)."""
    return run_folder.read_run_records(model_dir, config.get("position_encoding"))


# ---------------------------------------------------------------- data sources


@dataclass(frozen=True)
class DataSource:
    kind: str  # "embedded" | "local" | "hub" | "unknown"
    name: str | None  # the path, the Hub id, or (unknown) the text as recorded
    config: str | None = None
    python_version: str | None = None  # of the embedded corpus, when recorded

    @property
    def hub_id(self) -> str | None:
        return self.name if self.kind == "hub" else None

    def describe(self) -> str:
        if self.kind == "embedded":
            version = f" {self.python_version}" if self.python_version else ""
            return (
                f"the embedded default corpus of hf_posenc: the Python{version} standard library's own source files "
                "(.py), split into train and validation by file (not a Hub dataset)"
            )
        if self.kind == "local":
            return f"local text files `{self.name}` (not published on the Hub)"
        if self.kind == "hub":
            config = f" (config `{self.config}`)" if self.config else ""
            return f"the Hub dataset [{self.name}](https://huggingface.co/datasets/{self.name}){config}"
        return f"{self.name} (as recorded)" if self.name else "an unrecorded data source"

    def model_index_dataset(self) -> tuple[str, str]:
        """(type, name) of the model-index dataset: a Hub id where there is one, a plain label otherwise."""
        if self.kind == "hub":
            return self.name, self.name
        if self.kind == "embedded":
            return "stdlib", "Python standard library source (hf_posenc embedded corpus)"
        if self.kind == "local":
            return "local-files", Path(self.name).name or self.name
        return "unknown", self.name or "unknown"

    def short(self) -> str:
        if self.kind == "embedded":
            return "Python source code"
        return f"the text of {self.name}" if self.kind == "hub" else "the text it was trained on"


def data_source(data, data_config: str | None = None) -> DataSource:
    """Classify a data value: a ``--data`` argument (as in run_config.yaml) or a recorded description."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from ..data.corpus import EMBEDDED_CORPUS_NAMES, JSON_SUFFIXES, TEXT_SUFFIXES

    if isinstance(data, dict) and "kind" in data:  # a structured record (run_folder.data_record)
        return DataSource(data["kind"], data.get("name"), data.get("config"), data.get("python_version"))
    if isinstance(data, dict):  # a nested data section of a run config
        data_config = data_config or data.get("config") or data.get("data_config")
        data = data.get("name") or data.get("path") or data.get("dataset") or data.get("data")
    if data is None or (isinstance(data, str) and data.strip() in ("", *EMBEDDED_CORPUS_NAMES)):
        return DataSource("embedded", "stdlib")
    if not isinstance(data, str):
        return DataSource("unknown", None)
    data = data.strip()
    if re.match(r"^(stdlib|local|hub):", data):  # the prose records of older releases
        return data_source(run_folder.parse_data_record(data))
    if data.startswith(("/", ".", "~")) or Path(data).suffix in TEXT_SUFFIXES + JSON_SUFFIXES or os.path.exists(data):
        return DataSource("local", data)
    try:
        validate_repo_id(data)
    except HFValidationError:
        return DataSource("unknown", data)
    return DataSource("hub", data, data_config if isinstance(data_config, str) else None)


def eval_data_source(records: RunRecords) -> DataSource:
    """What eval.json measured on (in a record, a missing value means unknown, not the default corpus)."""
    recorded = (records.eval or {}).get("data")
    return data_source(recorded) if recorded else DataSource("unknown", None)


def training_data_source(records: RunRecords) -> DataSource | None:
    """Where the training text came from: train_summary.json's record, else the run config's data setting."""
    recorded = (records.train_summary or {}).get("data")
    if recorded is not None:
        return data_source(run_folder.parse_data_record(recorded))
    run_config = records.run_config or {}
    for key in ("data", "dataset", "data_path"):  # nested section; flat keys of older folders
        if key in run_config:
            return data_source(run_config[key], run_config.get("data_config"))
    return None


# ---------------------------------------------------------------- the model card


def _fmt(value, digits: int = 4) -> str:
    if not _is_number(value):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "overflow (inf)" if value > 0 else str(value)
    return f"{value:.{digits}f}"


def _fmt_duration(seconds) -> str:
    if not _is_number(seconds):
        return str(seconds)
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min" if hours else (f"{int(minutes)} min {secs:.0f} s" if minutes else f"{secs:.1f} s")


def _first(*values):
    """The first recorded (not None) value."""
    return next((value for value in values if value is not None), None)


def _last(rows: list[dict], key: str):
    for row in reversed(rows):
        if _is_number(row.get(key)):
            return row
    return None


def training_rows(records: RunRecords) -> list[tuple[str, str]]:
    """(label, value) pairs for the card's training table; a value that was not recorded is left out."""
    summary = records.train_summary or {}
    last_train, last_eval = _last(records.metrics, "loss"), _last(records.metrics, "eval_loss")
    rows = []

    def add(label, value, formatter=_fmt):
        if value is not None:
            rows.append((label, formatter(value)))

    add("Training sequence length (block size)", _first(summary.get("block_size"), records.setting("data", "block_size")))
    add("Optimizer steps (max_steps)", _first(summary.get("max_steps"), records.setting("training", "max_steps")))
    add("Last logged step", last_train.get("step") if last_train else None)
    add("Sequences per optimizer step (global batch)", summary.get("global_batch_size"))
    add("Per-device batch size", records.setting("training", "per_device_batch_size", "per_device_train_batch_size"))
    add("Gradient accumulation steps", records.setting("training", "gradient_accumulation_steps"))
    add("Tokens seen", summary.get("tokens_seen"))
    add("Learning rate (peak)", records.setting("training", "lr", "learning_rate"),
        lambda value: f"{value:g}" if _is_number(value) else str(value))
    add("Final training loss", _first(summary.get("final_loss"), last_train and last_train["loss"]))
    add("Final validation loss", _first(summary.get("final_eval_loss"), last_eval and last_eval["eval_loss"]))
    add("Training time", summary.get("train_runtime_s"), _fmt_duration)
    return rows


def eval_table_rows(records: RunRecords) -> list[dict]:
    rows = []
    for row in sorted(records.eval["results"], key=lambda row: row["eval_length"]):
        if _is_measured(row):
            rows.append({"length": row["eval_length"], "perplexity": _fmt(float(row["perplexity"]), 2),
                         "loss": _fmt(row["loss"]) if _is_number(row.get("loss")) else "-"})
        elif row.get("status") == "unsupported":
            reason = f" ({row['reason']})" if row.get("reason") else ""
            rows.append({"length": row["eval_length"], "perplexity": f"not supported{reason}", "loss": "-"})
        elif row.get("status") == "ok":  # measured but not finite
            rows.append({"length": row["eval_length"], "perplexity": _fmt(float(row["perplexity"])), "loss": "-"})
        else:
            rows.append({"length": row["eval_length"], "perplexity": f"not available ({row.get('status')})", "loss": "-"})
    return rows


def variant_rows(records: RunRecords) -> list[dict]:
    """Measurements that are not the model's own (eval-time RoPE scaling, other data): one row per length."""
    rows = []
    for name, evaluation in sorted(records.eval_variants.items()):
        scaling = evaluation.get("rope_scaling")
        changes = []
        if scaling:
            changes.append(f"RoPE scaling {scaling.get('rope_type')} x{scaling.get('factor'):g}"
                           if _is_number(scaling.get("factor")) else f"RoPE scaling {scaling.get('rope_type')}")
        source = data_source(evaluation.get("data")) if evaluation.get("data") else None
        if "data-" in name and source is not None:
            changes.append(f"on {source.describe()}")
        if evaluation.get("split") not in (None, "validation"):
            changes.append(f"{evaluation['split']} split")
        for row in sorted(evaluation["results"], key=lambda row: row["eval_length"]):
            if _is_measured(row):
                rows.append({"variant": name, "changes": ", ".join(changes) or name, "length": row["eval_length"],
                             "perplexity": _fmt(float(row["perplexity"]), 2)})
    return rows


def eval_results(records: RunRecords) -> list:
    """One huggingface_hub EvalResult per evaluated length: exactly the perplexities of eval.json."""
    from huggingface_hub import EvalResult

    if not records.ok_results:
        return []
    source = eval_data_source(records)
    dataset_type, dataset_name = source.model_index_dataset()
    results = []
    for row in records.ok_results:
        metric_args = {"eval_length": row["eval_length"]}
        if records.eval.get("stride") is not None:
            metric_args["stride"] = records.eval["stride"]
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Causal language modeling",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_config=source.config,
                metric_type="perplexity",
                metric_name=f"Perplexity @ {row['eval_length']} tokens",
                metric_value=float(row["perplexity"]),
                metric_args=metric_args,
            )
        )
    return results


def architecture_rows(config: dict, num_parameters: int | None) -> list[tuple[str, str]]:
    rows = [
        ("Parameters", _fmt(num_parameters) if num_parameters is not None else None),
        ("Layers", config.get("num_hidden_layers")),
        ("Hidden size", config.get("hidden_size")),
        ("MLP size (SwiGLU)", config.get("intermediate_size")),
        ("Attention heads / key-value heads", f"{config.get('num_attention_heads')} / {config.get('num_key_value_heads')}"),
        ("Vocabulary", config.get("vocab_size")),
        ("max_position_embeddings", config.get("max_position_embeddings")),
        ("Tied input/output embeddings", config.get("tie_word_embeddings")),
    ]
    return [(label, _fmt(value)) for label, value in rows if value is not None]


def build_model_card(
    config: dict,
    records: RunRecords,
    repo_id: str,
    *,
    license_id: str = DEFAULT_LICENSE,
    num_parameters: int | None = None,
    template_text: str | None = None,
):
    """The huggingface_hub ModelCard of a model: metadata in ModelCardData, body from the Jinja template."""
    import jinja2
    import jinja2.meta
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    from ..version import __version__

    template_text = template_text if template_text is not None else check_template(None)
    encoding = config["position_encoding"]
    model_name = repo_id.split("/")[-1]
    train_source = training_data_source(records)
    results = eval_results(records)

    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license_id,
        tags=["hf_posenc", "position-encoding", encoding, "custom_code", "text-generation"],
        datasets=[train_source.hub_id] if train_source and train_source.hub_id else None,
        metrics=["perplexity"] if results else None,
        eval_results=results or None,
    )
    training_data = train_source.describe() if train_source is not None else "not recorded"

    if records.eval is None:
        eval_note = "no eval.json"
    elif not results:
        eval_note = "eval.json holds no successful perplexity measurement"
    else:
        eval_note = None
    train_length = (records.eval or {}).get("train_length") or (records.train_summary or {}).get("block_size")
    encoding_class = POSITION_ENCODINGS.get(encoding, PositionEncoding)  # the card describes what the class says
    rotates = encoding_class.rotary is not PositionEncoding.rotary
    context = dict(
        repo_id=repo_id,
        model_name=model_name,
        encoding=encoding,
        encoding_description=encoding_class.description,
        encoding_citation=encoding_class.citation,
        encoding_formula=encoding_class.formula,
        extrapolates=encoding_class.extrapolates,
        hf_posenc_version=__version__,
        rope_parameters=config.get("rope_parameters") if rotates else None,
        architecture_rows=architecture_rows(config, num_parameters),
        max_position_embeddings=config.get("max_position_embeddings"),
        training_data=training_data,
        training_data_short=train_source.short() if train_source else "its training text",
        training_rows=training_rows(records),
        run_config_yaml=yaml.safe_dump(records.run_config, sort_keys=False).strip() if records.run_config else None,
        evaluated=bool(results),
        eval_note=eval_note,
        eval_rows=eval_table_rows(records) if results else [],
        eval_data=eval_data_source(records).describe() if results else None,
        eval_stride=(records.eval or {}).get("stride"),
        eval_variants=variant_rows(records),
        train_length=_fmt(train_length) if _is_number(train_length) else None,
        tasks=[
            {**task, "accuracy": _fmt(task["accuracy"], 3) if _is_number(task.get("accuracy")) else "-"}
            for task in (records.eval or {}).get("tasks", [])
        ] if results else [],
    )
    # from_template renders with a lenient Jinja: catch a misspelled variable (in a user's --template) here.
    known = set(context) | set(card_data.to_dict()) | {"card_data"}
    unknown = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template_text)) - known
    if unknown:
        raise UsageError(f"the card template uses unknown variable(s) {sorted(unknown)}; known: {sorted(known)}")
    return ModelCard.from_template(card_data, template_str=template_text, **context)


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
