"""Summarize a scripts/gpu_checks.sh run: every section's targets, the agreement checks, the tables.

    python scripts/gpu_summary.py OUT_DIR      # writes OUT_DIR/summary.json, prints the report

Each bench section's targets are decided inside that section (its models ran in the same interleaved rounds);
this script only gathers them, so it needs no GPU and can be rerun anywhere on the copied results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SECTIONS = ("train_eager", "train_compiled", "decode", "scaling", "decode_static", "train_bias_sdpa")


def main(out: Path) -> int:
    from hf_posenc.bench.report import evaluate_targets, format_table, format_targets, plot_scaling

    summary = {"sections": {}, "targets": [], "agreement": None}
    lines = []
    for name in SECTIONS:
        path = out / f"{name}.json"
        if not path.exists():
            summary["sections"][name] = "missing (skipped, timed out or failed: see sections.txt and its .log)"
            lines.append(f"[{name}] no results")
            continue
        records = json.loads(path.read_text())
        device = records[0]["device"] if records else "cpu"
        targets = evaluate_targets(records, device)
        for target in targets:
            target["section"] = name
        summary["targets"] += targets
        summary["sections"][name] = f"{len(records)} records"
        lines += [f"[{name}] {records[0]['device_name'] if records else ''}", format_table(records), format_targets(targets), ""]
        if name == "scaling" and not (out / "scaling.png").exists():
            plot_scaling(records, out / "scaling.png")  # the GPU machine may lack matplotlib: plot here then

    agreement = out / "agreement.json"
    if agreement.exists():
        checks = json.loads(agreement.read_text())
        failed = [c for c in checks if c.get("ok") is False]
        skipped = [c for c in checks if c.get("ok") is None]
        summary["agreement"] = {"checks": len(checks), "failed": failed, "skipped": len(skipped)}
        lines.append(f"[agreement] {len(checks) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
                     f"{len(skipped)} skipped (time budget)")
        for check in failed:
            lines.append(f"  FAIL {check['check']}({check['encoding']}, {check['backend']}"
                         f"{', compiled' if check.get('compiled') else ''}): {check.get('reason') or check.get('max_abs_error')}")
    else:
        lines.append("[agreement] no results")

    met = [t for t in summary["targets"] if t["met"] is True]
    missed = [t for t in summary["targets"] if t["met"] is False]
    lines.append(f"targets: {len(met)} met, {len(missed)} missed, "
                 f"{len(summary['targets']) - len(met) - len(missed)} undecided")
    for target in missed:
        lines.append(f"  MISSED [{target['section']}] {target['target']}: {target['value']}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_checks_out")))
