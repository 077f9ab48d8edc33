"""PNG plots of comparisons and sweeps, drawn with matplotlib's Agg canvas (no display, no pyplot state).

matplotlib is imported inside the functions: the model and training code never need it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

_EXTRA_COLORS = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
DPI = 110


def encoding_color(encoding: str) -> str:
    """The encoding's own colour (its class attribute ``color``), the same in every figure of the project.

    A per-layer pattern has the mean of its parts' colours. Names that are not encodings (a variant label such as
    ``rope+randpos``) or encodings without a colour get a stable colour derived from the name.
    """
    from ..model.encodings_hf_posenc import position_encoding_class

    try:
        color = position_encoding_class(encoding).color
    except ValueError:  # a label, not an encoding
        color = None
    if color:
        return color
    return _EXTRA_COLORS[sum(map(ord, encoding)) % len(_EXTRA_COLORS)]


def line_style(encoding: str, *, randomized: bool = False, scaled: bool = False) -> dict:
    """Line keywords of one model: the encoding's colour; dashed with eval-time RoPE scaling, dash-dotted when
    trained with randomized positions (a variant keeps its encoding's colour, so the pair reads together)."""
    return {"color": encoding_color(encoding), "linestyle": "--" if scaled else "-." if randomized else "-"}


def record_line_style(record: dict) -> dict:
    """``line_style`` of the model a results.json record belongs to."""
    return line_style(record["position_encoding"], randomized=record.get("random_positions_max") is not None,
                      scaled=bool(record.get("rope_scaling")))


def new_figure(width: float, height: float):
    """A figure on the Agg canvas (no GUI backend, safe in threads and headless machines)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def read_metrics(model_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a model folder's metrics.jsonl."""
    from ..run_folder import METRICS_FILE
    from ..run_folder import read_metrics as read_metrics_file

    rows, _ = read_metrics_file(Path(model_dir) / METRICS_FILE)  # a line cut short by a kill is skipped
    return [row for row in rows if "loss" in row], [row for row in rows if "eval_loss" in row]


def plot_loss_curves(runs: Mapping[str, str | Path], path: str | Path, title: str = "Language-model training",
                     styles: Mapping[str, dict] | None = None) -> Path:
    """Training and validation loss by step, one line per model (``runs``: label -> model folder; ``styles``:
    label -> ``line_style(...)``, by default the colour of the encoding the label names)."""
    figure = new_figure(10, 3.8)
    train_ax, valid_ax = figure.subplots(1, 2)
    for label, model_dir in runs.items():
        train, valid = read_metrics(model_dir)
        style = (styles or {}).get(label) or line_style(label)
        if train:
            train_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=label, **style)
        if valid:
            valid_ax.plot([r["step"] for r in valid], [r["eval_loss"] for r in valid], marker="o", markersize=3,
                          label=label, **style)
    for ax, name in ((train_ax, "training loss"), (valid_ax, "validation loss")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{name} (nats/token)")
        ax.set_title(name.capitalize())
        ax.grid(alpha=0.3)
    valid_ax.legend(fontsize=8)
    figure.suptitle(title)
    return save(figure, path)


def plot_perplexity_vs_length(records: Sequence[dict], path: str | Path, train_length: int | None = None,
                              title: str = "Perplexity by evaluation length") -> Path:
    """One line per model (``label``, default the encoding), log y; unsupported lengths are marked in the legend."""
    figure = new_figure(9, 4.8)
    ax = figure.subplots()
    by_label: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record.get("record_type", "perplexity") == "perplexity" and not record.get("sliding"):
            by_label[record.get("label") or record["position_encoding"]].append(record)
    lengths = sorted({r["eval_length"] for rows in by_label.values() for r in rows})
    for label, rows in by_label.items():
        points = _mean_and_std(rows, "eval_length", "perplexity")  # over seeds
        missing = sorted({r["eval_length"] for r in rows} - {x for x, _, _ in points})
        legend = label + (f" (no value at {', '.join(map(str, missing))})" if missing else "")
        ax.errorbar([x for x, _, _ in points], [m for _, m, _ in points], yerr=[e for _, _, e in points], marker="o",
                    markersize=4, capsize=3, label=legend, **record_line_style(rows[0]))
    if train_length:
        ax.axvline(train_length, color="grey", linestyle=":", label=f"training length ({train_length})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    if lengths:
        ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(figure, path)


def plot_task_accuracy(records: Sequence[dict], path: str | Path, train_range: tuple[int, int] | None = None,
                       title: str = "Synthetic tasks: exact-match accuracy by length") -> Path:
    """One panel per task, one line per encoding; the trained lengths are shaded."""
    rows = [r for r in records if r.get("record_type") == "task"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    figure = new_figure(4.2 * max(1, len(tasks)), 3.8)
    axes = figure.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        by_encoding: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if r["task"] == task:
                by_encoding[r["position_encoding"]].append(r)
        for encoding, cells in by_encoding.items():
            points = _mean_and_std(cells, "length", "accuracy")  # over seeds
            ax.errorbar([x for x, _, _ in points], [m for _, m, _ in points], yerr=[e for _, _, e in points],
                        marker="o", markersize=4, capsize=3, color=encoding_color(encoding), label=encoding)
        ax.set_xticks(sorted({r["length"] for r in rows if r["task"] == task}))
        if train_range:
            ax.axvspan(train_range[0] - 0.5, train_range[1] + 0.5, color="grey", alpha=0.15, label="trained lengths")
        ax.set_title(task)
        ax.set_xlabel("instance length (digits)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy")
    axes[-1].legend(fontsize=8)
    figure.suptitle(title)
    return save(figure, path)


def plot_loss_by_position(records: Sequence[dict], path: str | Path, train_length: int | None = None,
                          title: str = "Loss by position inside the evaluation window") -> Path:
    """One panel per evaluation length: mean loss (over seeds) of each position bucket, one line per model
    (``label``: an encoding or its randomized-positions variant)."""
    rows = [r for r in records if r.get("record_type") == "position_loss"]
    lengths = sorted({r["eval_length"] for r in rows})
    figure = new_figure(3.6 * max(1, len(lengths)), 3.6)
    axes = figure.subplots(1, max(1, len(lengths)), squeeze=False, sharey=True)[0]
    for ax, length in zip(axes, lengths):
        for label in dict.fromkeys(_label(r) for r in rows):
            mine = [r for r in rows if r["eval_length"] == length and _label(r) == label]
            if not mine:
                continue
            seeds = [r["buckets"] for r in mine]
            centers = [(b["first"] + b["last"]) / 2 for b in seeds[0]]
            means = [sum(s[i]["loss"] for s in seeds) / len(seeds) for i in range(len(centers))]
            ax.plot(centers, means, label=label, **record_line_style(mine[0]))
        if train_length and train_length < length:
            ax.axvline(train_length, color="grey", linestyle=":", label=f"training length ({train_length})")
        ax.set_title(f"{length}-token windows")
        ax.set_xlabel("position in window")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean loss (nats/token)")
    axes[-1].legend(fontsize=7)
    figure.suptitle(title)
    return save(figure, path)


def plot_passkey_heatmaps(records: Sequence[dict], path: str | Path, train_context: int | None = None,
                          title: str = "Passkey retrieval accuracy") -> Path:
    """One heatmap per encoding: accuracy (mean over seeds) by context length (x) and key depth (y)."""
    rows = [r for r in records if r.get("record_type") == "passkey"]
    encodings = list(dict.fromkeys(r["position_encoding"] for r in rows))
    contexts = sorted({r["context"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    columns = min(3, max(1, len(encodings)))
    figure = new_figure(3.4 * columns, 2.9 * math.ceil(max(1, len(encodings)) / columns))
    axes = figure.subplots(math.ceil(max(1, len(encodings)) / columns), columns, squeeze=False).ravel()
    image = None
    for ax, encoding in zip(axes, encodings):
        grid = [[_mean([r["accuracy"] for r in rows if r["position_encoding"] == encoding and r["context"] == c
                        and r["depth"] == d]) for c in contexts] for d in depths]  # (depths, contexts)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(contexts)), [f"{c}{'*' if train_context and c <= train_context else ''}" for c in contexts])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_title(encoding)
        ax.set_xlabel("context (tokens; * = trained)")
        ax.set_ylabel("key depth")
    for ax in axes[len(encodings):]:
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=list(axes[: len(encodings)]), shrink=0.8, label="exact-match accuracy")
    figure.suptitle(title)
    return save(figure, path)


def _label(record: dict) -> str:
    return record.get("label") or record["position_encoding"]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _mean_and_std(rows: Sequence[dict], x_key: str, y_key: str) -> list[tuple[float, float, float]]:
    """(x, mean, std) over the rows sharing x (one row per seed; std 0 for one seed); failed rows are skipped."""
    grouped: dict = defaultdict(list)
    for r in rows:
        if r.get("status", "ok") == "ok" and _finite(r.get(y_key)):
            grouped[r[x_key]].append(r[y_key])
    points = []
    for x in sorted(grouped):
        values = grouped[x]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        points.append((x, mean, std))
    return points


def plot_sweep(trials: Sequence[dict], path: str | Path, title: str = "Hyperparameter sweep") -> Path:
    """Validation loss per trial (coloured by encoding), then against each swept parameter."""
    done = [t for t in trials if t.get("status") == "ok" and _finite(t.get("eval_loss"))]
    params = sorted({name for t in done for name in t.get("params", {})})
    panels = 1 + len(params)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = new_figure(4.2 * columns, 3.4 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    encodings = list(dict.fromkeys(t["position_encoding"] for t in done))
    for encoding in encodings:
        mine = [(i, t) for i, t in enumerate(done) if t["position_encoding"] == encoding]
        axes[0].scatter([i for i, _ in mine], [t["eval_loss"] for _, t in mine], color=encoding_color(encoding),
                        label=encoding, s=18)
    axes[0].set_xlabel("trial (in run order)")
    axes[0].set_ylabel("validation loss")
    axes[0].set_title("all trials")
    axes[0].legend(fontsize=8)
    for ax, name in zip(axes[1:], params):
        values = [t["params"].get(name) for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        categories = sorted({str(v) for v in values})
        for encoding in encodings:
            xs, ys = [], []
            for t in done:
                if t["position_encoding"] == encoding and name in t["params"]:
                    value = t["params"][name]
                    xs.append(value if numeric else categories.index(str(value)))
                    ys.append(t["eval_loss"])
            ax.scatter(xs, ys, color=encoding_color(encoding), s=18)
        if numeric and values and min(values) > 0 and max(values) / min(values) >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories)
        elif len(set(values)) <= 6:  # a few choices: tick exactly those
            ax.set_xticks(sorted(set(values)))
        ax.set_xlabel(name)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.set_visible(False)
    figure.suptitle(title)
    return save(figure, path)


def _plain_log_labels(axis) -> None:
    """Label a log axis with plain numbers (12.5, 20) instead of 1.25x10^1."""
    from matplotlib.ticker import FuncFormatter

    formatter = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(formatter)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "plot_loss_curves",
    "plot_perplexity_vs_length",
    "plot_task_accuracy",
    "plot_loss_by_position",
    "plot_passkey_heatmaps",
    "plot_sweep",
    "encoding_color",
    "line_style",
]
