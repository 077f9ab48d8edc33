"""Presenting benchmark records: ratios, the printed tables, the speed targets, JSON and the scaling plot."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# The speed targets (docs/benchmark.md). On GPU (bf16, small-125m): every encoding >= 0.9x nope; rope >= 1.0x hf:llama when both
# are compiled and >= 1.4x its eager mode (MFU >= 45%); alibi >= 2x hf:bloom; alibi and t5_bias peak training
# memory <= 1.1x nope; 16k evaluation of alibi and t5_bias fits; decode at batch 1 >= 5 x 17 tokens/s.
# On CPU (tiny): rope >= 1.0x hf:llama, every encoding >= 0.8x nope.
GPU_MIN_RATIO_VS_NOPE = 0.9
CPU_MIN_RATIO_VS_NOPE = 0.8
DECODE_BASELINE_TOKENS_PER_S = 17.0  # transformers' generate, batch 1, H200 (docs/benchmark.md, reference measurements)
DECODE_MIN_SPEEDUP = 5.0
MIN_MFU = 0.45
LONG_EVAL_TOKENS = 16384


def _train_rows(records, compiled: bool | None = None) -> dict[str, dict]:
    rows = {}
    for record in records:
        if record["mode"] == "train" and (compiled is None or record.get("compiled") == compiled):
            rows[record["model"]] = record
    return rows


def _ratio(numerator, denominator):
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def paired_ratio(record: dict, baseline: dict) -> float | None:
    """Median over timed rounds of baseline_step_time / step_time, both from the same round.

    Rounds are interleaved, so the two steps of a pair ran seconds apart: a change of machine load between
    rounds cancels out, which the ratio of two medians does not do.
    """
    times, base = record.get("step_times_s") or [], baseline.get("step_times_s") or []
    if not times or len(times) != len(base):
        return None
    return statistics.median(b / t for b, t in zip(base, times))


def add_ratios(records: list[dict]) -> list[dict]:
    """Add speed ratios to train rows, comparing like with like (compiled or not).

    ``ratio_vs_nope`` / ``ratio_vs_hf_llama``: ratio of median tokens/s. ``paired_ratio_vs_nope`` /
    ``paired_ratio_vs_hf_llama``: median of per-round ratios (see ``paired_ratio``), the steadier figure on a
    shared machine and the one the targets use when present.
    """
    for compiled in (False, True):
        rows = _train_rows(records, compiled)
        for suffix, baseline_name in (("nope", "hf_posenc:nope"), ("hf_llama", "hf:llama")):
            baseline = rows.get(baseline_name, {})
            for record in rows.values():
                record[f"ratio_vs_{suffix}"] = _ratio(record.get("tokens_per_s"), baseline.get("tokens_per_s"))
                record[f"paired_ratio_vs_{suffix}"] = paired_ratio(record, baseline) if baseline else None
    return records


def _best_ratio(row: dict, suffix: str):
    paired = row.get(f"paired_ratio_vs_{suffix}")
    return paired if paired is not None else row.get(f"ratio_vs_{suffix}")


def _fmt(value, spec="{:.0f}", missing="-"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return spec.format(value)


def _mib(value):
    return _fmt(None if value is None else value / 2**20, "{:.0f}")


def format_table(records: list[dict]) -> str:
    """Plain-text tables: training, decoding, scaling (whichever are present)."""
    lines = []
    width = max([24] + [len(r["model"]) for r in records])  # the model column fits the longest name (patterns)
    train = [r for r in records if r["mode"] == "train"]
    if train:
        lines.append("Training (tokens/s: median of timed steps; memory: params + optimizer state + step peak)")
        lines.append("vs nope / vs llama: ratio of medians (paired: median of per-round ratios)")
        header = (f"{'model':{width}} {'compiled':8} {'attn':15} {'tokens/s':>10} {'vs nope':>15} {'vs llama':>15} "
                  f"{'MFU':>6} {'peak MiB':>9} {'steps':>5} status")
        lines += [header, "-" * len(header)]
        for r in train:
            vs_nope = f"{_fmt(r.get('ratio_vs_nope'), '{:.2f}')} ({_fmt(r.get('paired_ratio_vs_nope'), '{:.2f}')})"
            vs_llama = f"{_fmt(r.get('ratio_vs_hf_llama'), '{:.2f}')} ({_fmt(r.get('paired_ratio_vs_hf_llama'), '{:.2f}')})"
            lines.append(
                f"{r['model']:{width}} {str(r.get('compiled')):8} {r.get('attn_implementation', '-'):15} "
                f"{_fmt(r.get('tokens_per_s')):>10} {vs_nope:>15} {vs_llama:>15} {_fmt(r.get('mfu'), '{:.1%}'):>6} "
                f"{_mib(r.get('peak_memory_bytes')):>9} {_fmt(r.get('timed_steps'), '{}'):>5} {r.get('status')}"
                + (f" ({r['reason']})" if r.get("reason") else "")
            )
    decode = [r for r in records if r["mode"] == "decode"]
    if decode:
        lines.append("")
        lines.append("Decoding with the cache (greedy generate; tokens/s = batch x new tokens / call time)")
        header = f"{'model':{width}} {'cache':8} {'compiled':8} {'attn':15} {'batch':>5} {'tokens/s':>10} {'peak MiB':>9} status"
        lines += [header, "-" * len(header)]
        for r in decode:
            lines.append(
                f"{r['model']:{width}} {r['cache']:8} {str(r.get('compiled')):8} {r.get('attn_implementation', '-'):15} "
                f"{r['batch']:>5} {_fmt(r.get('tokens_per_s'), '{:.1f}'):>10} {_mib(r.get('peak_memory_bytes')):>9} "
                f"{r.get('status')}" + (f" ({r['reason']})" if r.get("reason") else "")
            )
    scaling = [r for r in records if r["mode"].endswith("_scaling")]
    if scaling:
        lines.append("")
        lines.append("Scaling with sequence length (batch 1; ms per pass / peak MiB)")
        lengths = sorted({r["seq_len"] for r in scaling})
        header = f"{'model':{width}} {'mode':14} {'attn':15} " + " ".join(f"{length:>16}" for length in lengths)
        lines += [header, "-" * len(header)]
        keys = list(dict.fromkeys((r["model"], r["mode"], r["attn_implementation"]) for r in scaling))
        for model, mode, attn in keys:
            cells = []
            for length in lengths:
                row = next(
                    (r for r in scaling if (r["model"], r["mode"], r["attn_implementation"], r["seq_len"]) == (model, mode, attn, length)),
                    None,
                )
                if row is None:
                    cells.append("")
                elif row.get("status") != "ok":
                    cells.append(row.get("status", "?"))
                else:
                    cells.append(f"{row['time_s'] * 1e3:.1f}/{_mib(row['peak_memory_bytes'])}")
            lines.append(f"{model:{width}} {mode:14} {attn:15} " + " ".join(f"{cell:>16}" for cell in cells))
    return "\n".join(lines)


def _target(name: str, value, threshold, comparison: str = ">=") -> dict:
    met = None if value is None else (value >= threshold if comparison == ">=" else value <= threshold)
    return {"target": name, "value": value, "threshold": threshold, "comparison": comparison, "met": met}


def evaluate_targets(records: list[dict], device_type: str) -> list[dict]:
    """The speed targets that the records can decide (``met`` is None where a needed row is missing)."""
    targets = []
    min_ratio = GPU_MIN_RATIO_VS_NOPE if device_type == "cuda" else CPU_MIN_RATIO_VS_NOPE
    for compiled in (False, True):
        rows = _train_rows(records, compiled)
        if not rows:
            continue
        label = "compiled" if compiled else "eager"
        if "hf_posenc:nope" in rows:
            for model, row in rows.items():
                if model.startswith("hf_posenc:") and model != "hf_posenc:nope":
                    targets.append(_target(f"train {label}: {model} tokens/s vs nope", _best_ratio(row, "nope"), min_ratio))
        if "hf_posenc:rope" in rows and "hf:llama" in rows:
            targets.append(
                _target(f"train {label}: rope tokens/s vs hf:llama", _best_ratio(rows["hf_posenc:rope"], "hf_llama"), 1.0)
            )
        if device_type == "cuda":
            bloom = rows.get("hf:bloom", {}).get("tokens_per_s")
            alibi = rows.get("hf_posenc:alibi", {}).get("tokens_per_s")
            if bloom is not None:
                targets.append(_target(f"train {label}: alibi tokens/s vs hf:bloom", _ratio(alibi, bloom), 2.0))
            nope_memory = rows.get("hf_posenc:nope", {}).get("peak_memory_bytes")
            for encoding in ("alibi", "t5_bias"):
                memory = rows.get(f"hf_posenc:{encoding}", {}).get("peak_memory_bytes")
                if memory is not None:
                    targets.append(
                        _target(f"train {label}: {encoding} peak memory vs nope", _ratio(memory, nope_memory), 1.1, "<=")
                    )
    if device_type == "cuda":
        compiled_rows, eager_rows = _train_rows(records, True), _train_rows(records, False)
        rope = compiled_rows.get("hf_posenc:rope", {})
        if rope:
            llama_eager = eager_rows.get("hf:llama", {}).get("tokens_per_s")
            targets.append(
                _target("train: compiled rope tokens/s vs eager hf:llama", _ratio(rope.get("tokens_per_s"), llama_eager), 1.4)
            )
            targets.append(_target("train: compiled rope MFU", rope.get("mfu"), MIN_MFU))
        for encoding in ("alibi", "t5_bias"):
            long_rows = [
                r
                for r in records
                if r["mode"] == "eval_scaling" and r["model"] == f"hf_posenc:{encoding}" and r["seq_len"] >= LONG_EVAL_TOKENS
            ]
            if long_rows:
                fits = any(r.get("status") == "ok" for r in long_rows)
                targets.append(
                    {"target": f"eval at {LONG_EVAL_TOKENS} tokens fits: {encoding}", "value": fits, "threshold": True,
                     "comparison": "==", "met": fits}
                )
        batch_one = [r for r in records if r["mode"] == "decode" and r["batch"] == 1 and r["model"].startswith("hf_posenc:")]
        for model in dict.fromkeys(r["model"] for r in batch_one):
            best = max((r.get("tokens_per_s") or 0.0 for r in batch_one if r["model"] == model), default=0.0)
            targets.append(
                _target(
                    f"decode batch 1: {model} best tokens/s",
                    best or None,
                    DECODE_MIN_SPEEDUP * DECODE_BASELINE_TOKENS_PER_S,
                )
            )
    return targets


def format_targets(targets: list[dict]) -> str:
    lines = ["Targets"]
    for target in targets:
        value = target["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[target["met"]]
        lines.append(f"  {verdict:6} {target['target']}: {shown} ({target['comparison']} {target['threshold']})")
    return "\n".join(lines)


def write_json(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, default=str) + "\n")
    return path


def plot_scaling(records: list[dict], path: str | Path) -> Path | None:
    """Time and peak memory against sequence length, one line per (model, mode). None without matplotlib."""
    scaling = [r for r in records if r["mode"].endswith("_scaling") and r.get("status") == "ok"]
    if not scaling:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    models = list(dict.fromkeys(r["model"] for r in scaling))
    colors = {model: plt.get_cmap("tab10")(index % 10) for index, model in enumerate(models)}  # one per encoding
    for model, mode, attn in dict.fromkeys((r["model"], r["mode"], r["attn_implementation"]) for r in scaling):
        rows = sorted((r for r in scaling if (r["model"], r["mode"], r["attn_implementation"]) == (model, mode, attn)),
                      key=lambda r: r["seq_len"])
        label = f"{model.split(':', 1)[1]} {mode.replace('_scaling', '')} ({attn})"
        style = "-" if mode == "train_scaling" else "--"  # solid: forward+backward, dashed: evaluation
        lengths = [r["seq_len"] for r in rows]
        time_axis.plot(lengths, [r["time_s"] * 1e3 for r in rows], style, marker="o", color=colors[model], label=label)
        memory_axis.plot(lengths, [r["peak_memory_bytes"] / 2**30 for r in rows], style, marker="o",
                         color=colors[model], label=label)
    for axis, ylabel in ((time_axis, "ms per pass (batch 1)"), (memory_axis, "peak memory (GiB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length (tokens)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    first = scaling[0]
    figure.suptitle(f"hf_posenc scaling: {first['preset']} on {first['device_name']} ({first['dtype']})")
    time_axis.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
