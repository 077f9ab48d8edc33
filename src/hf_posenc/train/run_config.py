"""Run configuration: the YAML files in ``configs/`` as typed dataclasses.

A run config has four sections plus two top-level keys::

    run_name: tiny            # optional; default: the config file's stem
    output_dir: runs/tiny     # optional; the CLI's --output-dir wins
    model:      ...           # PosEncConfig fields (+ attn_implementation); vocab_size defaults to the tokenizer's
    data:       ...           # name ("stdlib", a path or a Hub name), config, text_field, block_size
    tokenizer:  ...           # vocab_size, path (an existing tokenizer), max_train_chars, cache_dir
    training:   ...           # optimizer, schedule, batch, precision, logging, evaluation, checkpoints

``load_run_config(path, overrides)`` reads a file and applies dotted overrides (``{"training.lr": "1e-3"}``).
Loading, overrides and the per-field rules are ``hf_posenc.settings``'; this module declares the fields and the
checks that tie them together (a valid model, a block size the encoding can represent). Every problem raises
``SettingsError`` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.tokenizer import MIN_VOCAB_SIZE
from ..errors import SettingsError
from ..settings import apply_overrides, check_settings, load_settings, read_settings_file, setting, to_dict

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
    rope_fraction: float = setting(1.0, minimum=0.0)  # p-RoPE (rope, xpos): the fraction of RoPE frequencies that rotate
    alibi_num_heads: int | None = setting(None, minimum=1)  # alibi: bias on the first N heads only (None: all)
    fire_init_length: int | None = setting(None, minimum=1)  # fire: initial L (None: max_position_embeddings; set it to data.block_size)
    xpos_scale_base: float = setting(512.0, positive=True)  # xpos: gamma in zeta ** (n / gamma)
    sandwich_dim: int | None = setting(None, minimum=2)  # sandwich: channels of the sinusoids (None: hidden_size)
    cope_max_positions: int = 64
    extra_config: dict | None = None  # further PosEncConfig arguments, e.g. those of a registered encoding
    attn_implementation: str = setting("sdpa", choices=ATTENTION_CHOICES)  # chosen when the model is built

    # set by training, never by a run config
    NOT_CONFIGURABLE = ("pad_token_id", "bos_token_id", "eos_token_id", "use_cache", "hidden_act", "rope_parameters",
                        "original_max_position_embeddings")


@dataclass
class DataSection:
    name: str | None = "stdlib"  # "stdlib" (embedded corpus), a .txt/.jsonl file or folder, or a Hub dataset name
    config: str | None = None  # Hub dataset configuration
    text_field: str = "text"  # JSON / Hub column holding the text
    block_size: int = setting(128, minimum=2)  # training sequence length (tokens per packed row)


@dataclass
class TokenizerSection:
    vocab_size: int = setting(4096, minimum=MIN_VOCAB_SIZE)  # BPE vocabulary size when training a tokenizer
    path: str | None = None  # an existing fast tokenizer (folder or Hub name) instead of training one
    max_train_chars: int | None = setting(None, minimum=1)  # train the BPE on the first N characters only
    cache_dir: str | None = None  # default: $HF_POSENC_CACHE or ~/.cache/hf_posenc


@dataclass
class TrainingSection:
    seed: int = setting(0, minimum=0)
    max_steps: int = setting(200, minimum=1)  # optimizer steps
    per_device_batch_size: int = setting(16, minimum=1)
    gradient_accumulation_steps: int = setting(1, minimum=1)
    lr: float = setting(1e-3, positive=True)  # peak learning rate
    warmup_steps: int = setting(20, minimum=0)  # linear warmup, then cosine decay to 0 at max_steps
    weight_decay: float = setting(0.1, minimum=0.0)  # AdamW; not applied to norms, biases or embeddings
    adam_beta1: float = setting(0.9, minimum=0, below=1)
    adam_beta2: float = setting(0.95, minimum=0, below=1)
    adam_epsilon: float = setting(1e-8, positive=True)
    max_grad_norm: float = setting(1.0, minimum=0.0)  # 0 disables clipping
    mixed_precision: str = setting("auto", choices=MIXED_PRECISION_CHOICES)  # auto: bf16 on a GPU that has it, else fp32
    logging_steps: int = setting(10, minimum=1)
    eval_steps: int = setting(100, minimum=0)  # 0: validate only at the end
    eval_max_batches: int | None = setting(20, minimum=1)  # None: the whole validation split
    save_steps: int = setting(100, minimum=0)  # 0: no intermediate checkpoints
    save_total_limit: int = setting(2, minimum=1)  # complete checkpoints kept
    report_to: str = "auto"  # auto (tensorboard when installed), none, or comma-separated Accelerate trackers
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    dataloader_num_workers: int = setting(0, minimum=0)
    cpu_threads: int | None = setting(None, minimum=1)  # torch intra-op threads on CPU (None: torch's default)
    # Randomized positions (Ruoss et al., 2023): each training row gets a sorted random subset of [0, M) as its
    # positions, M > data.block_size; evaluation keeps ordinary positions. None: ordinary positions.
    random_positions_max: int | None = setting(None, minimum=3)


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
    def from_dict(cls, raw: dict | None, source: str = "run config", prefix: str = "") -> RunConfig:
        """Build from a nested dict (as read from YAML), checking every key, type and rule."""
        return load_settings(cls, raw, source, prefix)

    def with_overrides(self, overrides: dict[str, Any] | None) -> RunConfig:
        """A copy with dotted overrides applied (``{"training.lr": 1e-3}``; strings are parsed as YAML)."""
        if not overrides:
            return dataclasses.replace(self)
        raw = apply_overrides(RunConfig, self.to_dict(), overrides)
        return RunConfig.from_dict(raw, source="run config (after overrides)")

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---- validation -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every rule of every field, then the model and block-size checks; raises SettingsError naming the field."""
        check_settings(self)

    def cross_check(self, prefix: str = "") -> None:
        """Checks that need several fields: a valid ``PosEncConfig``, a block size the encoding can represent."""
        self.model_config(vocab_size=self.model.vocab_size or self.tokenizer.vocab_size, prefix=prefix)
        self.check_block_size(prefix)

    def model_config(self, vocab_size: int | None = None, prefix: str = "", **special_token_ids):
        """The ``PosEncConfig`` of this run; PosEncConfig's ValueErrors become SettingsErrors naming the section."""
        from ..model.configuration_hf_posenc import PosEncConfig

        fields = {k: v for k, v in dataclasses.asdict(self.model).items() if k not in ("attn_implementation", "extra_config")}
        fields.update(self.model.extra_config or {})
        fields["vocab_size"] = fields["vocab_size"] or vocab_size
        fields.update(special_token_ids)
        try:
            return PosEncConfig(**fields)
        except (ValueError, TypeError, KeyError) as error:
            raise SettingsError(f"invalid model section: {prefix}model.{error}", field=f"{prefix}model") from error

    def max_positions(self) -> int | None:
        """How many positions the chosen encoding can represent (None: any)."""
        import torch

        from ..model.encodings_hf_posenc import build_position_encoding

        with torch.device("meta"):  # no memory for tables; we only read the attribute
            encoding = build_position_encoding(self.model_config(vocab_size=self.model.vocab_size or self.tokenizer.vocab_size))
        return encoding.max_positions

    def check_block_size(self, prefix: str = "") -> None:
        limit = self.max_positions()
        largest = self.training.random_positions_max
        if largest is not None and largest <= self.data.block_size:
            raise SettingsError(
                f"{prefix}training.random_positions_max must be > {prefix}data.block_size ({self.data.block_size}), "
                f"got {largest}", field=f"{prefix}training.random_positions_max",
            )
        if limit is not None and largest is not None and largest > limit:
            raise SettingsError(
                f"{prefix}training.random_positions_max={largest} is beyond what position_encoding="
                f"{self.model.position_encoding!r} allows ({prefix}model.max_position_embeddings={limit}); "
                f"lower {prefix}training.random_positions_max or raise {prefix}model.max_position_embeddings",
                field=f"{prefix}training.random_positions_max",
            )
        if limit is not None and self.data.block_size > limit:
            raise SettingsError(
                f"{prefix}data.block_size={self.data.block_size} is beyond what position_encoding="
                f"{self.model.position_encoding!r} allows ({prefix}model.max_position_embeddings={limit}); "
                f"lower {prefix}data.block_size or raise {prefix}model.max_position_embeddings",
                field=f"{prefix}data.block_size",
            )


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config and apply dotted overrides; raises SettingsError on any bad input."""
    path = Path(path)
    raw, source = read_settings_file(path)
    raw = {} if raw is None else raw  # an empty file: every default
    if overrides and isinstance(raw, dict):
        raw, source = apply_overrides(RunConfig, raw, overrides), f"{source} with overrides"
    config = RunConfig.from_dict(raw, source=source)
    if config.run_name is None:
        config.run_name = path.stem
    return config


__all__ = [
    "RunConfig",
    "ModelSection",
    "DataSection",
    "TokenizerSection",
    "TrainingSection",
    "load_run_config",
]
