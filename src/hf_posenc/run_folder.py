"""The run-folder format: every file name and schema of a model folder, one writer and one reader each.

A model folder (what ``hf-posenc train`` writes, what ``eval``, ``compare``, ``figures`` and ``push`` read):

    config.json, model.safetensors, tokenizer files, remote code   written by save_pretrained (the model layer)
    run_config.yaml       the nested run config (model / data / tokenizer / training sections)
    train_summary.json    what the run did; ``data`` is a structured record (see ``data_record``)
    metrics.jsonl         one JSON object per line: training rows (``loss``) and validation rows (``eval_loss``)
    eval.json             the model's own perplexity by length, measured on its training data without any
                          eval-time change (``hf-posenc eval MODEL_DIR``); task accuracies under ``tasks``
    eval_variants/<name>.json   measurements with eval-time RoPE scaling or other data: never eval.json
    checkpoints/          resumable training state (see hf_posenc.train.checkpoints)
    .hf_posenc.lock       held by the process writing the folder (see ``RunLock``)

A study folder (``hf-posenc compare``):

    compare_config.yaml   the resolved compare config
    <encoding>/           one model folder per encoding (above)
    <encoding>-randpos/   the same encoding trained with randomized positions (a compare option), when asked for
    tasks/<encoding>/     the task model of each encoding, with eval.json holding its task accuracies in ``tasks``
    results.json          the records read back from the model folders; timings.json; results.md

``hf-posenc sweep`` appends one JSON object per trial to ``trials.jsonl`` (read like metrics.jsonl). Every reader raises ``UsageError`` naming the file and what is wrong;
files written by older releases (a flat run config, a data source stored as prose) still read.
This module imports nothing from hf_posenc above ``errors``. It is longer than our usual 400 lines on
purpose: it is the one place that owns the folder format, and splitting it would scatter the format again.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

# ---- file names --------------------------------------------------------------------------------------------
RUN_CONFIG_FILE = "run_config.yaml"
SUMMARY_FILE = "train_summary.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
EVAL_VARIANTS_DIR = "eval_variants"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
LOCK_FILE = ".hf_posenc.lock"
PREVIOUS_RUN_PREFIX = ".previous-run-"
TASK_SUMMARY_FILE = "task_summary.json"
POSITION_LOSS_FILE = "position_loss.json"  # loss by position inside the evaluation window
PASSKEY_FILE = "passkey.json"  # a passkey model's accuracy by context length and depth
# Files that mark a folder as holding a run (refused without --resume / --overwrite).
RUN_ARTIFACTS = (METRICS_FILE, SUMMARY_FILE, RUN_CONFIG_FILE, CHECKPOINTS_DIR, "model.safetensors", LOGS_DIR,
                 EVAL_FILE, EVAL_VARIANTS_DIR)
# The small records a published model carries next to its weights.
RUN_RECORD_FILES = (RUN_CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, EVAL_FILE)

DATA_KINDS = ("embedded", "local", "hub", "synthetic", "unknown")
# The keys of train_summary.json (written by the training engine; a writer that forgets one is a bug).
SUMMARY_KEYS = ("position_encoding", "block_size", "max_steps", "steps_completed", "stopped_early", "tokens_seen",
                "final_loss", "final_eval_loss", "train_runtime_s", "data", "num_parameters", "num_processes",
                "global_batch_size", "mixed_precision", "vocab_size")
# The keys of a training row of metrics.jsonl (validation rows are {"step", "eval_loss"}).
TRAIN_ROW_KEYS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "epoch", "elapsed_s")
# The keys of eval.json (and of each eval_variants/ file).
EVAL_KEYS = ("model_dir", "position_encoding", "train_length", "data", "variant", "split", "stride", "rope_scaling",
             "max_tokens", "max_windows", "eval_runtime_s", "results", "tasks")


# A study folder (hf-posenc compare / sweep).
COMPARE_CONFIG_FILE = "compare_config.yaml"
STUDY_RESULTS_FILE = "results.json"
STUDY_TIMINGS_FILE = "timings.json"
STUDY_MARKDOWN_FILE = "results.md"
STUDY_TASKS_DIR = "tasks"
RANDOM_POSITIONS_SUFFIX = "-randpos"  # <encoding>-randpos/: that encoding trained with randomized positions
TRIALS_FILE = "trials.jsonl"


# ---- low-level reading and writing -------------------------------------------------------------------------
def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write through a temporary file and a rename: a reader (or a kill) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text (byte {error.start}); it is damaged or not an hf_posenc file") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot be read ({error.strerror or error})") from None


def read_json_object(path: str | os.PathLike, what: str = "a JSON object") -> dict:
    """A JSON file that must hold an object; UsageError naming the file otherwise."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise UsageError(f"{path}: the file is empty (expected {what})")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno}); fix or remove it") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected {what}, got a JSON {type(loaded).__name__}")
    return loaded


def write_json(path: str | os.PathLike, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


# ---- position_loss.json and passkey.json --------------------------------------------------------------------
POSITION_LOSS_KEYS = ("position_encoding", "train_length", "max_windows", "eval_runtime_s", "results")
PASSKEY_KEYS = ("position_encoding", "settings", "final_loss", "runtime_s", "results")


def write_position_loss(path: str | os.PathLike, result: dict) -> None:
    _check_keys(result, POSITION_LOSS_KEYS, POSITION_LOSS_FILE)
    write_json(path, result)


def read_position_loss(path: str | os.PathLike) -> dict | None:
    """The loss-by-position record at ``path``, or None when there is none."""
    path = Path(path)
    return read_json_object(path, "loss by position") if path.is_file() else None


def write_passkey(folder: str | os.PathLike, result: dict) -> None:
    _check_keys(result, PASSKEY_KEYS, PASSKEY_FILE)
    write_json(Path(folder) / PASSKEY_FILE, result)


def read_passkey(folder: str | os.PathLike) -> dict | None:
    """A passkey folder's results, or None when the folder has none (yet)."""
    path = Path(folder) / PASSKEY_FILE
    return read_json_object(path, "passkey results") if path.is_file() else None


# ---- config.json of a model folder ---------------------------------------------------------------------------
def read_model_config(folder: str | os.PathLike) -> dict:
    """config.json of an hf_posenc model folder; UsageError naming what is wrong (no folder, no config, other model)."""
    path = Path(folder)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "not found"
        raise UsageError(f"model directory {str(path)!r} {what}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{str(path)!r} holds no model: config.json is missing (expected the output of hf-posenc train)")
    config = read_json_object(config_path, "the model's config object")
    if config.get("model_type") != "hf_posenc":
        raise UsageError(
            f"{config_path} holds a {config.get('model_type')!r} model, not an hf_posenc model (model_type "
            "'hf_posenc'); convert a Llama checkpoint with hf_posenc.from_llama first"
        )
    return config


# ---- run_config.yaml ---------------------------------------------------------------------------------------
def read_run_config(folder: str | os.PathLike) -> dict | None:
    """The saved run config as a mapping (None when the folder has none)."""
    import yaml

    path = Path(folder) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: is not valid YAML ({' '.join(str(error).split())[:200]}); fix or remove it") from None
    if loaded is None:
        return None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected a mapping of sections, got a {type(loaded).__name__}")
    return loaded


def write_run_config(folder: str | os.PathLike, config: dict) -> None:
    import yaml

    write_text_atomic(Path(folder) / RUN_CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def run_setting(run_config: dict | None, section: str, key: str, *legacy_keys: str):
    """``run_config[section][key]``; folders of older releases kept some settings at the top level."""
    run_config = run_config or {}
    nested = run_config.get(section)
    if isinstance(nested, dict) and nested.get(key) is not None:
        return nested[key]
    for name in (key, *legacy_keys):
        if run_config.get(name) is not None and not isinstance(run_config.get(name), dict):
            return run_config[name]
    return None


# ---- train_summary.json and its data record ----------------------------------------------------------------
def data_record(kind: str, name: str | None, config: str | None = None, python_version: str | None = None,
                description: str | None = None) -> dict:
    """The structured data source stored in train_summary.json and eval.json."""
    if kind not in DATA_KINDS:
        raise ValueError(f"data kind must be one of {DATA_KINDS}, got {kind!r}")
    return {"kind": kind, "name": name, "config": config, "python_version": python_version,
            "description": description}


_RECORDED_DATA = re.compile(r"^(stdlib|local|hub):\s*(.*)$", re.DOTALL)
_HUB_WITH_CONFIG = re.compile(r"^(\S+)(?:\s+\((.*)\))?$")


def parse_data_record(value) -> dict | None:
    """A data record from a file: the structured form, or the one-line prose of older releases."""
    if value is None:
        return None
    if isinstance(value, dict):
        kind = value.get("kind")
        if kind not in DATA_KINDS:
            raise ValueError(f"data.kind must be one of {DATA_KINDS}, got {kind!r}")
        return data_record(kind, value.get("name"), value.get("config"), value.get("python_version"),
                           value.get("description"))
    if not isinstance(value, str):
        raise ValueError(f"data must be an object or a string, got {type(value).__name__}")
    recorded = _RECORDED_DATA.match(value.strip())
    if recorded is None:
        return data_record("unknown", value.strip() or None, description=value)
    kind, rest = recorded.groups()
    if kind == "stdlib":
        version = re.search(r"Python (\d+\.\d+)", rest)
        return data_record("embedded", "stdlib", python_version=version.group(1) if version else None, description=value)
    if kind == "local":
        return data_record("local", rest, description=value)
    match = _HUB_WITH_CONFIG.match(rest)
    name, config = match.groups() if match else (rest, None)
    return data_record("hub", name, config, description=value)


def read_train_summary(folder: str | os.PathLike) -> dict | None:
    """train_summary.json with ``data`` as a structured record (None when the folder has none)."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = read_json_object(path, "the training summary object")
    try:
        summary["data"] = parse_data_record(summary.get("data"))
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from None
    return summary


def _check_keys(payload: dict, keys: tuple, what: str) -> None:
    missing, unknown = set(keys) - set(payload), set(payload) - set(keys)
    if missing or unknown:
        raise ValueError(f"{what}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")


def write_train_summary(folder: str | os.PathLike, summary: dict) -> None:
    _check_keys(summary, SUMMARY_KEYS, SUMMARY_FILE)
    if not isinstance(summary.get("data"), (dict, type(None))):
        raise TypeError("train_summary['data'] must be a data_record() dict")
    write_json(Path(folder) / SUMMARY_FILE, summary)


# ---- metrics.jsonl -----------------------------------------------------------------------------------------
def read_metrics(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The rows of a metrics file and how many lines were skipped (a last line cut short by a kill, garbage)."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    rows, skipped = [], 0
    for line in _read_text(path).splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended in step order (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def truncate_after(self, step: int) -> int:
        """Keep rows up to ``step`` (later ones are written again after a resume); return lines dropped as unreadable."""
        if not (self.enabled and self.path.exists()):
            return 0
        rows, skipped = read_metrics(self.path)
        write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in rows if row["step"] <= step))
        return skipped

    def write(self, row: dict) -> None:
        if "loss" in row:
            _check_keys(row, TRAIN_ROW_KEYS, f"{METRICS_FILE} training row")
        elif set(row) != {"step", "eval_loss"}:
            raise ValueError(f"{METRICS_FILE}: a row is a training row or {{'step', 'eval_loss'}}, got {sorted(row)}")
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


# ---- eval.json and its variants ----------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_eval(path: str | os.PathLike, position_encoding: str | None = None) -> dict:
    """An eval.json (or variant) checked for shape; ``position_encoding`` is the model's, when known."""
    path = Path(path)
    data = read_json_object(path, "an object with a 'results' list (the output of hf-posenc eval)")
    if not isinstance(data.get("results"), list):
        raise UsageError(f"{path}: must be a JSON object with a 'results' list (the output of hf-posenc eval)")
    encoding = data.get("position_encoding")
    if position_encoding is not None and encoding is not None and encoding != position_encoding:
        raise UsageError(f"{path}: evaluates position_encoding {encoding!r} but config.json has "
                         f"{position_encoding!r}: it belongs to another model")
    for index, row in enumerate(data["results"]):
        if not isinstance(row, dict) or isinstance(row.get("eval_length"), bool) or not isinstance(row.get("eval_length"), int):
            raise UsageError(f"{path}: results[{index}] needs an integer 'eval_length', got {row!r}")
        if row.get("status") == "ok" and not _is_number(row.get("perplexity")):
            raise UsageError(f"{path}: results[{index}] has status 'ok' but perplexity {row.get('perplexity')!r}")
    tasks = data.get("tasks") or []
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise UsageError(f"{path}: 'tasks' must be a list of objects, got {tasks!r}")
    data["tasks"] = tasks
    try:
        data["data"] = parse_data_record(data.get("data"))
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from None
    return data


def write_eval(path: str | os.PathLike, evaluation: dict) -> None:
    _check_keys(evaluation, EVAL_KEYS, EVAL_FILE)
    if not isinstance(evaluation.get("data"), (dict, type(None))):
        raise TypeError("eval['data'] must be a data_record() dict")
    write_json(path, evaluation)


def eval_variant_name(rope_scaling: dict | None, custom_data: str | None, split: str = "validation") -> str | None:
    """The file stem for a measurement that is not the model's own (None: it is the plain one -> eval.json)."""
    parts = [] if split == "validation" else [f"split-{split}"]
    if rope_scaling:  # the factor is inside the file; one variant per scaling type
        parts.append(f"rope-{rope_scaling.get('rope_type') or rope_scaling.get('type') or 'scaled'}")
    if custom_data:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(custom_data).rstrip("/")).name or str(custom_data))
        parts.append(f"data-{stem.strip('_') or 'custom'}")
    return "_".join(parts) or None


def default_eval_path(folder: str | os.PathLike, variant: str | None) -> Path:
    folder = Path(folder)
    return folder / EVAL_FILE if variant is None else folder / EVAL_VARIANTS_DIR / f"{variant}.json"


def read_eval_variants(folder: str | os.PathLike, position_encoding: str | None = None) -> dict[str, dict]:
    root = Path(folder) / EVAL_VARIANTS_DIR
    if not root.is_dir():
        return {}
    return {path.stem: read_eval(path, position_encoding) for path in sorted(root.glob("*.json"))}


# ---- a study folder ---------------------------------------------------------------------------------------
def write_study_config(folder: str | os.PathLike, config: dict) -> None:
    import yaml

    write_text_atomic(Path(folder) / COMPARE_CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def write_study_results(folder: str | os.PathLike, records: list[dict], timings: dict, markdown: str) -> None:
    """results.json (a list of records), timings.json and results.md of a compare run."""
    folder = Path(folder)
    write_text_atomic(folder / STUDY_RESULTS_FILE, json.dumps(records, indent=2) + "\n")
    write_json(folder / STUDY_TIMINGS_FILE, timings)
    write_text_atomic(folder / STUDY_MARKDOWN_FILE, markdown)


def read_study_results(folder: str | os.PathLike) -> list[dict]:
    path = Path(folder) / STUDY_RESULTS_FILE
    text = _read_text(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno}); fix or remove it") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "record_type" in r for r in records):
        raise UsageError(f"{path}: expected a list of records with a 'record_type' (the output of hf-posenc compare)")
    return records


# ---- everything at once (cards, figures, compare) -----------------------------------------------------------
@dataclass
class RunRecords:
    run_config: dict | None = None
    train_summary: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    eval: dict | None = None
    eval_variants: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was skipped, to tell the user

    @property
    def ok_results(self) -> list[dict]:
        """eval.json results with a measured, finite perplexity, by increasing length."""
        if not self.eval:
            return []
        rows = [row for row in self.eval["results"] if is_measured(row)]
        return sorted(rows, key=lambda row: row["eval_length"])

    def setting(self, section: str, key: str, *legacy_keys: str):
        return run_setting(self.run_config, section, key, *legacy_keys)

    @property
    def train_length(self) -> int | None:
        value = (self.train_summary or {}).get("block_size") or self.setting("data", "block_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_measured(row: dict) -> bool:
    value = row.get("perplexity")
    return row.get("status") == "ok" and _is_number(value) and math.isfinite(value)


def read_run_records(folder: str | os.PathLike, position_encoding: str | None = None) -> RunRecords:
    """Read every record of a model folder; any may be missing, a malformed one is refused."""
    folder = Path(folder)
    records = RunRecords(run_config=read_run_config(folder), train_summary=read_train_summary(folder))
    records.metrics, skipped = read_metrics(folder / METRICS_FILE)
    if skipped:
        records.notes.append(f"skipped {skipped} unreadable line(s) of {METRICS_FILE}")
    if (folder / EVAL_FILE).is_file():
        records.eval = read_eval(folder / EVAL_FILE, position_encoding)
    records.eval_variants = read_eval_variants(folder, position_encoding)
    return records


# ---- output paths ------------------------------------------------------------------------------------------
def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """A folder we will write into: refused now (before any work) if it is a file or cannot be written."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a folder", field=what)
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {str(path)!r}: {str(probe)!r} is not writable", field=what)
    return path


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """A file we will write: its folder must be writable, and it must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable")
    check_writable_dir(path.parent, what)
    return path


# ---- the lock ----------------------------------------------------------------------------------------------
class RunLock:
    """An advisory lock on a model folder: one writer at a time.

    ``fcntl.flock`` on ``.hf_posenc.lock``, which records the holder's pid and host. The kernel releases the
    lock when its holder dies (even by kill -9), so a stale lock file is simply taken over; a live holder
    is refused with its pid and host. On filesystems without flock support the lock is skipped, with a note.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        self._handle = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise UsageError(
                f"output directory {str(self.path.parent)!r} is in use by another run ({holder}); wait for it to "
                "finish or stop it, or choose another `output_dir`", field="output_dir"
            ) from None
        except OSError:  # no flock on this filesystem: work unlocked rather than not at all
            handle.close()
            return self
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock; the file stays (removing it would race a new holder)
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
