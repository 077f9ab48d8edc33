"""The model card of a pushed model: the run records read back, the data sources described, the rows and
results rendered through huggingface_hub's ``ModelCard`` with the Jinja template in ``templates/``.

Numbers come only from the run folder's records (``run_folder``); a missing record renders as "not recorded"
and a model without evaluation results says it is not evaluated.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import run_folder
from ..errors import UsageError
from ..model.encodings_hf_posenc import PositionEncoding, position_encoding_class
from ..run_folder import RunRecords, is_measured as _is_measured

CARD_TEMPLATE_NAME = "hf_posenc_model_card.md.j2"
DEFAULT_LICENSE = "apache-2.0"


def check_template(template: str | os.PathLike | None) -> str:
    """The card template's text: the packaged one, or the user's file."""
    if template is None:
        return resources.files("hf_posenc.hub").joinpath("templates", CARD_TEMPLATE_NAME).read_text(encoding="utf-8")
    path = Path(template)
    if not path.is_file():
        raise UsageError(f"template {str(template)!r} is not a file", field="template")
    return path.read_text(encoding="utf-8")


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
    try:
        encoding_class = position_encoding_class(encoding)  # the card describes what the class says
    except ValueError:  # not registered here: the base class's generic words
        encoding_class = PositionEncoding
    rotates = encoding_class.acts_at("rotary")
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
