"""A sweep's settings: the search space (dotted run-config keys -> choices or ranges) and ``SweepConfig``.

Read by the one config loader (``hf_posenc.settings``); ``hf_posenc.study.sweep`` runs the trials.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SettingsError
from ..model.encodings_hf_posenc import position_encoding_class
from ..settings import apply_overrides, dotted_keys, load_settings, read_settings_file, setting, suggest, to_dict
from ..train.run_config import RunConfig

SEARCH_METHODS = ("grid", "random", "optuna")


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


def parse_space(raw, source: str = "space") -> list[Parameter]:
    """The search space (dotted run-config key -> list of values or ``{low, high, log}``) as parameters."""
    if not isinstance(raw, dict) or not raw:
        raise SettingsError(f"{source} must be a non-empty mapping of dotted run-config keys to choices or ranges",
                            field=source)
    run_keys = [key for key in dotted_keys(RunConfig) if "." in key]
    parameters = []
    for name, spec in raw.items():
        if name not in run_keys:
            raise SettingsError(f"{source}: {name!r} is not a run-config field (e.g. model.num_hidden_layers, training.lr)"
                                f"{suggest(str(name), run_keys)}", field=source)
        if name == "model.position_encoding":
            raise SettingsError(f"{source}: sweep encodings with the top-level 'encodings' list, not the space")
        if isinstance(spec, list):
            if not spec:
                raise SettingsError(f"{source}: {name} has an empty list of choices")
            parameters.append(Parameter(name, choices=tuple(spec)))
        elif isinstance(spec, dict):
            unknown = sorted(set(spec) - {"low", "high", "log"})
            low, high = spec.get("low"), spec.get("high")
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
            if unknown or not numbers or low > high:
                raise SettingsError(f"{source}: {name} must be a list of values or {{low, high, log}} with low <= high, got {spec!r}")
            log = bool(spec.get("log", False))
            if log and low <= 0:
                raise SettingsError(f"{source}: {name} has log: true, so low must be > 0, got {low!r}")
            parameters.append(Parameter(name, low=low, high=high, log=log, integer=isinstance(low, int) and isinstance(high, int)))
        else:
            raise SettingsError(f"{source}: {name} must be a list of values or {{low, high, log}}, got {spec!r}")
    return parameters


# ---- configuration --------------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    name: str | None = None  # None: the config file's stem
    output_dir: str | None = None
    encodings: list[str] = setting(default_factory=lambda: ["rope"], check=position_encoding_class,
                                   label="position encoding", non_empty=True, unique=True)
    search: str = setting("grid", choices=SEARCH_METHODS)
    num_trials: int = setting(8, minimum=1)
    seed: int = setting(0, minimum=0)
    threads: int | None = setting(None, minimum=1)
    space: dict = field(default_factory=dict)  # dotted run-config key -> list of values or {low, high, log}
    run: RunConfig = field(default_factory=RunConfig)
    parameters: list[Parameter] = field(default_factory=list, init=False, compare=False)  # ``space``, parsed

    def cross_check(self, prefix: str = "") -> None:
        self.parameters = parse_space(self.space, f"{prefix}space")
        if self.search == "grid":
            ranges = [p.name for p in self.parameters if p.choices is None]
            if ranges:
                raise SettingsError(f"search: grid needs a list of values for every parameter; {ranges} in {prefix}space "
                                    "are ranges (use search: random or optuna, or list the values)", field=f"{prefix}search")
        if self.search == "optuna":
            try:
                import optuna  # noqa: F401
            except ImportError as error:
                raise SettingsError("search: optuna needs the optuna package: pip install optuna "
                                    "(or pip install 'hf_posenc[dev]')", field=f"{prefix}search") from error

    @property
    def sweep_id(self) -> str:
        """Identity of the search (space, method, seed, base run): trials of another sweep in the log do not count."""
        return config_hash({"search": self.search, "seed": self.seed, "space": self.space, "run": self.run.to_dict()})

    def to_dict(self) -> dict:
        return to_dict(self)


def load_sweep_config(path: str | Path, overrides: dict | None = None) -> SweepConfig:
    """Read a sweep config and apply dotted overrides (``{"space.training.lr": "[1e-3, 3e-3]"}``)."""
    path = Path(path)
    raw, source = read_settings_file(path)
    if isinstance(raw, dict) and overrides:
        apply_overrides(SweepConfig, raw, overrides)
    return sweep_config_from_dict(raw, source=source, default_name=path.stem)


def sweep_config_from_dict(raw: dict, source: str = "sweep config", default_name: str = "sweep") -> SweepConfig:
    """Build and check a SweepConfig from a dict; every problem is a SettingsError naming the key."""
    config = load_settings(SweepConfig, raw, source)
    config.name = config.name or default_name
    return config


def config_hash(value) -> str:
    """A short, stable hash of plain data (trial keys and sweep ids in trials.jsonl)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
