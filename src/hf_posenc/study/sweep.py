"""``hf-posenc sweep``: hyperparameter search per position encoding, every trial logged, resumable.

A sweep config (YAML)::

    name: sweep-tiny
    output_dir: runs/sweep-tiny
    encodings: [rope, alibi]
    search: random            # grid | random | optuna (optuna: pip install optuna, or the dev extra)
    num_trials: 4             # per encoding (random / optuna; grid runs every combination)
    seed: 0
    threads: 1                # torch CPU threads (null: torch's default)
    space:                    # dotted run-config keys
      model.num_hidden_layers: [1, 2]                       # a list: choose one of these values
      training.lr: {low: 1.0e-3, high: 1.0e-2, log: true}   # a range (random / optuna only); int bounds -> integers
    run: {model, data, tokenizer, training}                 # the base run config (as configs/tiny.yaml)

Each trial trains with ``hf_posenc.train.engine.train`` into ``DIR/trials/<encoding>-<key>/`` and appends one JSON
line to ``DIR/trials.jsonl``: ``{"trial", "key", "sweep", "position_encoding", "params", "status", "eval_loss", ...}``
where status is ``ok``, ``diverged`` (NaN/inf loss), ``invalid`` (the parameters make no valid model, e.g. a
hidden size not divisible by the heads) or ``failed`` (an unexpected error, retried on the next run). The
objective is the final validation loss.

Resuming: ``key`` hashes the trial's complete resolved run config, so a rerun skips every trial already logged
as ok / diverged / invalid, and a trial interrupted mid-training continues from its last checkpoint. Random
search draws the same sequence from ``seed`` every time; optuna replays the logged trials into its study before
asking for new ones.

Outputs: ``DIR/results.md`` (trials sorted by validation loss, best per encoding), ``DIR/sweep.png``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import sys
import traceback
from pathlib import Path

import yaml

from ..errors import SettingsError
from ..run_folder import TRIALS_FILE
from ..train.run_config import RunConfig
from .sweep_config import (  # noqa: F401  (re-exported: the sweep's settings)
    SEARCH_METHODS,
    Parameter,
    SweepConfig,
    config_hash,
    load_sweep_config,
    parse_space,
    sweep_config_from_dict,
)

FINISHED = ("ok", "diverged", "invalid")  # statuses that are not retried


# ---- trials ---------------------------------------------------------------------------------------------
def trial_run_config(config: SweepConfig, encoding: str, params: dict) -> RunConfig:
    """The base run config with the encoding and the trial's parameters applied (SettingsError if invalid)."""
    run = copy.deepcopy(config.run)
    run.model.position_encoding = encoding
    overrides = {name: value for name, value in params.items()}
    raw = run.to_dict()
    for dotted, value in overrides.items():
        section, name = dotted.split(".", 1)
        raw[section][name] = value
    return RunConfig.from_dict(raw, source=f"trial {params}")


def trial_key(encoding: str, run: RunConfig) -> str:
    """Hash of everything that defines the trial's training (not where it is written)."""
    resolved = run.to_dict()
    resolved.pop("output_dir", None)
    resolved.pop("run_name", None)
    return config_hash({"encoding": encoding, "run": resolved})


def read_trials(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    trials = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                trials.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash while writing: ignored, the trial reruns
                continue
    return trials


def grid_params(space: list[Parameter]) -> list[dict]:
    return [dict(zip([p.name for p in space], values)) for values in itertools.product(*(p.choices for p in space))]


class SweepRunner:
    """Runs (or reuses) trials and appends them to the log."""

    def __init__(self, config: SweepConfig, output_dir: Path, show_progress: bool):
        self.config, self.output_dir, self.show_progress = config, output_dir, show_progress
        self.log_path = output_dir / TRIALS_FILE
        self.logged = read_trials(self.log_path)
        self.finished = {t["key"]: t for t in self.logged if t.get("status") in FINISHED}
        self.ran, self.reused = 0, 0
        self.session: list[dict] = []

    def run(self, encoding: str, params: dict) -> dict:
        from ..train.engine import TrainingDiverged, train

        params = {name: _plain(value) for name, value in params.items()}
        try:
            run = trial_run_config(self.config, encoding, params)
        except SettingsError as error:
            run, key, invalid = None, config_hash({"encoding": encoding, "params": params, "sweep": self.config.sweep_id}), str(error)
        else:
            key, invalid = trial_key(encoding, run), None
        if key in self.finished:
            self.reused += 1
            self.session.append(self.finished[key])
            return self.finished[key]
        if invalid is not None:  # the parameters make no valid run: logged once, never trained
            return self._log(self._record(encoding, params, key, "invalid", error=invalid))
        trial_dir = self.output_dir / "trials" / f"{encoding}-{key}"
        run.run_name = f"{self.config.name}-{encoding}-{key}"
        _say(f"trial {len(self.logged) + 1}: {encoding} {params}")
        try:
            summary = train(run, trial_dir, resume=trial_dir.exists(), show_progress=self.show_progress)
        except TrainingDiverged as error:
            record = self._record(encoding, params, key, "diverged", error=str(error), output_dir=trial_dir)
        except SettingsError as error:  # e.g. the data cannot fill a batch with these parameters
            record = self._record(encoding, params, key, "invalid", error=str(error), output_dir=trial_dir)
        except Exception as error:  # noqa: BLE001 - logged and retried next time; the sweep goes on
            traceback.print_exc(file=sys.stderr)
            record = self._record(encoding, params, key, "failed", error=f"{type(error).__name__}: {error}", output_dir=trial_dir)
        else:
            record = self._record(encoding, params, key, "ok", output_dir=trial_dir, summary=summary)
        self.ran += 1
        return self._log(record)

    def _record(self, encoding, params, key, status, error=None, output_dir=None, summary=None) -> dict:
        summary = summary or {}
        return {
            "trial": len(self.logged) + 1,
            "key": key,
            "sweep": self.config.sweep_id,
            "position_encoding": encoding,
            "params": params,
            "status": status,
            "eval_loss": summary.get("final_eval_loss"),
            "final_loss": summary.get("final_loss"),
            "train_runtime_s": summary.get("train_runtime_s"),
            "num_parameters": summary.get("num_parameters"),
            "output_dir": str(output_dir) if output_dir else None,
            "error": error,
        }

    def _log(self, record: dict) -> dict:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.logged.append(record)
        self.session.append(record)
        if record["status"] in FINISHED:
            self.finished[record["key"]] = record
        return record


def _plain(value):
    """YAML-safe scalars (numpy / optuna may hand back numpy types)."""
    if hasattr(value, "item"):
        value = value.item()
    return value


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_sweep(config: SweepConfig, output_dir: str | Path | None = None, show_progress: bool = True) -> dict:
    """Run the sweep (skipping logged trials); write results.md and sweep.png. Returns ``{"trials", ...}``."""
    output_dir = Path(output_dir or config.output_dir or f"runs/{config.name}")
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "sweep_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    runner = SweepRunner(config, output_dir, show_progress)
    for encoding in config.encodings:
        if config.search == "grid":
            for params in grid_params(config.parameters):
                runner.run(encoding, params)
        elif config.search == "random":
            rng = random.Random(f"{config.seed}|{encoding}")  # the same draws on every rerun
            for _ in range(config.num_trials):
                runner.run(encoding, {p.name: p.sample(rng) for p in config.parameters})
        else:
            _optuna_search(config, runner, encoding)
    trials = list(runner.session)
    markdown = sweep_markdown(config, trials)
    (output_dir / "results.md").write_text(markdown)
    from .plots import plot_sweep

    plot = plot_sweep(trials, output_dir / "sweep.png", title=f"{config.name}: validation loss per trial ({config.search} search)")
    return {"trials": trials, "ran": runner.ran, "reused": runner.reused, "markdown": markdown, "plot": plot,
            "output_dir": output_dir}


def _optuna_search(config: SweepConfig, runner: SweepRunner, encoding: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {p.name: p.optuna_distribution() for p in config.parameters}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    mine = [t for t in runner.logged if t.get("sweep") == config.sweep_id and t["position_encoding"] == encoding
            and t.get("status") in FINISHED]
    seen = set()
    for trial in mine:  # replay what earlier runs of this sweep learned
        if trial["key"] in seen:
            continue
        seen.add(trial["key"])
        runner.session.append(trial)
        runner.reused += 1
        try:
            if trial["status"] == "ok" and trial.get("eval_loss") is not None:
                study.add_trial(optuna.trial.create_trial(params=trial["params"], distributions=distributions, value=trial["eval_loss"]))
            else:
                study.add_trial(optuna.trial.create_trial(params=trial["params"], distributions=distributions,
                                                          state=optuna.trial.TrialState.FAIL))
        except ValueError:  # parameters outside the current space: not part of this study
            continue
    needed = max(0, config.num_trials - len(seen))
    attempts = 0
    while needed > 0 and attempts < 20 * config.num_trials:  # the sampler may propose a finished trial again
        attempts += 1
        trial = study.ask(distributions)
        params = {name: _plain(value) for name, value in trial.params.items()}
        known = _finished_with(runner, encoding, params)
        record = known if known is not None else runner.run(encoding, params)
        if known is None:
            needed -= 1
        if record["status"] == "ok" and record.get("eval_loss") is not None and math.isfinite(record["eval_loss"]):
            study.tell(trial, record["eval_loss"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _finished_with(runner: SweepRunner, encoding: str, params: dict) -> dict | None:
    """The logged result of these exact parameters, if any (without running or logging anything)."""
    try:
        key = trial_key(encoding, trial_run_config(runner.config, encoding, params))
    except SettingsError:
        key = config_hash({"encoding": encoding, "params": params, "sweep": runner.config.sweep_id})
    return runner.finished.get(key)


# ---- tables ---------------------------------------------------------------------------------------------
def _sort_key(trial: dict):
    loss = trial.get("eval_loss")
    ok = trial.get("status") == "ok" and isinstance(loss, (int, float)) and math.isfinite(loss)
    return (0 if ok else 1, loss if ok else 0.0)


def trials_table(trials: list[dict], names: list[str]) -> str:
    lines = ["| rank | encoding | " + " | ".join(names) + " | validation loss | status | time (s) |",
             "|---:|---|" + "---:|" * len(names) + "---:|---|---:|"]
    for rank, trial in enumerate(sorted(trials, key=_sort_key), 1):
        values = [_show(trial["params"].get(name)) for name in names]
        loss, seconds = trial.get("eval_loss"), trial.get("train_runtime_s")
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "-"
        time_text = f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "-"
        lines.append(f"| {rank} | {trial['position_encoding']} | " + " | ".join(values)
                     + f" | {loss_text} | {trial['status']} | {time_text} |")
    return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sweep_markdown(config: SweepConfig, trials: list[dict]) -> str:
    names = [p.name for p in config.parameters]
    unique = list({t["key"]: t for t in trials}.values())
    best = []
    for encoding in config.encodings:
        mine = sorted((t for t in unique if t["position_encoding"] == encoding), key=_sort_key)
        if mine and mine[0]["status"] == "ok":
            best.append(f"| {encoding} | {mine[0]['eval_loss']:.4f} | "
                        + ", ".join(f"{n}={_show(mine[0]['params'].get(n))}" for n in names) + " |")
    failed = [t for t in unique if t["status"] not in ("ok",)]
    parts = [
        f"# {config.name}: {config.search} search over {', '.join(names)}",
        "",
        f"{len(unique)} trials ({sum(t['status'] == 'ok' for t in unique)} ok) for {', '.join(config.encodings)}; "
        f"objective: final validation loss after {config.run.training.max_steps} steps.",
        "",
        "## Best per encoding",
        "",
        "| encoding | validation loss | parameters |",
        "|---|---:|---|",
        *best,
        "",
        "## All trials, best first",
        "",
        trials_table(unique, names),
        "",
    ]
    if failed:
        parts += ["## Trials that did not finish", ""] + [f"- {t['position_encoding']} {t['params']}: {t['status']}: {t['error']}" for t in failed] + [""]
    parts += ["![sweep](sweep.png)", ""]
    return "\n".join(parts)


__all__ = ["SweepConfig", "Parameter", "load_sweep_config", "sweep_config_from_dict", "run_sweep", "read_trials",
           "trial_key", "grid_params"]
