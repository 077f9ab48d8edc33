"""Run configuration: the YAML files in ``configs/`` as typed dataclasses.

A run config has four sections plus two top-level keys::

    run_name: tiny            # optional; default: the config file's stem
    output_dir: runs/tiny     # optional; the CLI's --output-dir wins
    model:      ...           # PosEncConfig fields (+ attn_implementation); vocab_size defaults to the tokenizer's
    data:       ...           # name ("stdlib", a path or a Hub name), config, text_field, block_size
    tokenizer:  ...           # vocab_size, path (an existing tokenizer), max_train_chars, cache_dir
    training:   ...           # optimizer, schedule, batch, precision, logging, evaluation, checkpoints

``load_run_config(path, overrides)`` reads a file and applies dotted overrides (``{"training.lr": "1e-3"}``,
as given by ``--set``). Every problem (missing file, unknown key, wrong type, value out of range, an
invalid model, a block size the encoding cannot represent) raises ``UsageError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import UsageError

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
ATTENTION_CHOICES = ("eager", "sdpa", "flex_attention")


@dataclass
class ModelSection:
    """Fields passed to ``PosEncConfig`` (see its docstring), plus the attention backend."""

    position_encoding: str = "rope"
    vocab_size: int | None = None  # None: the tokenizer's vocabulary size
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    sinusoidal_scale: float | None = None
    attn_implementation: str = "sdpa"  # not a PosEncConfig field: chosen when the model is built


@dataclass
class DataSection:
    name: str | None = "stdlib"  # "stdlib" (embedded corpus), a .txt/.jsonl file or folder, or a Hub dataset name
    config: str | None = None  # Hub dataset configuration
    text_field: str = "text"  # JSON / Hub column holding the text
    block_size: int = 128  # training sequence length (tokens per packed row)


@dataclass
class TokenizerSection:
    vocab_size: int = 4096  # BPE vocabulary size when training a tokenizer
    path: str | None = None  # an existing fast tokenizer (folder or Hub name) instead of training one
    max_train_chars: int | None = None  # train the BPE on the first N characters of the train split only
    cache_dir: str | None = None  # default: $HF_POSENC_CACHE or ~/.cache/hf_posenc


@dataclass
class TrainingSection:
    seed: int = 0
    max_steps: int = 200  # optimizer steps
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 20  # linear warmup, then cosine decay to 0 at max_steps
    weight_decay: float = 0.1  # AdamW; not applied to norms, biases or embeddings
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that supports it, fp32 on CPU
    logging_steps: int = 10
    eval_steps: int = 100  # 0: validate only at the end
    eval_max_batches: int | None = 20  # None: the whole validation split
    save_steps: int = 100  # 0: no intermediate checkpoints
    save_total_limit: int = 2  # complete checkpoints kept
    report_to: str = "auto"  # auto (tensorboard when installed), none, or comma-separated Accelerate trackers
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    dataloader_num_workers: int = 0
    cpu_threads: int | None = None  # torch intra-op threads on CPU (None: torch's default, one per core)


SECTION_TYPES = {"model": ModelSection, "data": DataSection, "tokenizer": TokenizerSection, "training": TrainingSection}
TOP_LEVEL_KEYS = ("run_name", "output_dir")


@dataclass
class RunConfig:
    run_name: str | None = None
    output_dir: str | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    training: TrainingSection = field(default_factory=TrainingSection)

    # ---- building -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict | None, source: str = "run config") -> RunConfig:
        """Build from a nested dict (as read from YAML), checking every key and type."""
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise UsageError(f"{source} must be a YAML mapping with sections {list(SECTION_TYPES)}, got {type(raw).__name__}")
        allowed = list(TOP_LEVEL_KEYS) + list(SECTION_TYPES)
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in allowed:
                raise UsageError(f"unknown key {key!r} in {source}{_suggest(str(key), allowed)}")
            if key in SECTION_TYPES:
                values[key] = _build_section(SECTION_TYPES[key], value, key, source)
            else:
                values[key] = _coerce(value, _field_types(cls)[key], key, source)
        config = cls(**values)
        config.validate()
        return config

    def with_overrides(self, overrides: dict[str, Any] | None) -> RunConfig:
        """A copy with dotted overrides applied (``{"training.lr": 1e-3}``; strings are parsed as YAML)."""
        raw = self.to_dict()
        for dotted, value in (overrides or {}).items():
            parts = dotted.split(".")
            if len(parts) == 1 and parts[0] in TOP_LEVEL_KEYS:
                raw[parts[0]] = _from_cli_string(value, _field_types(RunConfig)[parts[0]])
                continue
            if len(parts) != 2 or parts[0] not in SECTION_TYPES:
                known = list(TOP_LEVEL_KEYS) + [f"{s}.{f}" for s, t in SECTION_TYPES.items() for f in _field_types(t)]
                raise UsageError(f"unknown config key {dotted!r} in --set{_suggest(dotted, known)}")
            section, name = parts
            if name not in _field_types(SECTION_TYPES[section]):
                known = [f"{section}.{f}" for f in _field_types(SECTION_TYPES[section])]
                raise UsageError(f"unknown config key {dotted!r} in --set{_suggest(dotted, known)}")
            raw[section][name] = _from_cli_string(value, _field_types(SECTION_TYPES[section])[name])
        return RunConfig.from_dict(raw, source="run config (after --set overrides)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---- validation -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Range checks that types alone cannot express; raises UsageError naming the field."""
        t, d, k = self.training, self.data, self.tokenizer
        _at_least("training.seed", t.seed, 0)
        _at_least("training.max_steps", t.max_steps, 1)
        _at_least("training.per_device_batch_size", t.per_device_batch_size, 1)
        _at_least("training.gradient_accumulation_steps", t.gradient_accumulation_steps, 1)
        _at_least("training.warmup_steps", t.warmup_steps, 0)
        _at_least("training.logging_steps", t.logging_steps, 1)
        _at_least("training.eval_steps", t.eval_steps, 0)
        _at_least("training.save_steps", t.save_steps, 0)
        _at_least("training.save_total_limit", t.save_total_limit, 1)
        _at_least("training.dataloader_num_workers", t.dataloader_num_workers, 0)
        if t.cpu_threads is not None:
            _at_least("training.cpu_threads", t.cpu_threads, 1)
        if t.eval_max_batches is not None:
            _at_least("training.eval_max_batches", t.eval_max_batches, 1)
        _positive("training.lr", t.lr)
        _positive("training.adam_epsilon", t.adam_epsilon)
        _at_least("training.weight_decay", t.weight_decay, 0.0)
        _at_least("training.max_grad_norm", t.max_grad_norm, 0.0)
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(t, name)
            if not 0.0 <= value < 1.0:
                raise UsageError(f"training.{name} must be in [0, 1), got {value!r}")
        if t.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise UsageError(f"training.mixed_precision must be one of {list(MIXED_PRECISION_CHOICES)}, got {t.mixed_precision!r}")
        _at_least("data.block_size", d.block_size, 2)
        from ..data.tokenizer import MIN_VOCAB_SIZE

        _at_least("tokenizer.vocab_size", k.vocab_size, MIN_VOCAB_SIZE)
        if k.max_train_chars is not None:
            _at_least("tokenizer.max_train_chars", k.max_train_chars, 1)
        if self.model.attn_implementation not in ATTENTION_CHOICES:
            raise UsageError(
                f"model.attn_implementation must be one of {list(ATTENTION_CHOICES)}, got {self.model.attn_implementation!r}"
            )
        self.model_config(vocab_size=self.model.vocab_size or k.vocab_size)  # PosEncConfig's own checks
        self.check_block_size()

    def model_config(self, vocab_size: int | None = None, **special_token_ids):
        """The ``PosEncConfig`` of this run; PosEncConfig's ValueErrors become UsageErrors naming the section."""
        from ..model.configuration_hf_posenc import PosEncConfig

        fields = {k: v for k, v in dataclasses.asdict(self.model).items() if k != "attn_implementation"}
        fields["vocab_size"] = fields["vocab_size"] or vocab_size
        fields.update(special_token_ids)
        try:
            return PosEncConfig(**fields)
        except (ValueError, TypeError, KeyError) as error:
            raise UsageError(f"invalid model section: model.{error}") from error

    def max_positions(self) -> int | None:
        """How many positions the chosen encoding can represent (None: any)."""
        import torch

        from ..model.encodings_hf_posenc import build_position_encoding

        with torch.device("meta"):  # no memory for tables; we only read the attribute
            encoding = build_position_encoding(self.model_config(vocab_size=self.model.vocab_size or self.tokenizer.vocab_size))
        return encoding.max_positions

    def check_block_size(self) -> None:
        limit = self.max_positions()
        if limit is not None and self.data.block_size > limit:
            raise UsageError(
                f"data.block_size={self.data.block_size} is beyond what position_encoding="
                f"{self.model.position_encoding!r} allows (model.max_position_embeddings={limit}); "
                "lower data.block_size or raise model.max_position_embeddings"
            )


# ---- loading ---------------------------------------------------------------------------------------------
def parse_yaml(text: str, source: str) -> Any:
    """Parsed YAML; a UsageError naming ``source`` when it is malformed."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{source} is not valid YAML: {error}") from error


def read_config_file(path: str | Path) -> tuple[Any, str]:
    """The parsed YAML of a config file (run, compare or sweep) and its description for messages."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {str(path)!r}")
    source = f"config file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{source} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    return parse_yaml(text, source), source


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config and apply dotted overrides; raises UsageError on any bad input."""
    path = Path(path)
    raw, source = read_config_file(path)
    config = RunConfig.from_dict(raw, source=source)
    if config.run_name is None:
        config.run_name = path.stem
    return config.with_overrides(overrides)


def parse_set_arguments(items: list[str] | None) -> dict[str, str]:
    """``["training.lr=1e-3", ...]`` (from ``--set``) -> ``{"training.lr": "1e-3"}``."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value (e.g. training.lr=1e-3), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


# ---- helpers ---------------------------------------------------------------------------------------------
def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build_section(cls, raw, section: str, source: str):
    if raw is None:
        return cls()
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise UsageError(f"section {section!r} in {source} must be a mapping, got {raw!r}")
    types_ = _field_types(cls)
    values = {}
    for key, value in raw.items():
        if key not in types_:
            raise UsageError(f"unknown key '{section}.{key}' in {source}{_suggest(f'{section}.{key}', [f'{section}.{f}' for f in types_])}")
        values[key] = _coerce(value, types_[key], f"{section}.{key}", source)
    return cls(**values)


def _parse_scalar(text: str):
    """A ``--set`` value as YAML (``3`` -> 3, ``true`` -> True, ``null`` -> None, ``{a: 1}`` -> dict)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _from_cli_string(value, annotation):
    """Command-line strings: kept verbatim for string fields (paths, names), parsed as YAML otherwise."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(annotation) or (annotation,)
    if str in options:
        return None if type(None) in options and value.strip().lower() in ("null", "none", "~") else value
    return _parse_scalar(value)


def _type_name(annotation) -> str:
    args = typing.get_args(annotation)
    if args:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)", dict: "a mapping"}
    return names.get(annotation, str(annotation))


def _coerce(value, annotation, name: str, source: str):
    """Check ``value`` against a field annotation, converting only where lossless (int -> float, "1e-3" -> float)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name, source)
            except UsageError:
                pass
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # "1e4" (YAML reads it as a string)
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number) and number.is_integer():
                return int(number)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is dict:
        if isinstance(value, dict):
            return value
    raise UsageError(f"{name} in {source} must be {_type_name(annotation)}, got {value!r}")


def _at_least(name: str, value, minimum) -> None:
    if value < minimum or isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{name} must be >= {minimum}, got {value!r}")


def _positive(name: str, value) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be a finite number > 0, got {value!r}")


__all__ = [
    "RunConfig",
    "ModelSection",
    "DataSection",
    "TokenizerSection",
    "TrainingSection",
    "load_run_config",
    "parse_set_arguments",
]
