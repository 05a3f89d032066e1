"""Float vs INT8 latency on ONNX Runtime, interleaved in one process (the issue's speed target).

Usage: python bench/latency.py RUN_DIR [--variant int8-mse] [--batch 1 32] [--seq 128] [--iterations 30]

Reads the ONNX files of a finished run, times float and the INT8 variant round-robin at each shape,
and prints/writes medians and ratios (RUN_DIR/bench_latency.json). Never a timed unit test.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from quant_workbench.benchmark import benchmark_interleaved, speedups
from quant_workbench.engines.onnxruntime import OrtEngine, optimized_op_counts
from quant_workbench.io import write_json
from quant_workbench.recipe import BenchmarkSpec, EngineSpec
from quant_workbench.run import hardware


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variant", default=None, help="INT8 variant (default: the run's best)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seq", type=int, nargs="+", default=[128])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    variant = args.variant or report["best_variant"]
    paths = {"float": args.run_dir / "models" / "float.onnx", variant: args.run_dir / "models" / f"{variant}.qdq.onnx"}
    engine_spec = EngineSpec(threads=args.threads)
    engines = {name: OrtEngine(p, engine_spec, name) for name, p in paths.items()}
    spec = BenchmarkSpec(batch_sizes=args.batch, seq_lengths=args.seq, warmup=args.warmup, iterations=args.iterations, threads=args.threads)
    input_names = engines["float"].input_names
    latency = benchmark_interleaved(dict(engines.items()), spec, input_names, vocab_size=30522)
    ratios = speedups(latency, "float")[variant]
    cpu = hardware()["cpu"]
    out = {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads or os.cpu_count()},
        "variant": variant,
        "integer_matmuls": optimized_op_counts(paths[variant], engine_spec),
        "latency": {name: [s.__dict__ for s in stats] for name, stats in latency.items()},
        "speedup_p50": ratios,
    }
    for name, stats in latency.items():
        for s in stats:
            print(f"{name:>16} b{s.batch_size:<3} s{s.seq_length:<4} p50 {s.p50_ms:8.2f} ms  p95 {s.p95_ms:8.2f} ms  {s.throughput_seq_per_s:8.1f} seq/s")
    for key, r in ratios.items():
        print(f"speed-up {variant} vs float at {key}: {r:.2f}x")
    write_json(args.run_dir / "bench_latency.json", out)


if __name__ == "__main__":
    main()
