"""Cost of a search: one calibration pass + N x (export + evaluate + benchmark), from a finished run.

Usage: python bench/search_cost.py RUN_DIR

Reads RUN_DIR/search.json and RUN_DIR/report.json (written by `quantize <recipe with a search section>`),
prints the per-configuration time split into export / evaluate / benchmark (configurations evaluated for
the first time only; reused ones cost ~0), the calibration pass and the stage totals, and writes
RUN_DIR/bench_search_cost.json. Timings are measured inside the run itself, on the run's machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from quant_workbench.core.artifacts import write_json


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {"n": len(xs), "median_s": float(np.median(a)), "mean_s": float(a.mean()), "min_s": float(a.min()), "max_s": float(a.max()), "sum_s": float(a.sum())}


def summarise(run_dir: Path) -> dict[str, Any]:
    search = json.loads((run_dir / "search.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    fresh = [r for r in search["records"] if not r.get("reused") and r["status"] == "ok"]
    parts = {k: _stats([r["seconds"][k] for r in fresh if k in r["seconds"]]) for k in ("export", "evaluate", "benchmark", "total")}
    by_source: dict[str, list[float]] = {}
    for r in fresh:
        by_source.setdefault(r["source"], []).append(r["seconds"]["total"])
    study = search.get("study") or {}
    return {
        "run_dir": str(run_dir),
        "hardware": report.get("hardware"),
        "evaluation_samples": report["data"]["sizes"].get("evaluation"),
        "calibration": {"cache_hit": report["calibration"].get("cache_hit"), "seconds": report["calibration"].get("seconds")},
        "configurations": {"recorded": len(search["records"]), "evaluated_fresh": len(fresh), "exports": search.get("exports")},
        "per_configuration": parts,
        "per_source_total": {k: _stats(v) for k, v in by_source.items()},
        "study": {k: study.get(k) for k in ("complete", "failed", "interrupted", "skipped")},
        "stage_seconds": report.get("timings_s"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    out = summarise(args.run_dir)
    pc = out["per_configuration"]
    print(f"calibration pass: {out['calibration']['seconds']} s (cache hit: {out['calibration']['cache_hit']})")
    print(f"configurations: {out['configurations']}")
    for k in ("export", "evaluate", "benchmark", "total"):
        s = pc[k]
        if s.get("n"):
            print(f"  {k:<10} median {s['median_s']:.2f} s  mean {s['mean_s']:.2f} s  (n={s['n']}, sum {s['sum_s']:.0f} s)")
    print(f"stages: {out['stage_seconds']}")
    write_json(args.run_dir / "bench_search_cost.json", out)


if __name__ == "__main__":
    main()
