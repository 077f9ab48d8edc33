"""``hf-posenc compare``: one model per position encoding, same data, budget, seeds and tokenizer; then
perplexity by evaluation length, the synthetic tasks, plots and a results table.

A compare config (YAML) has these keys (``configs/compare-tiny.yaml`` is the embedded default)::

    name: compare-tiny            # run name prefix (default: the file's stem)
    output_dir: runs/compare-tiny # the CLI's --output-dir wins
    encodings: [sinusoidal, learned, rope, alibi, t5_bias, nope]
    threads: null                 # torch CPU threads (null: torch's default)
    run:     {model, data, tokenizer, training}   # a run config as in configs/tiny.yaml; position_encoding is set per encoding
    eval:    {lengths, max_tokens, max_windows, stride, batch_size, rope_scaling: [dynamic, ...]}
    tasks:   {tasks, train_min_length, train_max_length, test_lengths, ...}  # hf_posenc.evaluation.tasks.TaskSettings; null skips
    figures: {attention_maps, length, windows}

Output directory::

    DIR/<encoding>/            model folder (hf-posenc train) with eval.json (hf-posenc eval)
    DIR/<encoding>/eval_variants/rope-<type>.json   evaluations of the rope model with eval-time RoPE scaling
    DIR/tasks/<encoding>/      task model, with eval.json holding its task accuracies
    DIR/results.json           list of records (record_type perplexity | task | training)
    DIR/results.md             markdown tables; DIR/timings.json: wall and CPU time per phase
    DIR/*.png                  loss curves, perplexity vs length, task accuracy, encoding profiles, attention maps

Rerunning reuses what is finished: a model folder with train_summary.json and a run config equal to the
current one is not retrained, an eval.json with the same settings is not recomputed, a task folder with the
same settings is not retrained (``overwrite=True`` / ``--overwrite`` redoes everything). A folder holding a
run with a *different* configuration is refused up front instead of being silently reused.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import run_folder
from ..errors import SettingsError
from ..evaluation.perplexity import ROPE_SCALING_TYPES
from ..evaluation.tasks import TaskSettings
from ..model.encodings_hf_posenc import BUILTIN_POSITION_ENCODINGS, available_position_encodings
from ..settings import apply_overrides, load_settings, parse_yaml, read_settings_file, setting, to_dict
from ..train.run_config import RunConfig

DEFAULT_CONFIG_NAME = "compare-tiny.yaml"

# The default study, embedded so that `hf-posenc compare` works from any directory and from a wheel.
# configs/compare-tiny.yaml is the same text (a test checks it).
EMBEDDED_DEFAULT_CONFIG = """\
# hf-posenc compare, CPU-sized: one small byte-level language model per position encoding, trained on the
# embedded corpus (this Python's standard library) with 128-token sequences and evaluated at 1x-8x that
# length, plus the synthetic copy and reverse tasks. Aimed at ~10 minutes on 2 idle CPU cores.
# `hf-posenc compare` with no arguments runs exactly this file (it is embedded in hf_posenc.study.compare).
name: compare-tiny
output_dir: runs/compare-tiny
encodings: [sinusoidal, learned, rope, alibi, t5_bias, nope]
threads: 1               # torch CPU threads. One: these models are too small to gain much from a second
                         # thread, and on a busy machine two threads spinning at every op can be 10x slower

run:                     # a run config as in configs/tiny.yaml; model.position_encoding is set per encoding
  model:
    hidden_size: 96
    intermediate_size: 256
    num_hidden_layers: 2
    num_attention_heads: 4
    num_key_value_heads: 2
    max_position_embeddings: 512   # learned: 4x the training length, so 1024 is reported unsupported
    t5_num_buckets: 32
    t5_max_distance: 128
    attn_implementation: sdpa
  data:
    name: stdlib
    block_size: 128
  tokenizer:
    vocab_size: 258      # the 256 bytes + 2 special tokens: byte-level, which a tiny model learns fast
  training:
    seed: 0
    max_steps: 300
    per_device_batch_size: 16
    lr: 5.0e-3
    warmup_steps: 30
    weight_decay: 0.1
    max_grad_norm: 1.0
    mixed_precision: "no"
    logging_steps: 10
    eval_steps: 50
    eval_max_batches: 8
    save_steps: 100
    save_total_limit: 1
    report_to: none

eval:
  lengths: [128, 256, 512, 1024]
  max_tokens: 8192       # scored tokens per length (whole windows); null = the whole validation split
  stride: null           # null = non-overlapping windows
  batch_size: 8
  rope_scaling: [dynamic, yarn]  # also evaluate the rope model with eval-time RoPE scaling (factor 1024/128)

tasks:                   # hf_posenc.evaluation.tasks.TaskSettings; `tasks: null` skips the synthetic tasks
  # addition is left out here: at this budget it is not learned even in range (600 steps of addition alone
  # reached 2% exact match at 2 digits when tried), so it would only dilute copy and reverse; the GPU config
  # configs/compare-small.yaml trains all three long enough. Add it with --set tasks.tasks=[copy,reverse,addition].
  tasks: [copy, reverse]
  train_min_length: 1
  train_max_length: 8
  test_lengths: [4, 6, 8, 10, 12, 16]
  num_test_examples: 100
  hidden_size: 64
  intermediate_size: 128
  num_hidden_layers: 2
  num_attention_heads: 4
  max_steps: 600
  batch_size: 64
  lr: 3.0e-3
  warmup_steps: 40
  seed: 0

figures:
  attention_maps: true   # average attention of the trained models (eager attention, validation text)
  length: null           # window length of the attention maps; null = the training length
  windows: 8
"""


# ---- configuration --------------------------------------------------------------------------------------
@dataclass
class EvalSettings:
    lengths: list[int] = setting(default_factory=lambda: [128, 256, 512, 1024], minimum=2, non_empty=True)
    max_tokens: int | None = setting(8192, minimum=1)
    max_windows: int | None = setting(None, minimum=1)
    stride: int | None = setting(None, minimum=1)
    batch_size: int = setting(8, minimum=1)
    rope_scaling: list[str] = setting(default_factory=list, choices=ROPE_SCALING_TYPES, label="RoPE scaling type")

    def cross_check(self, prefix: str = "") -> None:
        self.lengths = sorted(set(self.lengths))
        if self.stride is not None and self.stride > min(self.lengths):
            raise SettingsError(f"{prefix}stride ({self.stride}) must be <= every evaluation length "
                                f"(the smallest is {min(self.lengths)})", field=f"{prefix}stride")


@dataclass
class FigureSettings:
    attention_maps: bool = True
    length: int | None = setting(None, minimum=2)
    windows: int = setting(8, minimum=1)


@dataclass
class CompareConfig:
    name: str | None = None  # None: the config file's stem
    output_dir: str | None = None
    # absent from the file: every built-in encoding
    encodings: list[str] = setting(default_factory=lambda: list(BUILTIN_POSITION_ENCODINGS),
                                   choices=available_position_encodings, label="position encoding", non_empty=True,
                                   unique=True)
    threads: int | None = setting(None, minimum=1)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tasks: TaskSettings | None = field(default_factory=TaskSettings)  # null: no task study
    figures: FigureSettings = field(default_factory=FigureSettings)
    source: str = field(default="embedded default", init=False, compare=False)  # where it was read, for messages

    def cross_check(self, prefix: str = "") -> None:
        for encoding in self.encodings:  # e.g. the block size against learned's max positions
            run = copy.deepcopy(self.run)
            run.model.position_encoding = encoding
            run.cross_check(f"{prefix}run.")
        if self.eval.rope_scaling and "rope" not in self.encodings:
            raise SettingsError(f"{prefix}eval.rope_scaling needs the rope encoding in {prefix}encodings",
                                field=f"{prefix}eval.rope_scaling")

    def run_config_for(self, encoding: str, output_dir: Path) -> RunConfig:
        run = copy.deepcopy(self.run)
        run.model.position_encoding = encoding
        run.run_name = f"{self.name}-{encoding}"
        run.output_dir = str(output_dir)
        run.validate()  # e.g. learned needs block_size <= max_position_embeddings
        return run

    def to_dict(self) -> dict:
        return to_dict(self)


def load_compare_config(path: str | Path | None = None, overrides: dict | None = None) -> CompareConfig:
    """Read a compare config (None: the embedded default) and apply dotted overrides (``{"eval.lengths": "[64]"}``)."""
    if path is None:
        source, stem = f"embedded default ({DEFAULT_CONFIG_NAME})", "compare-tiny"
        raw = parse_yaml(EMBEDDED_DEFAULT_CONFIG, source)
    else:
        raw, source = read_settings_file(path)
        stem = Path(path).stem
    if isinstance(raw, dict) and overrides:
        apply_overrides(CompareConfig, raw, overrides)
    return compare_config_from_dict(raw, source=source, default_name=stem)


def compare_config_from_dict(raw: dict, source: str = "compare config", default_name: str = "compare") -> CompareConfig:
    """Build and check a CompareConfig from a dict; every problem is a SettingsError naming the key."""
    config = load_settings(CompareConfig, raw, source)
    config.name = config.name or default_name
    config.source = source
    return config


# ---- reuse of finished work -----------------------------------------------------------------------------
def run_config_differences(saved_path: Path, current: RunConfig) -> list[str]:
    """Dotted keys where a saved run_config.yaml differs from ``current`` (vocab_size filled in by training is ignored)."""
    saved = run_folder.read_run_config(saved_path.parent) or {}
    now = current.to_dict()
    differences = []
    for section in ("model", "data", "tokenizer", "training"):
        for key, value in now[section].items():
            old = (saved.get(section) or {}).get(key)
            if section == "model" and key == "vocab_size" and value is None:
                continue
            if old != value:
                differences.append(f"{section}.{key}: {old!r} -> {value!r}")
    return differences


def _eval_is_current(path: Path, summary: Path, settings: EvalSettings, rope_scaling: str | None) -> bool:
    if not (path.is_file() and summary.is_file()) or path.stat().st_mtime < summary.stat().st_mtime:
        return False
    saved = run_folder.read_eval(path)
    scaling = saved.get("rope_scaling") or {}
    return (
        [row.get("eval_length") for row in saved.get("results", [])] == settings.lengths
        and saved.get("stride") == settings.stride
        and saved.get("max_tokens") == settings.max_tokens
        and saved.get("max_windows") == settings.max_windows
        and scaling.get("rope_type") == rope_scaling
    )


# ---- the run --------------------------------------------------------------------------------------------
class PhaseTimer:
    """Wall-clock and process CPU time per phase (CPU time counts every thread of this process)."""

    def __init__(self):
        self.phases: dict[str, dict] = {}

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_compare(config: CompareConfig, output_dir: str | Path | None = None, *, overwrite: bool = False,
                show_progress: bool = True, skip_tasks: bool = False, skip_figures: bool = False) -> dict:
    """Train, evaluate and test every encoding of ``config``; write results, tables and plots.

    Returns ``{"records", "timings", "output_dir", "files"}``.
    """
    import torch

    from ..evaluation.perplexity import evaluate_model_dir
    from ..evaluation.tasks import run_task_study, task_dir_is_complete
    from ..run_folder import SUMMARY_FILE
    from ..train.engine import train

    output_dir = run_folder.check_writable_dir(output_dir or config.output_dir or f"runs/{config.name}",
                                               "compare output directory")
    runs = {encoding: config.run_config_for(encoding, output_dir / encoding) for encoding in config.encodings}
    if not overwrite:  # refuse stale folders before any work starts
        for encoding, run in runs.items():
            saved = output_dir / encoding / "run_config.yaml"
            if saved.is_file():
                differences = run_config_differences(saved, run)
                if differences:
                    raise SettingsError(
                        f"{str(saved.parent)!r} holds a {encoding} run with another configuration "
                        f"({'; '.join(differences[:4])}{'; ...' if len(differences) > 4 else ''}); "
                        "retrain it with `overwrite`, or choose another `output_dir`", field="overwrite"
                    )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_folder.write_study_config(output_dir, config.to_dict())
    timer = PhaseTimer()
    total_wall, total_cpu = time.perf_counter(), time.process_time()
    count = len(config.encodings)
    reused: dict[str, list[str]] = {"train": [], "eval": [], "tasks": []}

    for index, encoding in enumerate(config.encodings, 1):
        model_dir = output_dir / encoding
        summary = model_dir / SUMMARY_FILE
        if summary.is_file() and not overwrite:
            _say(f"[{index}/{count}] {encoding}: reusing the trained model in {model_dir}")
            reused["train"].append(encoding)
        else:
            _say(f"[{index}/{count}] {encoding}: training ({config.run.training.max_steps} steps)")
            partial = (model_dir / "run_config.yaml").is_file() and not overwrite
            with timer.phase("train"):
                train(runs[encoding], model_dir, resume=partial, overwrite=overwrite, show_progress=show_progress)
        scalings = [None] + (list(config.eval.rope_scaling) if encoding == "rope" else [])
        for scaling in scalings:
            path = run_folder.default_eval_path(model_dir, None if scaling is None else f"rope-{scaling}")
            if not overwrite and _eval_is_current(path, summary, config.eval, scaling):
                reused["eval"].append(encoding if scaling is None else f"{encoding}+{scaling}")
                continue
            _say(f"[{index}/{count}] {encoding}: perplexity at {config.eval.lengths}" + (f" with RoPE {scaling} scaling" if scaling else ""))
            with timer.phase("eval"):
                evaluate_model_dir(
                    model_dir, config.eval.lengths, stride=config.eval.stride, max_tokens=config.eval.max_tokens,
                    max_windows=config.eval.max_windows, batch_size=config.eval.batch_size, rope_scaling=scaling,
                    output=path, show_progress=show_progress,
                )

    if config.tasks is not None and not skip_tasks:
        for index, encoding in enumerate(config.encodings, 1):
            task_dir = output_dir / "tasks" / encoding
            if not overwrite and task_dir_is_complete(task_dir, encoding, config.tasks):
                reused["tasks"].append(encoding)
            else:
                _say(f"[{index}/{count}] {encoding}: synthetic tasks {config.tasks.tasks} "
                     f"(train lengths {config.tasks.train_min_length}-{config.tasks.train_max_length})")
            with timer.phase("tasks"):
                run_task_study(encoding, config.tasks, task_dir, overwrite=overwrite, show_progress=show_progress)

    records = collect_records(config, output_dir, skip_tasks=skip_tasks)
    files = []
    with timer.phase("plots"):
        files += write_plots(config, output_dir, records)
    if not skip_figures:
        with timer.phase("figures"):
            files += write_figures(config, output_dir, show_progress=show_progress)
    timings = {
        "phases": timer.phases,
        "total": {"wall_s": time.perf_counter() - total_wall, "cpu_s": time.process_time() - total_cpu},
        "reused": reused,
        "torch_threads": torch.get_num_threads(),
    }
    markdown = results_markdown(config, records, timings, files, output_dir)
    run_folder.write_study_results(output_dir, records, timings, markdown)
    return {"records": records, "timings": timings, "output_dir": output_dir, "files": files, "markdown": markdown}


def collect_records(config: CompareConfig, output_dir: Path, skip_tasks: bool = False) -> list[dict]:
    """results.json: perplexity, task and training records of every encoding, read back from the folders."""
    records = []
    for encoding in config.encodings:
        model_dir = output_dir / encoding
        summary = run_folder.read_train_summary(model_dir) or {}
        paths = [run_folder.default_eval_path(model_dir, None)]
        if encoding == "rope":
            paths += [run_folder.default_eval_path(model_dir, f"rope-{scaling}") for scaling in config.eval.rope_scaling]
        for path in paths:
            evaluation = run_folder.read_eval(path, encoding)
            scaling = evaluation.get("rope_scaling")
            label = encoding if not scaling else f"{encoding} + {scaling['rope_type']} x{scaling['factor']:g}"
            for row in evaluation["results"]:
                records.append({
                    "record_type": "perplexity",
                    "position_encoding": encoding,
                    "label": label,
                    "rope_scaling": scaling,
                    "eval_length": row["eval_length"],
                    "train_length": evaluation.get("train_length"),
                    "perplexity": row["perplexity"],
                    "loss": row["loss"],
                    "num_tokens": row["num_tokens"],
                    "status": row["status"],
                    "reason": row["reason"],
                })
        records.append({
            "record_type": "training",
            "position_encoding": encoding,
            "final_loss": summary.get("final_loss"),
            "final_eval_loss": summary.get("final_eval_loss"),
            "train_runtime_s": summary.get("train_runtime_s"),
            "num_parameters": summary.get("num_parameters"),
            "tokens_seen": summary.get("tokens_seen"),
            "max_steps": summary.get("max_steps"),
            "train_length": summary.get("block_size"),
        })
        task_eval = output_dir / "tasks" / encoding / "eval.json"
        if config.tasks is not None and not skip_tasks and task_eval.is_file():
            for row in run_folder.read_eval(task_eval, encoding)["tasks"]:
                records.append({
                    "record_type": "task",
                    "position_encoding": encoding,
                    "task": row["task"],
                    "length": row["length"],
                    "accuracy": row["accuracy"],
                    "num_examples": row["num_examples"],
                    "in_distribution": row.get("in_distribution"),
                })
    return records


def write_plots(config: CompareConfig, output_dir: Path, records: list[dict]) -> list[Path]:
    from .plots import plot_loss_curves, plot_perplexity_vs_length, plot_task_accuracy

    files = [
        plot_loss_curves({e: output_dir / e for e in config.encodings}, output_dir / "loss_curves.png",
                         title=f"{config.name}: language-model training ({config.run.data.block_size}-token sequences)"),
        plot_perplexity_vs_length(records, output_dir / "perplexity_vs_length.png", config.run.data.block_size,
                                  title=f"{config.name}: perplexity by evaluation length"),
    ]
    if any(r["record_type"] == "task" for r in records):
        files.append(plot_task_accuracy(records, output_dir / "task_accuracy.png",
                                        (config.tasks.train_min_length, config.tasks.train_max_length),
                                        title=f"{config.name}: synthetic tasks, exact-match accuracy by length"))
    return files


def write_figures(config: CompareConfig, output_dir: Path, show_progress: bool = True) -> list[Path]:
    from .figures import draw_figures

    if not config.figures.attention_maps:
        from .figures import load_models, plot_distance_profiles

        models = load_models({e: output_dir / e for e in config.encodings})
        return [plot_distance_profiles(output_dir / "encoding_distance_profiles.png", models=models,
                                       encodings=config.encodings, max_distance=2 * config.run.data.block_size)]
    return draw_figures(output_dir, [output_dir / e for e in config.encodings], length=config.figures.length,
                        windows=config.figures.windows, show_progress=show_progress)


# ---- tables ---------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def perplexity_table(records: list[dict]) -> str:
    rows = [r for r in records if r["record_type"] == "perplexity"]
    lengths = sorted({r["eval_length"] for r in rows})
    train = next((r["train_length"] for r in rows if r.get("train_length")), None)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    header = [f"{n} (train)" if n == train else str(n) for n in lengths]
    longest = max((n for n in lengths if n != train), default=None)
    lines = ["| model | " + " | ".join(header) + (f" | ppl {longest} / ppl {train} |" if train and longest else " |"),
             "|---|" + "---:|" * len(lengths) + ("---:|" if train and longest else "")]
    for label in labels:
        cells, by_length = [], {r["eval_length"]: r for r in rows if r["label"] == label}
        for n in lengths:
            row = by_length.get(n)
            if row is None:
                cells.append("")
            elif row["status"] == "ok":
                cells.append(_fmt(row["perplexity"]))
            else:
                cells.append(row["status"])
        ratio = ""
        if train and longest:
            a, b = by_length.get(longest), by_length.get(train)
            ratio = f"{a['perplexity'] / b['perplexity']:.2f}" if a and b and a["status"] == b["status"] == "ok" else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {ratio} |" if train and longest else " |"))
    return "\n".join(lines)


def task_tables(records: list[dict]) -> str:
    rows = [r for r in records if r["record_type"] == "task"]
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = [r for r in rows if r["task"] == task]
        lengths = sorted({r["length"] for r in cells})
        trained = {r["length"] for r in cells if r.get("in_distribution")}
        header = [f"{n}{' (train)' if n in trained else ''}" for n in lengths]
        out += [f"**{task}** (exact-match accuracy by number of digits)", "",
                "| encoding | " + " | ".join(header) + " |", "|---|" + "---:|" * len(lengths)]
        for encoding in dict.fromkeys(r["position_encoding"] for r in cells):
            by_length = {r["length"]: r["accuracy"] for r in cells if r["position_encoding"] == encoding}
            out.append(f"| {encoding} | " + " | ".join(_fmt(by_length.get(n)) for n in lengths) + " |")
        out.append("")
    return "\n".join(out)


def training_table(records: list[dict]) -> str:
    lines = ["| encoding | parameters | final train loss | final validation loss | training time (s) |",
             "|---|---:|---:|---:|---:|"]
    for r in records:
        if r["record_type"] == "training":
            lines.append(f"| {r['position_encoding']} | {r['num_parameters']:,} | {_fmt(r['final_loss'], 3)} | "
                         f"{_fmt(r['final_eval_loss'], 3)} | {_fmt(r['train_runtime_s'], 1)} |")
    return "\n".join(lines)


def timings_table(timings: dict) -> str:
    lines = ["| phase | wall (s) | CPU (s, all threads) |", "|---|---:|---:|"]
    for name, entry in timings["phases"].items():
        lines.append(f"| {name} | {entry['wall_s']:.1f} | {entry['cpu_s']:.1f} |")
    total = timings["total"]
    lines.append(f"| **total** | {total['wall_s']:.1f} | {total['cpu_s']:.1f} |")
    reused = {k: v for k, v in timings["reused"].items() if v}
    if reused:
        lines += ["", "Reused from an earlier run (not recomputed): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in reused.items())]
    return "\n".join(lines)


def results_markdown(config: CompareConfig, records: list[dict], timings: dict, files: list[Path], output_dir: Path) -> str:
    run = config.run
    tasks = config.tasks
    parts = [
        f"# {config.name}: position encodings compared",
        "",
        f"Language models: {run.model.num_hidden_layers} layers, hidden {run.model.hidden_size}, "
        f"{run.model.num_attention_heads} heads, tokenizer vocabulary {run.tokenizer.vocab_size}, trained "
        f"{run.training.max_steps} steps of {run.training.per_device_batch_size} x {run.data.block_size} tokens "
        f"(seed {run.training.seed}) on data '{run.data.name}'. Perplexity on the validation split, "
        + (f"sliding windows (stride {config.eval.stride})" if config.eval.stride else "non-overlapping windows")
        + (f", about {config.eval.max_tokens} scored tokens per length." if config.eval.max_tokens else "."),
        "",
        "## Perplexity by evaluation length",
        "",
        perplexity_table(records),
        "",
        "`unsupported`: the encoding cannot represent that many positions (learned beyond max_position_embeddings).",
        "",
    ]
    if any(r["record_type"] == "task" for r in records):
        parts += [
            "## Synthetic tasks",
            "",
            f"One {tasks.num_hidden_layers}-layer model (hidden {tasks.hidden_size}) per encoding, trained {tasks.max_steps} "
            f"steps on {', '.join(tasks.tasks)} with {tasks.train_min_length}-{tasks.train_max_length} digits, tested with "
            f"greedy decoding on {tasks.num_test_examples} new instances per length.",
            "",
            task_tables(records),
        ]
    parts += ["## Training", "", training_table(records), "", "## Time", "", timings_table(timings), ""]
    if files:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(output_dir) if p.is_relative_to(output_dir) else p})" for p in files] + [""]
    return "\n".join(parts)


__all__ = [
    "CompareConfig",
    "EvalSettings",
    "FigureSettings",
    "load_compare_config",
    "compare_config_from_dict",
    "run_compare",
    "collect_records",
    "results_markdown",
    "EMBEDDED_DEFAULT_CONFIG",
]
