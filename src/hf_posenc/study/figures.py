"""Figures that explain the position encodings: what each one does with relative distance, and what a
trained model's attention looks like under it.

1. ``plot_distance_profiles``: per encoding, the attention bias or query-key similarity as a function of the
   distance between query and key, computed by calling the encodings themselves:

   * alibi: the score bias ``-slope_h * distance`` of every head (the module's own ``score_bias``);
   * t5_bias: the learned bias of every head per distance (of a trained model), or, untrained, the bucket
     each distance falls into (the shared structure: exact buckets, then log-spaced ones);
   * rope: ``<R(d) q, R(0) k>`` for q = k, rotated by the module's own cos/sin: a constant vector (the slow
     decay of the RoPE paper) and the mean over random vectors, both normalised to 1 at distance 0;
   * sinusoidal: cosine similarity of the position vectors ``p`` and ``p + d`` (averaged over ``p``);
   * learned: the same for the learned position embeddings (of a trained model; untrained they are noise);
   * nope: no position signal at all (a flat line).

2. ``average_attention`` / ``plot_attention_maps``: the attention weights of trained models (eager attention,
   ``output_attentions=True``) averaged over layers, heads and windows of held-out text, as heatmaps, and
   ``plot_attention_by_distance``: the average weight a query gives a key ``d`` tokens back.

matplotlib is imported lazily (through ``hf_posenc.study.plots``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .. import run_folder
from ..errors import UsageError
from .plots import encoding_color, new_figure, save

BUILTIN_ORDER = ("sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope")


def reference_config(**overrides):
    """The config used when no trained model is given: a GPT-2-small-like shape (8 heads of 64)."""
    from ..model.configuration_hf_posenc import PosEncConfig

    values = dict(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=8,
                  max_position_embeddings=1024, t5_num_buckets=32, t5_max_distance=128)
    values.update(overrides)
    return PosEncConfig(**values)


# ---- 1. distance profiles ---------------------------------------------------------------------------------
def distance_profile(encoding_name: str, config, model=None, max_distance: int = 256, seed: int = 0) -> dict:
    """Curves of one encoding against relative distance 0..max_distance.

    Returns ``{"distance": (D,) tensor, "curves": [(label, (D,) tensor)], "ylabel": str, "note": str}``.
    ``model``: a trained ``PosEncForCausalLM`` of this encoding (used for learned and t5_bias).
    """
    from ..model.encodings_hf_posenc import build_position_encoding, sinusoidal_table, t5_causal_bucket
    from ..model.modeling_hf_posenc import apply_rotary

    config = _with_encoding(config, encoding_name)
    torch.manual_seed(seed)
    encoding = model.model.position_encoding if model is not None else build_position_encoding(config)
    distance = torch.arange(max_distance + 1)
    # only learned and t5_bias have trained parameters; the others are fixed functions of the distance
    note = "trained" if model is not None and encoding_name in ("learned", "t5_bias") else "definition"
    with torch.no_grad():
        if encoding_name == "alibi":
            bias = encoding.score_bias(max_distance + 1, torch.device("cpu"), torch.float32)
            heads = torch.arange(config.num_attention_heads)
            values = bias(heads[:, None], distance[None, :], torch.zeros_like(distance)[None, :])  # (heads, D)
            curves = [(f"head {h}", values[h]) for h in range(len(heads))]
            return _profile(distance, curves, "score bias added to q.k", note)
        if encoding_name == "t5_bias":
            if model is None:
                buckets = t5_causal_bucket(distance, config.t5_num_buckets, config.t5_max_distance).float()
                return _profile(distance, [("bucket", buckets)], "bucket index (bias is learned per bucket)",
                                "bucket structure (untrained)")
            bias = encoding.score_bias(max_distance + 1, torch.device("cpu"), torch.float32)
            heads = torch.arange(config.num_attention_heads)
            values = bias(heads[:, None], distance[None, :], torch.zeros_like(distance)[None, :])  # (heads, D)
            return _profile(distance, [(f"head {h}", values[h]) for h in range(len(heads))],
                            "learned score bias added to q.k", note)
        if encoding_name == "rope":
            positions = torch.cat([torch.zeros(1, dtype=torch.long), distance])[None, :]  # (1, 1 + D)
            cos, sin = encoding.rotary(torch.zeros(1, dtype=torch.float32), positions)  # (1, 1 + D, head_dim)
            cos, sin = cos.float(), sin.float()
            head_dim = cos.shape[-1]
            # q = k = a constant vector; for random q = k the expectation is the same curve: mean_i cos(d theta_i)
            base = torch.ones(1, 1, positions.shape[1], cos.shape[-1])  # (1, 1 head, 1 + D, head_dim)
            rotated, _ = apply_rotary(base, base, cos, sin)
            scores = (rotated[0, 0, 1:] * rotated[0, 0, :1]).sum(-1) / cos.shape[-1]  # <R(d) q, R(0) q> / |q|^2: (1 + D,)
            return _profile(distance, [("q = k (constant vector)", scores)], "q.k similarity (1 at distance 0)", note)
        if encoding_name in ("sinusoidal", "learned"):
            if encoding_name == "sinusoidal":
                count = max_distance + 256
                table = sinusoidal_table(torch.arange(count), config.hidden_size)  # (count, hidden)
            else:
                table = encoding.position_embeddings.weight.float()  # (max_positions, hidden)
                note = "trained" if model is not None else "untrained: random init"
            similarity = _mean_cosine_by_distance(table, max_distance)
            return _profile(distance[: len(similarity)], [("cosine similarity", similarity)],
                            "cos(position p, position p + d)", note)
        if encoding_name == "nope":
            return _profile(distance, [("no position signal", torch.zeros(len(distance)))], "position signal", note)
    return _profile(distance, [], "(no profile for this encoding)", "user-registered encoding")


def _profile(distance, curves, ylabel, note) -> dict:
    return {"distance": distance, "curves": curves, "ylabel": ylabel, "note": note}


def _with_encoding(config, name):
    if config.position_encoding == name:
        return config
    from ..model.configuration_hf_posenc import PosEncConfig

    values = config.to_dict()
    values["position_encoding"] = name
    return PosEncConfig.from_dict(values)


def _mean_cosine_by_distance(table: torch.Tensor, max_distance: int) -> torch.Tensor:
    """Mean over p of cos(table[p], table[p + d]) for d = 0..min(max_distance, len - 1)."""
    unit = torch.nn.functional.normalize(table, dim=-1)
    similarity = unit @ unit.T  # (P, P)
    largest = min(max_distance, len(table) - 1)
    return torch.stack([similarity.diagonal(d).mean() for d in range(largest + 1)])


def plot_distance_profiles(path: str | Path, config=None, models: Mapping[str, object] | None = None,
                           encodings: Sequence[str] = BUILTIN_ORDER, max_distance: int = 256) -> Path:
    """One panel per encoding: bias / similarity against query-key distance (see the module docstring)."""
    models = dict(models or {})
    if config is None:
        config = next(iter(models.values())).config if models else reference_config()
    columns = 3
    rows = -(-len(encodings) // columns)
    figure = new_figure(4.0 * columns, 3.0 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, encodings):
        model = models.get(name)
        profile = distance_profile(name, model.config if model is not None else config, model, max_distance)
        many = len(profile["curves"]) > 2
        for index, (label, values) in enumerate(profile["curves"]):
            ax.plot(profile["distance"][: len(values)].numpy(), values.numpy(), linewidth=1.2,
                    color=None if many else encoding_color(name), alpha=0.85, linestyle="-" if index == 0 or many else "--",
                    label=label)
        ax.set_title(f"{name} ({profile['note']})", fontsize=10)
        ax.set_xlabel("distance query - key (tokens)")
        ax.set_ylabel(profile["ylabel"], fontsize=8)
        ax.grid(alpha=0.3)
        if profile["curves"]:
            ax.legend(fontsize=6, ncol=2 if many else 1)
    for ax in axes[len(encodings):]:
        ax.set_visible(False)
    figure.suptitle("How each position encoding scores the distance between a query and a key")
    return save(figure, path)


# ---- 2. attention of trained models -----------------------------------------------------------------------
@torch.no_grad()
def average_attention(model, windows: torch.LongTensor, batch_size: int = 4) -> torch.Tensor:
    """Attention weights averaged over layers, heads and windows: ``(L, L)``, row q sums to 1 over keys <= q."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the only backend that returns the weights
    try:
        total = None
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(next(model.parameters()).device)  # (b, L)
            attentions = model(input_ids=batch, output_attentions=True, use_cache=False).attentions
            stacked = torch.stack(attentions).float()  # (layers, b, heads, L, L)
            summed = stacked.sum(dim=(0, 1, 2))  # (L, L)
            total = summed if total is None else total + summed
        layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
        return (total / (layers * heads * len(windows))).cpu()
    finally:
        model.set_attn_implementation(previous)


def attention_by_distance(attention: torch.Tensor) -> torch.Tensor:
    """Mean weight a query puts on the key ``d`` tokens back, over all queries that have one: ``(L,)``."""
    length = attention.shape[0]
    return torch.stack([attention.diagonal(-d).mean() for d in range(length)])


def plot_attention_maps(maps: Mapping[str, torch.Tensor], path: str | Path, title: str | None = None) -> Path:
    """Heatmaps (log colour scale) of averaged attention, one panel per encoding."""
    from matplotlib.colors import LogNorm

    columns = min(3, len(maps))
    rows = -(-len(maps) // columns)
    figure = new_figure(3.6 * columns, 3.3 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    image = None
    for ax, (name, attention) in zip(axes, maps.items()):
        values = attention.clamp(min=1e-5).numpy()
        causal = torch.ones_like(attention, dtype=torch.bool).tril().numpy()
        import numpy

        image = ax.imshow(numpy.where(causal, values, numpy.nan), norm=LogNorm(vmin=1e-4, vmax=1.0), cmap="viridis",
                          interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    for ax in axes[len(maps):]:
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=axes.tolist(), shrink=0.8, label="mean attention weight")
    length = next(iter(maps.values())).shape[0] if maps else 0
    figure.suptitle(title or f"Mean attention, {length}-token windows" + ("\n(layers, heads, windows averaged)" if len(maps) < 3 else " (layers, heads, windows averaged)"))
    return save(figure, path)


def plot_attention_by_distance(maps: Mapping[str, torch.Tensor], path: str | Path, train_length: int | None = None) -> Path:
    """Mean attention weight against distance, one line per encoding (log-log)."""
    figure = new_figure(7, 4.4)
    ax = figure.subplots()
    for name, attention in maps.items():
        profile = attention_by_distance(attention)
        distance = torch.arange(len(profile))
        ax.plot(distance[1:].numpy(), profile[1:].numpy(), color=encoding_color(name), label=name)
    if train_length:
        ax.axvline(train_length, color="grey", linestyle=":", label=f"training length ({train_length})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distance query - key (tokens, log)")
    ax.set_ylabel("mean attention weight (log)")
    ax.set_title("Where trained models look: attention by distance")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(figure, path)


# ---- loading trained models and text ------------------------------------------------------------------
def find_model_dirs(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Encoding -> model folder, from model folders or folders holding them (a compare output directory)."""
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise UsageError(f"models: {str(path)!r} is not a directory", field="models")
        candidates = [path] if (path / "config.json").is_file() else sorted(p for p in path.iterdir() if (p / "config.json").is_file())
        if not candidates:
            raise UsageError(f"models: {str(path)!r} holds no model folder (no config.json in it or its sub-folders)",
                             field="models")
        for candidate in candidates:
            config = run_folder.read_json_object(candidate / "config.json", "the model's config object")
            if config.get("model_type") != "hf_posenc":
                continue
            found.setdefault(config.get("position_encoding"), candidate)
    if not found:
        raise UsageError(f"models: no hf_posenc model found in {[str(p) for p in paths]}", field="models")
    return {name: found[name] for name in sorted(found, key=lambda n: (BUILTIN_ORDER + (n,)).index(n))}


def load_models(model_dirs: Mapping[str, Path]) -> dict:
    from ..model.loading import load_model_folder

    return {name: load_model_folder(path, attn_implementation="eager").eval() for name, path in model_dirs.items()}


def validation_windows(model_dir: Path, length: int, count: int, data: str | None = None) -> torch.LongTensor:
    """``count`` consecutive windows of ``length`` tokens of the model's validation text: ``(count, length)``."""
    from transformers import AutoTokenizer

    from ..evaluation.perplexity import eval_token_ids, inspect_model_dir

    info = inspect_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    stream = eval_token_ids(tokenizer, data if data is not None else info.data_name, data_config=info.data_config,
                            text_field=info.text_field, max_tokens=length * count)
    usable = len(stream) // length
    if usable == 0:
        raise UsageError(f"the validation text of {str(model_dir)!r} has {len(stream)} tokens, fewer than one {length}-token window")
    return stream[: usable * length].view(usable, length)  # (windows, length)


def draw_figures(output_dir: str | Path, model_paths: Sequence[str | Path] = (), *, length: int | None = None,
                 windows: int = 8, data: str | None = None, max_distance: int | None = None,
                 show_progress: bool = True) -> list[Path]:
    """Write the explanatory figures into ``output_dir``; with trained models also the attention figures.

    Returns the written PNG paths. All models share one tokenizer when they come from one compare run; each
    model reads its own validation text otherwise.
    """
    from tqdm.auto import tqdm

    output_dir = run_folder.check_writable_dir(output_dir, "figures output directory")  # before any work
    model_dirs = find_model_dirs(model_paths) if model_paths else {}
    models = load_models(model_dirs)
    train_length = None
    if model_dirs:
        from ..evaluation.perplexity import inspect_model_dir

        train_length = inspect_model_dir(next(iter(model_dirs.values()))).train_length
    if length is None:
        length = train_length or 128
    written = [plot_distance_profiles(output_dir / "encoding_distance_profiles.png", models=models,
                                      max_distance=max_distance or max(2 * length, 64))]
    if models:
        maps = {}
        text_cache: dict[str, torch.Tensor] = {}
        for name, model in tqdm(models.items(), desc="attention maps", unit="model", disable=not show_progress):
            if model.model.position_encoding.max_positions is not None and length > model.model.position_encoding.max_positions:
                continue  # learned cannot represent this length
            tokenizer_key = (model_dirs[name] / "tokenizer.json").read_text() if (model_dirs[name] / "tokenizer.json").is_file() else name
            if tokenizer_key not in text_cache:
                text_cache[tokenizer_key] = validation_windows(model_dirs[name], length, windows, data)
            maps[name] = average_attention(model, text_cache[tokenizer_key])
        written.append(plot_attention_maps(maps, output_dir / "attention_maps.png"))
        written.append(plot_attention_by_distance(maps, output_dir / "attention_by_distance.png", train_length))
    return written


__all__ = [
    "distance_profile",
    "plot_distance_profiles",
    "average_attention",
    "attention_by_distance",
    "plot_attention_maps",
    "plot_attention_by_distance",
    "find_model_dirs",
    "draw_figures",
    "reference_config",
]
