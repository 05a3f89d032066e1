"""Latency of a finished run's engine graphs on ONNX Runtime, interleaved in one process.

Usage: python bench/latency.py RUN_DIR [--variants float int8-max ref:ort-dynamic] [--batch 1 32] [--seq 128]
                               [--iterations 30] [--extra NAME=PATH ...]

Times, at each shape, the graph each variant actually runs as (report.json's engine graph: the fused
float baseline, the fused INT8 graph, the reference rows), every one once per round in a fresh random
order (seeded, recorded), ONNX Runtime sessions without spinning threads, plus an A/A control (float in
a second session, which must read 1.00x); prints medians and every ratio (median per-round ratio with
a block-bootstrap interval) against float and against ref:ort-dynamic, and writes
RUN_DIR/bench_latency.json. Default variants: float, the selected variant, int8-dynamic and every
reference row. Never a timed unit test.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from quant_workbench.config.recipe import BenchmarkSpec, EngineSpec
from quant_workbench.core.artifacts import write_json
from quant_workbench.core.machine import hardware
from quant_workbench.measure.latency import (
    aa_name,
    aa_summary,
    benchmark_interleaved,
    speedup_intervals,
    speedups,
)
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts


def engine_graph(run_dir: Path, variant: dict[str, Any]) -> Path:
    """The file a variant was scored and timed with (see export/graphs.py)."""
    graph = (variant.get("fidelity") or {}).get("engine_graph") or {}
    arts = variant.get("artifacts") or {}
    rel = graph.get("path") if str(graph.get("path", "")).startswith("models/") else None
    rel = rel or arts.get("engine_onnx") or arts.get("reference_onnx") or arts.get("onnx")
    if graph.get("graph") == "qdq":  # the run fell back to the Q/DQ export for this variant
        rel = arts.get("onnx")
    return run_dir / str(rel)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variants", nargs="+", default=None, help="default: float, the selected variant, int8-dynamic, the reference rows")
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=PATH: more ONNX files to time in the same loop")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seq", type=int, nargs="+", default=[128])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=None, help="keep timing until every speed-up interval is within ±this (e.g. 0.05); default: exactly --iterations rounds")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-round random orders")
    args = ap.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"] if v["status"] == "ok"}
    names = args.variants or [n for n in ["float", report["best_variant"], "int8-dynamic"] if n in by_name] + [n for n, v in by_name.items() if v.get("reference")]
    paths = {name: engine_graph(args.run_dir, by_name[name]) for name in dict.fromkeys(names)}
    paths.update({k: Path(v) for k, v in (x.split("=", 1) for x in args.extra)})
    engine_spec = EngineSpec(threads=args.threads)
    engines = {name: OrtEngine(p, engine_spec, name) for name, p in paths.items()}
    if "float" in paths:  # the A/A control: the float graph again, in its own session
        engines[aa_name("float")] = OrtEngine(paths["float"], engine_spec, aa_name("float"))
    spec = BenchmarkSpec(
        batch_sizes=args.batch, seq_lengths=args.seq, warmup=args.warmup, iterations=args.iterations, threads=args.threads,
        speedup_tolerance=args.tolerance, max_seconds=args.max_seconds,
    )
    input_names = sorted({n for e in engines.values() for n in e.input_names}, key=["input_ids", "attention_mask", "token_type_ids"].index)
    vocab = 30522
    design: dict[str, Any] = {}
    latency = benchmark_interleaved(dict(engines.items()), spec, input_names, vocab_size=vocab, seed=args.seed, record=design)
    out: dict[str, Any] = {
        "machine": {**hardware(), "threads": args.threads or os.cpu_count()},
        "graphs": {name: str(p) for name, p in paths.items()},
        "engine": {name: optimized_op_counts(p, engine_spec) for name, p in paths.items()},
        "latency": {name: [s.__dict__ for s in stats] for name, stats in latency.items()},
        "design": {**design, "sessions": next(iter(engines.values())).describe()},
        "aa": aa_summary(latency, "float") if "float" in latency else {},
    }
    for name, stats in latency.items():
        for s in stats:
            print(
                f"{name:>18} b{s.batch_size:<3} s{s.seq_length:<4} p50 {s.p50_ms:8.2f} ms ({s.p50_low_ms or 0:.2f}-{s.p50_high_ms or 0:.2f})  "
                f"p95 {s.p95_ms:8.2f} ms  {s.iterations} rounds ({s.stop})"
            )
    for key, aa in out["aa"].items():
        print(f"A/A control (float in a second session) {key}: {aa['ratio']:.3f}x ({aa['low']:.3f}-{aa['high']:.3f}); it must read 1.00x")
    for base in ("float", "ref:ort-float", "ref:ort-dynamic"):
        if base not in latency:
            continue
        ratios = speedups(latency, base)
        intervals = speedup_intervals(latency, base)
        out[f"speedup_vs_{base}"] = ratios
        out[f"speedup_interval_vs_{base}"] = intervals
        print(f"-- p50 speed-up vs {base} (> 1: faster), 95 % interval from the interleaved rounds")
        for name, by_shape in ratios.items():
            iv = intervals.get(name, {})
            print(f"{name:>18} " + "  ".join(
                f"{k}: {r:.2f}x" + (f" ({iv[k][0]:.2f}-{iv[k][1]:.2f})" if k in iv else "") for k, r in by_shape.items()
            ))
    write_json(args.run_dir / "bench_latency.json", out)


if __name__ == "__main__":
    main()
