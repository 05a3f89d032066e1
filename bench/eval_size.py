"""Evaluation size for a target width of the paired interval on Δ vs float, from a finished run.

Usage: python bench/eval_size.py RUN_DIR [--half-width 0.005] [--corpus-free N]

Reads RUN_DIR/report.json (schema v2: per-variant `intervals.vs_float` with the discordant count) and
prints, per variant, the discordance rate q, the achieved half-width of its paired interval, and the
evaluation size n = (z / h)² · q that would bring the half-width to h (normal approximation of the
paired difference: var(Δ) ≈ q / n when the net difference is small next to q). Also the evaluation
throughput of the run's evaluate stage (texts per second, probe split included), so the cost of a larger
split can be estimated on the same machine. Writes RUN_DIR/bench_eval_size.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from quant_workbench.core.artifacts import write_json

# the formula the selection's "undetermined" names a size with, kept in the library
from quant_workbench.measure.stats import required_size


def summarise(run_dir: Path, half_width: float) -> dict[str, Any]:
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    if report.get("schema_version", 1) < 2:
        raise SystemExit(f"{run_dir}/report.json is schema v{report.get('schema_version', 1)}: it has no paired statistics; re-run the recipe")
    sizes = report["data"]["sizes"]
    rows = []
    for v in report["variants"]:
        cmp = (v.get("intervals") or {}).get("vs_float")
        if v.get("status") != "ok" or not cmp:
            continue
        q = cmp["discordant"] / cmp["n"]
        rows.append({
            "variant": v["name"], "n": cmp["n"], "discordant": cmp["discordant"], "discordance": q,
            "achieved_half_width": (cmp["delta_high"] - cmp["delta_low"]) / 2,
            "required_n": required_size(q, half_width, cmp["level"]),
        })
    ok = [v for v in report["variants"] if v.get("status") == "ok"]
    texts = sizes["evaluation"] * len(ok) + (sizes.get("probe", 0) if report["task"] == "embedding" else 0)
    # v4: the evaluation stops variants early and counts what it really scored
    texts = (report.get("evaluation") or {}).get("texts_scored", texts)
    seconds = report["timings_s"].get("evaluate")
    return {
        "half_width_target": half_width, "variants": rows,
        "required_n": max((r["required_n"] for r in rows), default=None),
        "evaluate_stage": {"texts": texts, "seconds": seconds, "texts_per_s": texts / seconds if seconds else None},
        "machine": report.get("hardware", {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--half-width", type=float, default=0.005, help="target half-width of the paired interval (0.005 = ±0.5 point)")
    args = ap.parse_args()
    out = summarise(args.run_dir, args.half_width)
    for r in out["variants"]:
        print(f"{r['variant']:>18}: discordant {r['discordant']}/{r['n']} ({100 * r['discordance']:.2f} %), "
              f"achieved ±{100 * r['achieved_half_width']:.2f} pts, n for ±{100 * args.half_width:g} pts: {r['required_n']}")
    ev = out["evaluate_stage"]
    if ev["texts_per_s"]:
        print(f"evaluate stage: {ev['texts']} texts in {ev['seconds']:.1f} s = {ev['texts_per_s']:.0f} texts/s")
    write_json(args.run_dir / "bench_eval_size.json", out)


if __name__ == "__main__":
    main()
