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
import dataclasses
import hashlib
import itertools
import json
import math
import random
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UsageError
from ..run_folder import TRIALS_FILE
from ..train.run_config import SECTION_TYPES, RunConfig, read_config_file

SEARCH_METHODS = ("grid", "random", "optuna")
TOP_LEVEL_KEYS = ("name", "output_dir", "encodings", "search", "num_trials", "seed", "threads", "space", "run")
FINISHED = ("ok", "diverged", "invalid")  # statuses that are not retried


# ---- the search space -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One swept run-config field: a list of choices, or a numeric range."""

    name: str  # dotted, e.g. "training.lr"
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def sample(self, rng: random.Random):
        if self.choices is not None:
            return rng.choice(self.choices)
        if self.integer:
            if self.log:
                return int(round(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def optuna_distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)


def parse_space(raw, source: str) -> list[Parameter]:
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"space in {source} must be a non-empty mapping of dotted run-config keys to choices or ranges")
    parameters = []
    for name, spec in raw.items():
        section, _, field_name = str(name).partition(".")
        if section not in SECTION_TYPES or field_name not in {f.name for f in dataclasses.fields(SECTION_TYPES[section])}:
            raise UsageError(f"space in {source}: {name!r} is not a run-config field (e.g. model.num_hidden_layers, training.lr)")
        if name == "model.position_encoding":
            raise UsageError(f"space in {source}: sweep encodings with the top-level 'encodings' list, not the space")
        if isinstance(spec, list):
            if not spec:
                raise UsageError(f"space in {source}: {name} has an empty list of choices")
            parameters.append(Parameter(name, choices=tuple(spec)))
        elif isinstance(spec, dict):
            unknown = sorted(set(spec) - {"low", "high", "log"})
            low, high = spec.get("low"), spec.get("high")
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
            if unknown or not numbers or low > high:
                raise UsageError(f"space in {source}: {name} must be a list of values or {{low, high, log}} with low <= high, got {spec!r}")
            log = bool(spec.get("log", False))
            if log and low <= 0:
                raise UsageError(f"space in {source}: {name} has log: true, so low must be > 0, got {low!r}")
            parameters.append(Parameter(name, low=low, high=high, log=log, integer=isinstance(low, int) and isinstance(high, int)))
        else:
            raise UsageError(f"space in {source}: {name} must be a list of values or {{low, high, log}}, got {spec!r}")
    return parameters


# ---- configuration --------------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    name: str
    output_dir: str | None
    encodings: list[str]
    search: str
    num_trials: int
    seed: int
    space: list[Parameter]
    run: RunConfig
    raw: dict  # as read (for the sweep's identity hash)
    threads: int | None = None

    @property
    def sweep_id(self) -> str:
        """Identity of the search (space, method, seed, base run): trials of another sweep in the log do not count."""
        identity = {k: self.raw.get(k) for k in ("search", "seed", "space")} | {"run": self.run.to_dict()}
        return _hash(identity)


def load_sweep_config(path: str | Path, overrides: dict | None = None) -> SweepConfig:
    path = Path(path)
    raw, source = read_config_file(path)
    if not isinstance(raw, dict):
        raise UsageError(f"{source} must be a YAML mapping with keys {list(TOP_LEVEL_KEYS)}")
    for dotted, value in (overrides or {}).items():
        node, parts = raw, dotted.split(".")
        if parts[0] not in TOP_LEVEL_KEYS:
            raise UsageError(f"unknown sweep config key {dotted!r} in --set (top-level keys: {', '.join(TOP_LEVEL_KEYS)})")
        if parts[0] == "space" and len(parts) > 1:  # space keys are dotted themselves: space.training.lr=...
            parts = ["space", ".".join(parts[1:])]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value) if isinstance(value, str) else value
    return sweep_config_from_dict(raw, source=source, default_name=path.stem)


def sweep_config_from_dict(raw: dict, source: str = "sweep config", default_name: str = "sweep") -> SweepConfig:
    from ..model.encodings_hf_posenc import available_position_encodings

    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise UsageError(f"unknown key(s) {unknown} in {source}; allowed: {list(TOP_LEVEL_KEYS)}")
    search = raw.get("search", "grid")
    if search not in SEARCH_METHODS:
        raise UsageError(f"search in {source} must be one of {list(SEARCH_METHODS)}, got {search!r}")
    encodings = raw.get("encodings", ["rope"])
    if not isinstance(encodings, list) or not encodings or len(set(encodings)) != len(encodings):
        raise UsageError(f"encodings in {source} must be a non-empty list without repeats, got {encodings!r}")
    for name in encodings:
        if name not in available_position_encodings():
            raise UsageError(f"encodings in {source}: unknown position encoding {name!r}; choose from {available_position_encodings()}")
    num_trials, seed = raw.get("num_trials", 8), raw.get("seed", 0)
    for key, value, minimum in (("num_trials", num_trials, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"{key} in {source} must be an integer >= {minimum}, got {value!r}")
    space = parse_space(raw.get("space"), source)
    if search == "grid":
        ranges = [p.name for p in space if p.choices is None]
        if ranges:
            raise UsageError(f"search: grid needs a list of values for every parameter; {ranges} in {source} are ranges "
                             "(use search: random or optuna, or list the values)")
    if search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError as error:
            raise UsageError("search: optuna needs the optuna package: pip install optuna (or pip install 'hf_posenc[dev]')") from error
    threads = raw.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads in {source} must be an integer >= 1 or null, got {threads!r}")
    run = RunConfig.from_dict(raw.get("run"), source=f"{source} (run section)")
    return SweepConfig(str(raw.get("name") or default_name), raw.get("output_dir"), list(encodings), search, num_trials,
                       seed, space, run, raw, threads)


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- trials ---------------------------------------------------------------------------------------------
def trial_run_config(config: SweepConfig, encoding: str, params: dict) -> RunConfig:
    """The base run config with the encoding and the trial's parameters applied (UsageError if invalid)."""
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
    return _hash({"encoding": encoding, "run": resolved})


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
        except UsageError as error:
            run, key, invalid = None, _hash({"encoding": encoding, "params": params, "sweep": self.config.sweep_id}), str(error)
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
        except UsageError as error:  # e.g. the data cannot fill a batch with these parameters
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
    (output_dir / "sweep_config.yaml").write_text(yaml.safe_dump(config.raw, sort_keys=False))
    runner = SweepRunner(config, output_dir, show_progress)
    for encoding in config.encodings:
        if config.search == "grid":
            for params in grid_params(config.space):
                runner.run(encoding, params)
        elif config.search == "random":
            rng = random.Random(f"{config.seed}|{encoding}")  # the same draws on every rerun
            for _ in range(config.num_trials):
                runner.run(encoding, {p.name: p.sample(rng) for p in config.space})
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
    distributions = {p.name: p.optuna_distribution() for p in config.space}
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
    except UsageError:
        key = _hash({"encoding": encoding, "params": params, "sweep": runner.config.sweep_id})
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
    names = [p.name for p in config.space]
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
