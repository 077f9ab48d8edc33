"""Figures that explain the position encodings: what each one does with relative distance, and what a
trained model's attention looks like under it.

1. ``plot_distance_profiles``: per encoding, the attention bias or query-key similarity as a function of the
   distance between query and key. Each encoding draws itself (``PositionEncoding.distance_profile``): a score
   bias per head, a rotation as the q.k similarity of a vector rotated to both positions, an added embedding as
   the cosine similarity of position vectors; t5_bias shows its bucket structure untrained, learned its
   (random or trained) table. A registered encoding is drawn the same way with no edit here.

2. ``average_attention`` / ``plot_attention_maps``: the attention weights of trained models (eager attention,
   ``output_attentions=True``) averaged over layers, heads and windows of held-out text, as heatmaps, and
   ``plot_attention_by_distance``: the average weight a query gives a key ``d`` tokens back.

3. ``data_dependent_by_distance`` / ``plot_data_dependent_profiles``: for encodings whose bias depends on the
   text (fox, cope), the quantity each layer computes on real text (FoX's log decay, CoPE's contextual
   position), averaged over windows and queries, per head, against the distance.

matplotlib is imported lazily (through ``hf_posenc.study.plots``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .. import run_folder
from ..errors import UsageError
from .plots import encoding_color, new_figure, save



def reference_config(**overrides):
    """The config used when no trained model is given: a GPT-2-small-like shape (8 heads of 64, 12 layers, so
    that per-layer patterns up to 12 names long reach every name)."""
    from ..model.configuration_hf_posenc import PosEncConfig

    values = dict(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=12, num_attention_heads=8,
                  max_position_embeddings=1024, t5_num_buckets=32, t5_max_distance=128)
    values.update(overrides)
    return PosEncConfig(**values)


# ---- 1. distance profiles ---------------------------------------------------------------------------------
def distance_profile(encoding_name: str, config, model=None, max_distance: int = 256, seed: int = 0) -> dict:
    """Curves of one encoding against relative distance 0..max_distance, drawn by the encoding itself.

    Returns ``{"distance": (D,) tensor, "curves": [(label, (D,) tensor)], "ylabel": str, "note": str}``.
    ``model``: a trained ``PosEncForCausalLM`` of this encoding (its learned parameters are drawn).
    """
    from ..model.encodings_hf_posenc import build_position_encoding

    config = _with_encoding(config, encoding_name)
    torch.manual_seed(seed)
    encoding = model.model.position_encoding if model is not None else build_position_encoding(config)
    trained = model is not None and any(True for _ in encoding.parameters())
    profile = encoding.distance_profile(max_distance, trained=trained)
    distance = torch.arange(max_distance + 1)
    curves = [(label, values.detach().float().cpu()) for label, values in profile["curves"]]
    return _profile(distance[: max((len(v) for _, v in curves), default=len(distance))], curves, profile["ylabel"],
                    profile.get("note", "trained" if trained else "definition"))


def _profile(distance, curves, ylabel, note) -> dict:
    return {"distance": distance, "curves": curves, "ylabel": ylabel, "note": note}


def _with_encoding(config, name):
    if config.position_encoding == name:
        return config
    from ..model.configuration_hf_posenc import PosEncConfig

    values = config.to_dict()
    values["position_encoding"] = name
    return PosEncConfig.from_dict(values)


def plot_distance_profiles(path: str | Path, config=None, models: Mapping[str, object] | None = None,
                           encodings: Sequence[str] | None = None, max_distance: int = 256) -> Path:
    """One panel per encoding (default: every registered one): bias / similarity against query-key distance."""
    from ..model.encodings_hf_posenc import available_position_encodings

    encodings = available_position_encodings() if encodings is None else list(encodings)
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


# ---- 3. data-dependent encodings on real text ----------------------------------------------------------
@torch.no_grad()
def data_dependent_by_distance(model, windows: torch.LongTensor, batch_size: int = 4) -> dict | None:
    """What a data-dependent encoding computes on text, by distance: ``{"label": str, "layers": (layers, heads,
    L)}`` (mean over windows and queries of the quantity at distance d), or None for other encodings."""
    hooks = [layer.self_attn.data_dependent_bias for layer in model.model.layers]
    if any(hook is None for hook in hooks):
        return None
    seen: list[list[torch.Tensor]] = [[] for _ in hooks]

    def recorder(index):
        def record(module, args):
            hidden_states, query, key = args[:3]
            quantity = module.explain(hidden_states, query, key)  # (batch, heads, L, L)
            length = quantity.shape[-1]
            by_distance = [quantity.diagonal(-d, dim1=-2, dim2=-1).mean(-1) for d in range(length)]  # each (b, heads)
            seen[index].append(torch.stack(by_distance, dim=-1).float().cpu())  # (b, heads, L)

        return record

    handles = [hook.register_forward_pre_hook(recorder(i)) for i, hook in enumerate(hooks)]
    try:
        for start in range(0, len(windows), batch_size):
            model(input_ids=windows[start : start + batch_size].to(next(model.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    layers = torch.stack([torch.cat(values).mean(0) for values in seen])  # (layers, heads, L)
    return {"label": hooks[0].explained, "layers": layers}


def plot_data_dependent_profiles(profiles: Mapping[str, dict], path: str | Path) -> Path:
    """One panel per (encoding, layer): the per-head quantity against distance, measured on real text."""
    panels = [(name, layer, values) for name, profile in profiles.items() for layer, values in enumerate(profile["layers"])]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = new_figure(4.0 * columns, 3.0 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, layer, values) in zip(axes, panels):
        distance = torch.arange(values.shape[-1]).numpy()
        for head, curve in enumerate(values):
            ax.plot(distance, curve.numpy(), linewidth=1.0, alpha=0.85, label=f"head {head}")
        ax.set_title(f"{name}, layer {layer}", fontsize=10)
        ax.set_xlabel("distance query - key (tokens)")
        ax.set_ylabel(profiles[name]["label"], fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle("Data-dependent encodings on validation text: mean over windows and queries")
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
    from ..model.encodings_hf_posenc import available_position_encodings

    order = available_position_encodings()  # registry order; unknown names (not registered here) last
    return {name: found[name] for name in sorted(found, key=lambda n: order.index(n) if n in order else len(order))}


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
    # with trained models: their encodings; without: every registered encoding, by definition
    written = [plot_distance_profiles(output_dir / "encoding_distance_profiles.png", models=models,
                                      encodings=list(models) or None, max_distance=max_distance or max(2 * length, 64))]
    if models:
        maps, data_dependent = {}, {}
        text_cache: dict[str, torch.Tensor] = {}
        for name, model in tqdm(models.items(), desc="attention maps", unit="model", disable=not show_progress):
            if model.model.position_encoding.max_positions is not None and length > model.model.position_encoding.max_positions:
                continue  # learned cannot represent this length
            tokenizer_key = (model_dirs[name] / "tokenizer.json").read_text() if (model_dirs[name] / "tokenizer.json").is_file() else name
            if tokenizer_key not in text_cache:
                text_cache[tokenizer_key] = validation_windows(model_dirs[name], length, windows, data)
            maps[name] = average_attention(model, text_cache[tokenizer_key])
            profile = data_dependent_by_distance(model, text_cache[tokenizer_key])
            if profile is not None:
                data_dependent[name] = profile
        written.append(plot_attention_maps(maps, output_dir / "attention_maps.png"))
        written.append(plot_attention_by_distance(maps, output_dir / "attention_by_distance.png", train_length))
        if data_dependent:
            written.append(plot_data_dependent_profiles(data_dependent, output_dir / "data_dependent_by_distance.png"))
    return written


__all__ = [
    "distance_profile",
    "plot_distance_profiles",
    "average_attention",
    "attention_by_distance",
    "plot_attention_maps",
    "plot_attention_by_distance",
    "data_dependent_by_distance",
    "plot_data_dependent_profiles",
    "find_model_dirs",
    "draw_figures",
    "reference_config",
]
