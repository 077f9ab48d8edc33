"""Perplexity by evaluation length: does a model still predict text well beyond the length it was trained on?

``evaluate_model_dir(model_dir, lengths)`` scores held-out text (by default the validation split of the data
the model was trained on) in windows of each length and returns the ``eval.json`` body of the model
directory contract (docs/length_generalization.md).

Windows. The token stream (documents joined by EOS, as in training) is cut into windows of ``length`` tokens.

* Non-overlapping (default): windows start at 0, L, 2L, ...; each scores its ``L - 1`` predicted tokens.
* Sliding (``stride=S``, ``1 <= S <= L``): windows start at 0, S, 2S, ...; the first scores ``L - 1`` tokens, every
  later one only its last ``min(S, L - 1)`` tokens (those no earlier window scored), so each scored token sees
  at least ``L - S`` tokens of context.

Only whole windows are used, so every length is measured at exactly that length. ``max_tokens`` /
``max_windows`` bound the cost per length; all lengths read the same stream from its start.

Perplexity is ``exp(sum of token NLLs / scored tokens)``, aggregated by the ``evaluate`` metric shipped in
``hf_posenc/evaluation/metrics/perplexity`` (loaded by path, offline). A length beyond what the encoding represents
(``learned`` past ``max_position_embeddings``) is reported as an ``unsupported`` row, never run.

RoPE scaling at evaluation time goes through transformers' RoPE utilities: the saved config gets
``rope_scaling={"rope_type": linear | dynamic | yarn, "factor": F, ...}`` before the weights are loaded, anchored
at the training length (see ``rope_scaling_parameters``).

``datasets`` and ``evaluate`` are imported inside functions.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import run_folder
from ..errors import SettingsError, UsageError

PERPLEXITY_METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "perplexity"
ROPE_SCALING_TYPES = ("linear", "dynamic", "yarn")
EVAL_FILE = run_folder.EVAL_FILE
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# ---- input checks ---------------------------------------------------------------------------------------
def check_lengths(lengths: Iterable[int]) -> list[int]:
    """The evaluation lengths, sorted and without repeats; refuses non-integers, values < 2 and an empty list."""
    lengths = list(lengths)
    if not lengths:
        raise SettingsError("lengths needs at least one evaluation length, e.g. [256, 512, 1024]", field="lengths")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise SettingsError(f"lengths must be integers >= 2 (a window predicts length - 1 tokens), got {length!r} "
                                f"in {lengths!r}", field="lengths")
    return sorted(set(lengths))


def check_positive_int(name: str, value, minimum: int = 1) -> int | None:
    """An optional integer argument (``None`` passes through); SettingsError naming the argument otherwise."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise SettingsError(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)
    return value


@dataclass
class ModelDirInfo:
    """What evaluation needs to know about a model folder, read without loading the weights."""

    path: Path
    config: object  # PosEncConfig
    position_encoding: str
    max_positions: int | None  # None: any length
    train_length: int | None  # block_size of train_summary.json / run_config.yaml
    data_name: str | None
    data_config: str | None
    text_field: str


def inspect_model_dir(model_dir: str | Path) -> ModelDirInfo:
    """Check that ``model_dir`` holds an hf_posenc model (config + weights + tokenizer); UsageError otherwise."""
    path = Path(model_dir)
    run_folder.read_model_config(path)  # a folder, a config.json, an hf_posenc model
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"{str(path)!r} has a config.json but no weights (one of {list(WEIGHT_FILES)})")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise UsageError(f"{str(path)!r} has no tokenizer (tokenizer.json); evaluation needs it to read text")

    from ..model.configuration_hf_posenc import PosEncConfig
    from ..model.encodings_hf_posenc import build_position_encoding

    try:
        config = PosEncConfig.from_pretrained(str(path))
        with torch.device("meta"):  # no memory for the tables: we only read max_positions
            max_positions = build_position_encoding(config).max_positions
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise UsageError(f"{str(path / 'config.json')!r} is not a valid hf_posenc config: {error}") from error

    records = run_folder.RunRecords(run_config=run_folder.read_run_config(path),
                                    train_summary=run_folder.read_train_summary(path))
    data = (records.run_config or {}).get("data")
    data = data if isinstance(data, dict) else {}
    # recorded by training in config.json; folders written before it fall back to the run records
    train_length = config.trained_context_length or records.train_length
    return ModelDirInfo(
        path=path,
        config=config,
        position_encoding=config.position_encoding,
        max_positions=max_positions,
        train_length=train_length if isinstance(train_length, int) else None,
        data_name=data.get("name", "stdlib"),
        data_config=data.get("config"),
        text_field=data.get("text_field") or "text",
    )


# ---- RoPE scaling ---------------------------------------------------------------------------------------
def rope_scaling_parameters(
    info: ModelDirInfo, rope_type: str | None, factor: float | None, lengths: Sequence[int]
) -> dict | None:
    """The ``rope_scaling`` dict for transformers' RoPE utilities, or None; refuses what cannot apply.

    * only ``position_encoding="rope"`` models can be RoPE-scaled (UsageError otherwise);
    * ``factor`` defaults to ``max(lengths) / train_length`` (at least 1): the stretch the longest length needs;
    * the scaling is anchored at the training length: ``original_max_position_embeddings`` (yarn) and, for
      dynamic NTK (which rescales once a sequence outgrows ``max_position_embeddings``), the model config's
      ``max_position_embeddings`` is set to it for this evaluation.
    """
    if rope_type is None:
        if factor is not None:
            raise SettingsError("rope_factor needs `rope_scaling` (linear, dynamic or yarn)", field="rope_factor")
        return None
    if rope_type not in ROPE_SCALING_TYPES:
        raise SettingsError(f"rope_scaling must be one of {list(ROPE_SCALING_TYPES)}, got {rope_type!r}", field="rope_scaling")
    if info.position_encoding != "rope":
        raise SettingsError(
            f"rope_scaling applies to RoPE models only; {str(info.path)!r} uses position_encoding="
            f"{info.position_encoding!r}", field="rope_scaling"
        )
    anchor = info.train_length or info.config.max_position_embeddings
    if factor is None:
        factor = max(1.0, max(lengths) / anchor)
    elif isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
        raise SettingsError(f"rope_factor must be a number >= 1, got {factor!r}", field="rope_factor")
    scaling = {"rope_type": rope_type, "factor": float(factor)}
    if rope_type in ("yarn", "dynamic"):
        scaling["original_max_position_embeddings"] = int(anchor)
    return scaling


def scaled_config(config, rope_scaling: dict):
    """A copy of a PosEncConfig with RoPE scaling merged into ``rope_parameters`` (validated by PosEncConfig)."""
    from ..model.configuration_hf_posenc import PosEncConfig

    values = config.to_dict()
    values["rope_parameters"] = {"rope_theta": config.rope_parameters["rope_theta"]}
    values["rope_scaling"] = dict(rope_scaling)
    if "original_max_position_embeddings" in rope_scaling:
        # dynamic NTK grows the base once a sequence outgrows max_position_embeddings: make that the training length
        values["max_position_embeddings"] = rope_scaling["original_max_position_embeddings"]
    try:
        return PosEncConfig.from_dict(values)
    except ValueError as error:
        raise UsageError(f"invalid RoPE scaling {rope_scaling}: {error}") from error


# ---- data and windows -----------------------------------------------------------------------------------
def eval_token_ids(tokenizer, data: str | None, *, split: str = "validation", data_config: str | None = None,
                   text_field: str = "text", max_tokens: int | None = None) -> torch.LongTensor:
    """The evaluation token stream: documents of ``split`` tokenized and joined with EOS (as in training).

    Stops once ``max_tokens`` tokens are read (None: the whole split).
    """
    from ..data.corpus import document_token_ids, load_text_dataset

    dataset = load_text_dataset(data, split, data_config=data_config, text_field=text_field)
    stream: list[int] = []
    for start in range(0, len(dataset), 64):
        for ids in document_token_ids(tokenizer, dataset[start : start + 64]["text"]):
            stream += ids
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        stream = stream[:max_tokens]
    return torch.tensor(stream, dtype=torch.long)


def plan_windows(num_tokens: int, length: int, stride: int | None = None, max_windows: int | None = None,
                 max_tokens: int | None = None) -> list[tuple[int, int]]:
    """``(start, first_scored)`` per window: tokens ``start + first_scored .. start + length - 1`` are scored.

    Non-overlapping windows (``stride=None``) score positions 1..L-1 of each; sliding windows score the first
    window's L-1 tokens and then the last ``min(stride, L-1)`` tokens of each later window.
    """
    step = length if stride is None else stride
    windows, scored = [], 0
    start = 0
    while start + length <= num_tokens:
        first = 1 if (stride is None or not windows) else max(1, length - stride)
        windows.append((start, first))
        scored += length - first
        if (max_windows is not None and len(windows) >= max_windows) or (max_tokens is not None and scored >= max_tokens):
            break
        start += step
    return windows


def tokens_needed(lengths: Sequence[int], stride: int | None, max_windows: int | None, max_tokens: int | None) -> int | None:
    """How much of the stream the bounded evaluation reads at most (None: unbounded, read everything)."""
    if max_windows is None and max_tokens is None:
        return None
    needed = 0
    for length in lengths:
        per_window = (length - 1) if stride is None else min(stride, length - 1)
        count = math.inf
        if max_windows is not None:
            count = max_windows
        if max_tokens is not None:
            count = min(count, 1 + max(0, math.ceil((max_tokens - (length - 1)) / per_window)))
        step = length if stride is None else stride
        needed = max(needed, length + (int(count) - 1) * step)
    return needed


def load_perplexity_metric():
    """The shipped ``evaluate`` metric, loaded by path (no Hub access)."""
    try:
        import evaluate
    except ImportError as error:  # pragma: no cover - evaluate is a declared dependency
        raise UsageError("hf-posenc eval needs the 'evaluate' package: pip install evaluate") from error
    return evaluate.load(str(PERPLEXITY_METRIC_DIR))


@torch.no_grad()
def window_losses(model, token_ids: torch.LongTensor, length: int, windows: Sequence[tuple[int, int]]) -> tuple[list[float], list[int]]:
    """Summed NLL (nats) and scored-token count of each window in one batch."""
    device = next(model.parameters()).device
    starts = torch.tensor([start for start, _ in windows])
    offsets = torch.arange(length)
    input_ids = token_ids[starts[:, None] + offsets[None, :]].to(device)  # (batch, length)
    logits = model(input_ids=input_ids, use_cache=False).logits.float()  # (batch, length, vocab)
    # position j predicts token j + 1: (batch, vocab, length - 1) against (batch, length - 1)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
    first = torch.tensor([first for _, first in windows], device=device)
    scored = offsets[1:].to(device)[None, :] >= first[:, None]  # (batch, length - 1): token j + 1 is scored
    losses = (nll * scored).double().sum(dim=1)
    return losses.tolist(), scored.sum(dim=1).tolist()


def perplexity_by_length(
    model,
    token_ids: torch.LongTensor,
    lengths: Sequence[int],
    *,
    stride: int | None = None,
    max_tokens: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 8,
    max_positions: int | None = None,
    show_progress: bool = True,
    label: str = "",
) -> list[dict]:
    """One result row per length (see module docstring); lengths beyond ``max_positions`` are ``unsupported``."""
    from tqdm.auto import tqdm

    plans = {}
    for length in lengths:
        if max_positions is None or length <= max_positions:
            plans[length] = plan_windows(len(token_ids), length, stride, max_windows, max_tokens)
    total = sum(len(p) for p in plans.values())
    progress = tqdm(total=total, desc=f"eval {label}".strip(), unit="window", disable=not show_progress)
    rows = []
    metric = load_perplexity_metric() if plans else None  # compute() resets it, so one serves every length
    model.eval()
    for length in lengths:
        row = {"eval_length": length, "perplexity": None, "loss": None, "num_tokens": 0, "num_windows": 0,
               "status": "ok", "reason": None}
        if length not in plans:
            row.update(status="unsupported", reason=(
                f"position_encoding={model.config.position_encoding!r} represents positions 0..{max_positions - 1} "
                f"(max_position_embeddings={max_positions}); a {length}-token window needs {length}"
            ))
            rows.append(row)
            continue
        windows = plans[length]
        if not windows:
            row.update(status="insufficient_data",
                       reason=f"the evaluation text has {len(token_ids)} tokens, fewer than one {length}-token window")
            rows.append(row)
            continue
        for begin in range(0, len(windows), batch_size):
            chunk = windows[begin : begin + batch_size]
            losses, counts = window_losses(model, token_ids, length, chunk)
            metric.add_batch(losses=losses, num_tokens=counts)
            progress.update(len(chunk))
        result = metric.compute()
        finite = result["perplexity"] is not None and math.isfinite(result["perplexity"])
        row.update(
            perplexity=result["perplexity"] if finite else None,
            loss=result["loss"],
            num_tokens=result["num_tokens"],
            num_windows=len(windows),
            status="ok" if finite else "non_finite",
            reason=None if finite else f"mean loss {result['loss']} overflows exp()",
        )
        rows.append(row)
    progress.close()
    return rows


# ---- the whole evaluation of a model folder -------------------------------------------------------------
def load_eval_model(info: ModelDirInfo, rope_scaling: dict | None = None, attn_implementation: str = "sdpa", device=None):
    from ..model.modeling_hf_posenc import PosEncForCausalLM

    from ..model.loading import load_model_folder

    config = scaled_config(info.config, rope_scaling) if rope_scaling else info.config
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model_folder(info.path, PosEncForCausalLM, config=config, attn_implementation=attn_implementation,
                              dtype=torch.float32)
    return model.to(device).eval()


def evaluate_model_dir(
    model_dir: str | Path,
    lengths: Sequence[int] | str,
    *,
    data: str | None = None,
    data_config: str | None = None,
    text_field: str | None = None,
    split: str = "validation",
    stride: int | None = None,
    rope_scaling: str | None = None,
    rope_factor: float | None = None,
    max_tokens: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 8,
    output: str | Path | None = None,
    write: bool = True,
    device=None,
    show_progress: bool = True,
) -> dict:
    """Evaluate perplexity at each length and write the result (``output``, else the model folder's default).

    The model's own measurement (its training data, validation split, no eval-time change) goes to
    ``MODEL_DIR/eval.json``; with RoPE scaling, other data or the train split it is a *variant*
    (``variant`` names it) written to ``MODEL_DIR/eval_variants/<variant>.json`` and never replaces
    eval.json. Every argument and the output path are checked before the model is loaded. ``data=None``
    means the data recorded in the model's run_config.yaml (the embedded corpus if none). Returns the
    written content.
    """
    lengths = check_lengths(lengths)
    for name, value in (("stride", stride), ("max_tokens", max_tokens), ("max_windows", max_windows), ("batch_size", batch_size)):
        check_positive_int(name, value)
    if stride is not None and stride > min(lengths):
        raise SettingsError(f"stride ({stride}) must be <= every evaluation length (the smallest is {min(lengths)})",
                            field="stride")
    info = inspect_model_dir(model_dir)
    scaling = rope_scaling_parameters(info, rope_scaling, rope_factor, lengths)
    custom_data = data if data is not None and (data, data_config) != (info.data_name, info.data_config) else None
    if data is None:
        data, data_config = info.data_name, info.data_config if data_config is None else data_config
    text_field = text_field or info.text_field
    from ..data.corpus import data_source_record

    source = data_source_record(data, data_config)  # fails early on a missing local path
    variant = run_folder.eval_variant_name(scaling, custom_data, split)
    output_path = Path(output) if output is not None else run_folder.default_eval_path(info.path, variant)
    if write:
        run_folder.check_writable_file(output_path, "evaluation output")

    start = time.perf_counter()
    from ..model.loading import load_tokenizer_folder

    tokenizer = load_tokenizer_folder(info.path)
    supported = [n for n in lengths if info.max_positions is None or n <= info.max_positions]
    needed = tokens_needed(supported, stride, max_windows, max_tokens) if supported else 0
    token_ids = eval_token_ids(tokenizer, data, split=split, data_config=data_config, text_field=text_field,
                               max_tokens=needed) if supported else torch.zeros(0, dtype=torch.long)
    model = load_eval_model(info, scaling, device=device)
    rows = perplexity_by_length(
        model, token_ids, lengths, stride=stride, max_tokens=max_tokens, max_windows=max_windows,
        batch_size=batch_size, max_positions=info.max_positions, show_progress=show_progress,
        label=info.position_encoding,
    )
    previous = _read_json(output_path)
    evaluation = {
        "model_dir": str(info.path),
        "position_encoding": info.position_encoding,
        "train_length": info.train_length,
        "data": source,
        "variant": variant,
        "split": split,
        "stride": stride,
        "rope_scaling": scaling,
        "max_tokens": max_tokens,
        "max_windows": max_windows,
        "eval_runtime_s": time.perf_counter() - start,
        "results": rows,
        "tasks": previous.get("tasks", []) if isinstance(previous.get("tasks"), list) else [],  # kept, not ours to drop
    }
    if write:
        run_folder.write_eval(output_path, evaluation)
    return evaluation


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _describe(data) -> str:
    return data.get("description") or data.get("name") or data.get("kind") if isinstance(data, dict) else str(data)


def format_eval_table(evaluation: dict) -> str:
    """A markdown table of one eval.json (what ``hf-posenc eval`` prints)."""
    train = evaluation.get("train_length")
    windows = f"sliding windows, stride {evaluation['stride']}" if evaluation.get("stride") else "non-overlapping windows"
    lines = [
        f"Perplexity of {evaluation['model_dir']} (position_encoding={evaluation['position_encoding']}"
        + (f", trained on {train}-token sequences" if train else "") + ")",
        f"data: {_describe(evaluation['data'])} ({evaluation.get('split', 'validation')} split), {windows}"
        + (f", RoPE scaling {evaluation['rope_scaling']}" if evaluation.get("rope_scaling") else ""),
        "",
        "| length | perplexity | loss (nats/token) | scored tokens | windows | status |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for row in evaluation["results"]:
        length = f"{row['eval_length']}" + (" (train)" if row["eval_length"] == train else "")
        ppl = f"{row['perplexity']:.2f}" if row["perplexity"] is not None else "-"
        loss = f"{row['loss']:.4f}" if row["loss"] is not None else "-"
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
        lines.append(f"| {length} | {ppl} | {loss} | {row['num_tokens']} | {row.get('num_windows', '-')} | {status} |")
    return "\n".join(lines)


__all__ = [
    "evaluate_model_dir",
    "perplexity_by_length",
    "plan_windows",
    "check_lengths",
    "inspect_model_dir",
    "rope_scaling_parameters",
    "format_eval_table",
    "load_perplexity_metric",
    "PERPLEXITY_METRIC_DIR",
]
