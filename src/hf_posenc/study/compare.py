"""``hf-posenc compare``: one model per position encoding, same data, budget, seeds and tokenizer; then
perplexity by evaluation length, the synthetic tasks, plots and a results table.

Longer than 400 lines because it holds the config, the records and the markdown tables of one command; the
tables are the next thing to move out (a ``study/tables.py``). The work itself (training, evaluating, the task
and passkey models) is a list of independent jobs in ``jobs.py``, run in worker processes; claims and seed
statistics live in ``claims.py`` and ``aggregate.py``.

A compare config (YAML) has these keys (``configs/compare-tiny.yaml`` is the embedded default)::

    name: compare-tiny            # run name prefix (default: the file's stem)
    output_dir: runs/compare-tiny # the CLI's --output-dir wins
    encodings: [sinusoidal, learned, rope, alibi, t5_bias, nope]
    threads: null                 # torch CPU threads (null: torch's default)
    run:     {model, data, tokenizer, training}   # a run config as in configs/tiny.yaml; position_encoding is set per encoding
    eval:    {lengths, max_tokens, max_windows, stride, batch_size, rope_scaling: [dynamic, ...]}
    tasks:   {tasks, train_min_length, train_max_length, test_lengths, ...}  # hf_posenc.evaluation.tasks.TaskSettings; null skips
    figures: {attention_maps, length, windows}
    random_positions: {max, encodings}   # null: none; else each listed encoding is also trained with randomized positions

Output directory::

    DIR/<encoding>/            model folder (hf-posenc train) with eval.json (hf-posenc eval)
    DIR/<encoding>-randpos/    the same encoding trained with randomized positions (``random_positions``)
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
import time
from dataclasses import dataclass, field
from pathlib import Path


from .. import run_folder
from ..errors import SettingsError
from ..evaluation.perplexity import ROPE_SCALING_TYPES
from ..evaluation.tasks import TaskSettings, task_model_config
from ..model.encodings_hf_posenc import BUILTIN_POSITION_ENCODINGS, position_encoding_class
from ..settings import apply_overrides, load_settings, parse_yaml, read_settings_file, setting, to_dict
from ..train.run_config import RunConfig

DEFAULT_CONFIG_NAME = "compare-tiny.yaml"
from ..evaluation.passkey import PasskeySettings
from .aggregate import per_seed, stat
from .claims import check_claims, claims_table, perplexity_ratio
from .jobs import SLIDING_VARIANT, default_workers, rope_scalings, run_jobs, study_jobs
from .variants import StudyModel, study_models


# The default study, embedded so that `hf-posenc compare` works from any directory and from a wheel.
# configs/compare-tiny.yaml is the same text (a test checks it).
EMBEDDED_DEFAULT_CONFIG = """\
# hf-posenc compare, CPU-sized: one small byte-level language model per position encoding, trained on the
# embedded corpus (this Python's standard library) with 128-token sequences and evaluated at 1x-8x that
# length, plus the synthetic copy and reverse tasks and passkey retrieval; two seeds. Aimed at under 15 minutes
# on 2 idle CPU cores (the README's tables use --seeds 3).
# `hf-posenc compare` with no arguments runs exactly this file (it is embedded in hf_posenc.study.compare).
name: compare-tiny
output_dir: runs/compare-tiny
encodings: [sinusoidal, learned, rope, alibi, t5_bias, nope]
seeds: 2                 # every model trained and tested with seeds 0 and 1: tables give mean ± std (--seeds N)
workers: null            # processes training and testing models side by side; null: one per CPU core
threads: 1               # torch CPU threads per process. One: these models are too small to gain much from a
                         # second thread, and on a busy machine two threads spinning at every op can be 10x slower

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
    initializer_range: 0.1         # about 1/sqrt(hidden_size). At the Llama/GPT-2 default 0.02 (tuned for 768+ wide
                                   # models) attention starts uniform and these tiny models never learned to use
                                   # absolute positions in 300 steps (docs/length_generalization.md, experiments)
    attn_implementation: sdpa
  data:
    name: stdlib
    block_size: 128
  tokenizer:
    vocab_size: 258      # the 256 bytes + 2 special tokens: byte-level, which a tiny model learns fast
  training:
    seed: 0
    max_steps: 1800      # 1800 x 14 x 128 = 3.2M tokens. At 300 x 16 x 128 the absolute encodings were still 25-40%
                         # behind rope at the training length; the gap closes with training (docs/length_generalization.md)
    per_device_batch_size: 14  # 14, not 16: the two-seed study then fits 15 minutes on 2 CPU cores
    lr: 5.0e-3
    warmup_steps: 30
    weight_decay: 0.1
    max_grad_norm: 1.0
    mixed_precision: "no"
    logging_steps: 10
    eval_steps: 300
    eval_max_batches: 8
    save_steps: 300
    save_total_limit: 1
    report_to: none

eval:
  lengths: [128, 256, 512, 1024]
  max_tokens: 8192       # scored tokens per length (whole windows); null = the whole validation split
  stride: null           # null = non-overlapping windows
  batch_size: 8
  rope_scaling: [dynamic, yarn]  # also evaluate the rope model with eval-time RoPE scaling (factor 1024/128)
  sliding_stride: 64     # also evaluate with sliding windows (every token after the first window sees >= 64 tokens)
  position_loss: true    # loss by position inside the window (loss_by_position.png)
  position_loss_windows: 8

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
  seed: 0                # initializer_range stays 0.02 here: 0.125 (1/sqrt(hidden)) was tried and copied worse

passkey:                 # hf_posenc.evaluation.passkey.PasskeySettings; `passkey: null` skips it
  key_digits: 4
  train_context: 32      # trained on prompts of up to 32 tokens, tested up to 4x that
  test_contexts: [16, 32, 64, 128]
  depths: [0.0, 0.25, 0.5, 0.75, 1.0]
  num_test_examples: 20
  hidden_size: 64
  intermediate_size: 128
  num_hidden_layers: 2
  num_attention_heads: 4
  max_steps: 300
  batch_size: 32
  lr: 3.0e-3
  warmup_steps: 30
  seed: 0

figures:
  attention_maps: true   # average attention of the trained models (eager attention, validation text)
  length: null           # window length of the attention maps; null = the training length
  windows: 8

random_positions: null   # {max: M, encodings: [...]}: also train the listed encodings (absent: all) with randomized
                         # positions in [0, M) (Ruoss et al. 2023), as variants <encoding>-randpos/ (--random-positions M)
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
    sliding_stride: int | None = setting(None, minimum=1)  # also evaluate with sliding windows (eval_variants/sliding.json)
    position_loss: bool = True  # loss by position inside the window (position_loss.json)
    position_loss_windows: int = setting(16, minimum=1)  # windows averaged per length for the position curves

    def cross_check(self, prefix: str = "") -> None:
        self.lengths = sorted(set(self.lengths))
        if self.stride is not None and self.stride > min(self.lengths):
            raise SettingsError(f"{prefix}stride ({self.stride}) must be <= every evaluation length "
                                f"(the smallest is {min(self.lengths)})", field=f"{prefix}stride")
        if self.sliding_stride is not None and self.sliding_stride > min(self.lengths):
            raise SettingsError(f"{prefix}sliding_stride ({self.sliding_stride}) must be <= every evaluation length "
                                f"(the smallest is {min(self.lengths)})", field=f"{prefix}sliding_stride")


@dataclass
class FigureSettings:
    attention_maps: bool = True
    length: int | None = setting(None, minimum=2)
    windows: int = setting(8, minimum=1)


@dataclass
class RandomPositionsSettings:
    """Train encodings a second time with randomized positions (Ruoss et al., 2023), as labelled variants."""

    max: int | None = setting(None, minimum=3)  # M: training positions are sorted random subsets of [0, M); required
    # which of the study's encodings get a variant; null: every one
    encodings: list[str] | None = setting(None, check=position_encoding_class, label="position encoding",
                                          non_empty=True, unique=True)


@dataclass
class CompareConfig:
    name: str | None = None  # None: the config file's stem
    output_dir: str | None = None
    # absent from the file: every built-in encoding
    encodings: list[str] = setting(default_factory=lambda: list(BUILTIN_POSITION_ENCODINGS),
                                   check=position_encoding_class, label="position encoding", non_empty=True,
                                   unique=True)
    threads: int | None = setting(None, minimum=1)  # torch threads per process (null: the cores divided among workers)
    # processes that train and test models side by side (null: one per CPU core); the results do not depend on it
    workers: int | None = setting(1, minimum=1)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tasks: TaskSettings | None = field(default_factory=TaskSettings)  # null: no task study
    figures: FigureSettings = field(default_factory=FigureSettings)
    passkey: PasskeySettings | None = None  # null / absent: no passkey study
    random_positions: RandomPositionsSettings | None = None  # null / absent: ordinary positions only
    seeds: int = setting(1, minimum=1)  # seeds run.training.seed, +1, ... (and tasks.seed, passkey.seed): one model each
    source: str = field(default="embedded default", init=False, compare=False)  # where it was read, for messages

    def cross_check(self, prefix: str = "") -> None:
        if self.run.training.random_positions_max is not None:  # the plain runs must stay plain: claims read them
            raise SettingsError(
                f"{prefix}run.training.random_positions_max is set per model by compare, got "
                f"{self.run.training.random_positions_max}; use {prefix}random_positions.max to train each encoding "
                "with and without randomized positions", field=f"{prefix}run.training.random_positions_max")
        for encoding in self.encodings:  # e.g. the block size against learned's max positions
            run = copy.deepcopy(self.run)
            run.model.position_encoding = encoding
            run.cross_check(f"{prefix}run.")
            for section, settings in (("tasks", self.tasks), ("passkey", self.passkey)):  # their own small models
                if settings is not None:
                    try:
                        task_model_config(encoding, settings)
                    except SettingsError as error:
                        raise SettingsError(f"{prefix}{section}: {error}", field=f"{prefix}{section}") from None
        if self.eval.rope_scaling and "rope" not in self.encodings:
            raise SettingsError(f"{prefix}eval.rope_scaling needs the rope encoding in {prefix}encodings",
                                field=f"{prefix}eval.rope_scaling")
        if self.random_positions is not None:
            self._check_random_positions(prefix)

    def _check_random_positions(self, prefix: str) -> None:
        settings, name = self.random_positions, f"{prefix}random_positions"
        if settings.max is None:
            raise SettingsError(f"{name}.max must be set (an integer > {prefix}run.data.block_size) when "
                                f"{name} is given; use `{name}=null` for no randomized variants", field=f"{name}.max")
        outside = [e for e in settings.encodings or [] if e not in self.encodings]
        if outside:
            raise SettingsError(f"{name}.encodings: {outside} not in the study's {prefix}encodings {self.encodings}; "
                                "a variant is trained beside its plain run", field=f"{name}.encodings")
        block_size, longest = self.run.data.block_size, max(self.eval.lengths)
        if settings.max <= block_size:
            raise SettingsError(f"{name}.max must be > {prefix}run.data.block_size ({block_size}), got {settings.max}",
                                field=f"{name}.max")
        # Positions at or beyond M are never seen in training: evaluating there would test something else than
        # the method, whose point is that every test position is drawn during training (Ruoss et al. take M much
        # larger than the longest test length).
        if settings.max < longest:
            raise SettingsError(f"{name}.max must be >= the longest evaluation length {prefix}eval.lengths "
                                f"({longest}), got {settings.max}: positions from {name}.max on are never seen in "
                                "training", field=f"{name}.max")
        for model in self.models():
            if not model.randomized:
                continue
            run = copy.deepcopy(self.run)
            run.model.position_encoding, run.training.random_positions_max = model.encoding, model.random_positions_max
            try:  # the run config's own checks: learned, for one, needs max_position_embeddings >= M
                run.cross_check(f"{prefix}run.")
            except SettingsError as error:
                if not (error.field or "").endswith("training.random_positions_max"):
                    raise
                raise SettingsError(
                    f"{name}.max={settings.max} is beyond the positions the {model.encoding} variant can represent "
                    f"({prefix}run.model.max_position_embeddings={run.max_positions()}); lower `{name}.max`, raise "
                    f"{prefix}run.model.max_position_embeddings or leave {model.encoding} out of `{name}.encodings`",
                    field=f"{name}.max") from error

    def models(self) -> list[StudyModel]:
        """The language models of the study: every encoding, each followed by its randomized variant if any."""
        settings = self.random_positions
        if settings is None:
            return study_models(self.encodings, [], None)
        return study_models(self.encodings, settings.encodings or self.encodings, settings.max)

    def seed_values(self) -> list[int]:
        return [self.run.training.seed + i for i in range(self.seeds)]

    def seed_dir(self, output_dir: Path, index: int) -> Path:
        """Where seed number ``index`` lives: the first seed at the top (DIR/<encoding>), others in DIR/seeds/seed-<s>."""
        return output_dir if index == 0 else output_dir / "seeds" / f"seed-{self.seed_values()[index]}"

    def task_settings_for(self, index: int) -> TaskSettings:
        settings = copy.deepcopy(self.tasks)
        settings.seed += index
        return settings

    def passkey_settings_for(self, index: int) -> PasskeySettings:
        settings = copy.deepcopy(self.passkey)
        settings.seed += index
        return settings

    def run_config_for(self, model: StudyModel | str, output_dir: Path, seed_index: int = 0) -> RunConfig:
        model = StudyModel(model) if isinstance(model, str) else model
        run = copy.deepcopy(self.run)
        run.training.seed += seed_index
        run.training.random_positions_max = model.random_positions_max
        run.model.position_encoding = model.encoding
        run.run_name = f"{self.name}-{model.folder_name}"
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


# ---- the run --------------------------------------------------------------------------------------------
def run_compare(config: CompareConfig, output_dir: str | Path | None = None, *, overwrite: bool = False,
                show_progress: bool = True, skip_tasks: bool = False, skip_figures: bool = False) -> dict:
    """Train, evaluate and test every encoding of ``config``; write results, tables and plots.

    Returns ``{"records", "timings", "output_dir", "files"}``.
    """
    import torch

    output_dir = run_folder.check_writable_dir(output_dir or config.output_dir or f"runs/{config.name}",
                                               "compare output directory")
    models = config.models()
    runs = {(index, model): config.run_config_for(model, config.seed_dir(output_dir, index) / model.folder_name, index)
            for index in range(config.seeds) for model in models}
    if not overwrite:  # refuse stale folders before any work starts
        for (index, model), run in runs.items():
            saved = Path(run.output_dir) / "run_config.yaml"
            if saved.is_file():
                differences = run_config_differences(saved, run)
                if differences:
                    raise SettingsError(
                        f"{str(saved.parent)!r} holds a {model.label} run with another configuration "
                        f"({'; '.join(differences[:4])}{'; ...' if len(differences) > 4 else ''}); "
                        "retrain it with `overwrite`, or choose another `output_dir`", field="overwrite"
                    )
    jobs = study_jobs(config, skip_tasks)
    workers = config.workers or default_workers(len(jobs))
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_folder.write_study_config(output_dir, config.to_dict())
    total_wall, total_cpu = time.perf_counter(), time.process_time()
    report = run_jobs(config, output_dir, jobs, workers=workers, overwrite=overwrite, show_progress=show_progress)
    # CPU time of the worker processes (their jobs' phases); in-process jobs count in this process's own time
    worker_cpu = sum(entry["cpu_s"] for entry in report.phases.values()) if workers > 1 and len(jobs) > 1 else 0.0

    records = collect_records(config, output_dir, skip_tasks=skip_tasks)
    files = []
    with report.phase("plots"):
        files += write_plots(config, output_dir, records)
    if not skip_figures:
        with report.phase("figures"):
            files += write_figures(config, output_dir, show_progress=show_progress)
    timings = {
        # Per phase: summed over the jobs, so with several workers the phases add up to more than the total wall.
        "phases": report.phases,
        # The run's wall time, and the CPU time of this process and its workers.
        "total": {"wall_s": time.perf_counter() - total_wall, "cpu_s": time.process_time() - total_cpu + worker_cpu},
        "reused": report.reused,
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
    }
    records += check_claims(records, [model.label for model in models])
    markdown = results_markdown(config, records, timings, files, output_dir)
    run_folder.write_study_results(output_dir, records, timings, markdown)
    return {"records": records, "timings": timings, "output_dir": output_dir, "files": files, "markdown": markdown}


def collect_records(config: CompareConfig, output_dir: Path, skip_tasks: bool = False) -> list[dict]:
    """results.json: perplexity, position-loss, task and training records of every encoding and seed."""
    records = []
    for seed_index, seed in enumerate(config.seed_values()):
        root = config.seed_dir(output_dir, seed_index)
        for model in config.models():
            records += _model_records(config, root / model.folder_name, model, seed)
        for encoding in config.encodings:
            task_eval = root / "tasks" / encoding / "eval.json"
            if config.tasks is not None and not skip_tasks and task_eval.is_file():
                for row in run_folder.read_eval(task_eval, encoding)["tasks"]:
                    records.append({
                        "record_type": "task", "position_encoding": encoding, "seed": seed, "task": row["task"],
                        "length": row["length"], "accuracy": row["accuracy"], "num_examples": row["num_examples"],
                        "in_distribution": row.get("in_distribution"),
                    })
            passkey = run_folder.read_passkey(root / "passkey" / encoding)
            if config.passkey is not None and not skip_tasks and passkey is not None:
                for row in passkey["results"]:
                    records.append({"record_type": "passkey", "position_encoding": encoding, "seed": seed, **row})
    return records


def _model_records(config: CompareConfig, model_dir: Path, model: StudyModel, seed: int) -> list[dict]:
    """Perplexity, position-loss and training records of one model folder; ``label`` and ``random_positions_max``
    tell a randomized variant from its plain run, which shares its ``position_encoding``."""
    records = []
    encoding, randomized = model.encoding, model.random_positions_max
    summary = run_folder.read_train_summary(model_dir) or {}
    variants = [None] + [f"rope-{scaling}" for scaling in rope_scalings(config, model)]
    if config.eval.sliding_stride is not None:
        variants.append(SLIDING_VARIANT)
    for variant in variants:
        evaluation = run_folder.read_eval(run_folder.default_eval_path(model_dir, variant), encoding)
        scaling = evaluation.get("rope_scaling")
        sliding = variant == SLIDING_VARIANT
        label = model.label if not scaling else f"{encoding} + {scaling['rope_type']} x{scaling['factor']:g}"
        for row in evaluation["results"]:
            records.append({
                "record_type": "perplexity", "position_encoding": encoding, "label": label, "seed": seed,
                "sliding": sliding, "stride": evaluation.get("stride"), "rope_scaling": scaling,
                "random_positions_max": randomized,
                "eval_length": row["eval_length"], "train_length": evaluation.get("train_length"),
                "perplexity": row["perplexity"], "loss": row["loss"], "num_tokens": row["num_tokens"],
                "status": row["status"], "reason": row["reason"],
            })
    position_file = model_dir / run_folder.POSITION_LOSS_FILE
    if config.eval.position_loss and position_file.is_file():
        for row in run_folder.read_position_loss(position_file)["results"]:
            if row["status"] == "ok":
                records.append({"record_type": "position_loss", "position_encoding": encoding, "label": model.label,
                                "random_positions_max": randomized, "seed": seed,
                                "eval_length": row["eval_length"], "num_windows": row["num_windows"],
                                "buckets": row["buckets"]})
    records.append({
        "record_type": "training", "position_encoding": encoding, "label": model.label,
        "random_positions_max": randomized, "seed": seed,
        "final_loss": summary.get("final_loss"), "final_eval_loss": summary.get("final_eval_loss"),
        "train_runtime_s": summary.get("train_runtime_s"), "num_parameters": summary.get("num_parameters"),
        "tokens_seen": summary.get("tokens_seen"), "max_steps": summary.get("max_steps"),
        "train_length": summary.get("block_size"),
    })
    return records


def write_plots(config: CompareConfig, output_dir: Path, records: list[dict]) -> list[Path]:
    from .plots import (line_style, plot_loss_by_position, plot_loss_curves, plot_passkey_heatmaps,
                        plot_perplexity_vs_length, plot_task_accuracy)

    models = config.models()
    files = [
        plot_loss_curves({m.label: output_dir / m.folder_name for m in models}, output_dir / "loss_curves.png",
                         title=f"{config.name}: language-model training ({config.run.data.block_size}-token sequences)",
                         styles={m.label: line_style(m.encoding, randomized=m.randomized) for m in models}),
        plot_perplexity_vs_length(records, output_dir / "perplexity_vs_length.png", config.run.data.block_size,
                                  title=f"{config.name}: perplexity by evaluation length (mean ± std over seeds)"),
    ]
    if any(r["record_type"] == "passkey" for r in records):
        files.append(plot_passkey_heatmaps(records, output_dir / "passkey.png", config.passkey.train_context,
                                           title=f"{config.name}: passkey retrieval accuracy (mean over seeds)"))
    if any(r["record_type"] == "position_loss" for r in records):
        files.append(plot_loss_by_position(records, output_dir / "loss_by_position.png", config.run.data.block_size,
                                           title=f"{config.name}: loss by position inside the window"))
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


def perplexity_table(records: list[dict], sliding: bool = False) -> str:
    """Mean ± std over seeds of the perplexity at each length, and of the per-seed ratio longest / train."""
    rows = [r for r in records if r["record_type"] == "perplexity" and bool(r.get("sliding")) == sliding]
    lengths = sorted({r["eval_length"] for r in rows})
    train = next((r["train_length"] for r in rows if r.get("train_length")), None)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    header = [f"{n} (train)" if n == train else str(n) for n in lengths]
    longest = max((n for n in lengths if n != train), default=None)
    with_ratio = bool(train and longest)
    lines = ["| model | " + " | ".join(header) + (f" | ppl {longest} / ppl {train} |" if with_ratio else " |"),
             "|---|" + "---:|" * len(lengths) + ("---:|" if with_ratio else "")]
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        cells = []
        for n in lengths:
            at_n = [r for r in mine if r["eval_length"] == n]
            statuses = {r["status"] for r in at_n}
            if not at_n:
                cells.append("")
            elif statuses == {"ok"}:
                cells.append(stat(r["perplexity"] for r in at_n).format())
            else:
                cells.append("/".join(sorted(statuses - {"ok"})))
        ratio = perplexity_ratio([{**r, "sliding": False} for r in mine], label, longest, label, train) if with_ratio else None
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {ratio.format()} |" if with_ratio else " |"))
    return "\n".join(lines)


def task_tables(records: list[dict]) -> str:
    rows = [r for r in records if r["record_type"] == "task"]
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = [r for r in rows if r["task"] == task]
        lengths = sorted({r["length"] for r in cells})
        trained = {r["length"] for r in cells if r.get("in_distribution")}
        header = [f"{n}{' (train)' if n in trained else ''}" for n in lengths]
        out += [f"**{task}** (exact-match accuracy by number of digits, mean ± std over seeds)", "",
                "| encoding | " + " | ".join(header) + " |", "|---|" + "---:|" * len(lengths)]
        for encoding in dict.fromkeys(r["position_encoding"] for r in cells):
            by_length = per_seed([r for r in cells if r["position_encoding"] == encoding],
                                 lambda r: r["length"], lambda r: r["accuracy"])
            out.append(f"| {encoding} | " + " | ".join(by_length[n].format() if n in by_length else "-" for n in lengths) + " |")
        out.append("")
    return "\n".join(out)


def passkey_table(records: list[dict]) -> str:
    rows = [r for r in records if r["record_type"] == "passkey"]
    contexts = sorted({r["context"] for r in rows})
    trained = {r["context"] for r in rows if r["in_distribution"]}
    lines = ["| encoding | " + " | ".join(f"{c}{' (train)' if c in trained else ''}" for c in contexts) + " |",
             "|---|" + "---:|" * len(contexts)]
    for encoding in dict.fromkeys(r["position_encoding"] for r in rows):
        mine = [r for r in rows if r["position_encoding"] == encoding]
        by_context = {}
        for context in contexts:  # per seed: the mean over depths; then mean ± std over seeds
            per_seed_means = per_seed([r for r in mine if r["context"] == context], lambda r: r["seed"], lambda r: r["accuracy"])
            by_context[context] = stat(s.mean for s in per_seed_means.values())
        lines.append(f"| {encoding} | " + " | ".join(by_context[c].format() for c in contexts) + " |")
    return "\n".join(lines)


def training_table(records: list[dict]) -> str:
    lines = ["| model | parameters | final train loss | final validation loss | training time per seed (s) |",
             "|---|---:|---:|---:|---:|"]
    rows = [r for r in records if r["record_type"] == "training"]
    for label in dict.fromkeys(r.get("label") or r["position_encoding"] for r in rows):
        mine = [r for r in rows if (r.get("label") or r["position_encoding"]) == label]
        lines.append(f"| {label} | {mine[0]['num_parameters']:,} | {stat(r['final_loss'] for r in mine).format(3)} | "
                     f"{stat(r['final_eval_loss'] for r in mine).format(3)} | "
                     f"{stat(r['train_runtime_s'] for r in mine).format(1)} |")
    return "\n".join(lines)


def timings_table(timings: dict) -> str:
    lines = ["| phase | wall (s) | CPU (s, all threads) |", "|---|---:|---:|"]
    for name, entry in timings["phases"].items():
        lines.append(f"| {name} | {entry['wall_s']:.1f} | {entry['cpu_s']:.1f} |")
    total = timings["total"]
    lines.append(f"| **total** | {total['wall_s']:.1f} | {total['cpu_s']:.1f} |")
    if timings.get("workers", 1) > 1:
        lines += ["", f"The jobs ran in {timings['workers']} worker processes side by side: each phase sums its jobs' "
                      "times, so the phases add up to more than the total wall time."]
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
        f"on data '{run.data.name}', {config.seeds} seed{'s' if config.seeds > 1 else ''} "
        f"({', '.join(map(str, config.seed_values()))}); every number is the mean ± standard deviation over seeds "
        "(no ± with one seed). Perplexity on the validation split, "
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
    if config.random_positions is not None:
        parts += [
            f"`<encoding> + random positions`: the same encoding, data, budget and seeds, trained with each row's "
            f"positions drawn as a sorted random subset of [0, {config.random_positions.max}) (Ruoss et al. 2023); "
            "evaluated with ordinary positions like every other model.",
            "",
        ]
    claim_records = [r for r in records if r["record_type"] == "claim"]
    if claim_records:
        parts += [
            "## Published findings",
            "",
            "Each claim is turned into one number measured per seed; the verdict is `agrees` when mean ± std lies on "
            "the claimed side of the threshold, `disagrees` when it lies on the other side, `inconclusive` when it "
            "straddles it or when the study has fewer than two seeds.",
            "",
            claims_table(claim_records),
            "",
        ]
    if any(r.get("sliding") for r in records if r["record_type"] == "perplexity"):
        parts += [
            f"## Perplexity with sliding windows (stride {config.eval.sliding_stride})",
            "",
            "Every token after the first window is scored with at least L - stride tokens of context, so the "
            "early-token curse of non-overlapping windows is gone; beyond the training length the table shows "
            "whether the extra context helps or hurts.",
            "",
            perplexity_table(records, sliding=True),
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
    if any(r["record_type"] == "passkey" for r in records):
        pk = config.passkey
        parts += [
            "## Passkey retrieval",
            "",
            f"A {pk.key_digits}-digit key between two `+` markers, hidden in random-digit filler at a given depth (0: "
            f"first, 1: last); one {pk.num_hidden_layers}-layer model (hidden {pk.hidden_size}) per encoding trained "
            f"{pk.max_steps} steps on prompts of up to {pk.train_context} tokens, tested greedily on "
            f"{pk.num_test_examples} new instances per cell. Exact-match accuracy averaged over depths "
            f"{pk.depths} (mean ± std over seeds); passkey.png has every depth.",
            "",
            passkey_table(records),
            "",
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
