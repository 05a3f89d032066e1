"""Which graph form ONNX Runtime CPU runs fastest: the evidence behind engine-aware export.

Usage: python bench/ort_graphs.py RUN_DIR [--variant int8-max] [--batch 1 32] [--seq 128] [--iterations 20]

From a finished run, times interleaved in one process (medians, ratios):
- float: the workbench's fused float (SkipLayerNormalization kept apart) vs the standard fused float
  (ref-ort-float, with SkipLayerNormalization) vs the dynamo export (float.onnx, no fusions);
- INT8, the same scales in every form: fused-int8 (QAttention + MatMulIntegerToFloat, U8 activations),
  the same graph with Add + LayerNormalization fused back into SkipLayerNormalization, the Q/DQ export
  with U8 activations (qdq-u8: every transformer fusion lost) and as exported for TensorRT (qdq-s8);
- ref-ort-dynamic, the standard tools' INT8.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from quant_workbench.config.recipe import BenchmarkSpec, EngineSpec
from quant_workbench.core.machine import hardware
from quant_workbench.export.ort import MS_DOMAIN, qdq_to_u8_activations
from quant_workbench.measure.latency import benchmark_interleaved, speedups
from quant_workbench.runtime.onnxruntime import OrtEngine


def with_skip_layer_norm(src: Path, dst: Path) -> int:
    """Add(x, skip) -> LayerNormalization  =>  com.microsoft.SkipLayerNormalization (the standard fusion)."""
    model = onnx.load(str(src))
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    drop: set[str] = set()
    fused = 0
    new = []
    for n in g.node:
        add = producers.get(n.input[0]) if n.op_type == "LayerNormalization" else None
        if add is not None and add.op_type == "Add" and users.get(add.output[0], 0) == 1 and all(i not in {x.name for x in g.initializer} for i in add.input):
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
            new.append(helper.make_node("SkipLayerNormalization", [add.input[0], add.input[1], n.input[1], n.input[2]], [n.output[0]], name=f"{n.name}_skip", domain=MS_DOMAIN, epsilon=eps))
            drop.add(add.name)
            fused += 1
        else:
            new.append(n)
    del g.node[:]
    g.node.extend(x for x in new if x.name not in drop)
    onnx.save(model, str(dst))
    return fused


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variant", default=None, help="INT8 variant (default: the run's selected one)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seq", type=int, nargs="+", default=[128])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    variant = args.variant or report["best_variant"]
    models = args.run_dir / "models"
    with tempfile.TemporaryDirectory() as tmp:
        skip = Path(tmp) / "int8-fused-skipln.onnx"
        u8 = Path(tmp) / "int8-u8.onnx"
        n_skip = with_skip_layer_norm(models / f"{variant}.fused.onnx", skip)
        qdq_to_u8_activations(models / f"{variant}.qdq.onnx", u8)
        graphs = {
            "float fused": models / "float.fused.onnx",
            "float fused+SkipLN": models / "ref-ort-float.onnx",
            "float unfused": models / "float.onnx",
            "int8 fused": models / f"{variant}.fused.onnx",
            "int8 fused+SkipLN": skip,
            "int8 qdq-u8": u8,
            "int8 qdq-s8": models / f"{variant}.qdq.onnx",
            "ref:ort-dynamic": models / "ref-ort-dynamic.onnx",
        }
        spec_e = EngineSpec(threads=args.threads)
        engines = {k: OrtEngine(p, spec_e, k) for k, p in graphs.items() if p.is_file()}
        spec = BenchmarkSpec(batch_sizes=args.batch, seq_lengths=args.seq, warmup=args.warmup, iterations=args.iterations, threads=args.threads, speedup_tolerance=None)
        latency = benchmark_interleaved(dict(engines.items()), spec, ["input_ids", "attention_mask", "token_type_ids"], vocab_size=30522)
    print(f"machine: {hardware()['cpu']}, {os.cpu_count()} cores; variant {variant}; {n_skip} SkipLayerNormalization re-fused")
    for name, stats in latency.items():
        print(f"{name:>20} " + "  ".join(f"b{s.batch_size}xs{s.seq_length} p50 {s.p50_ms:8.2f} ms" for s in stats))
    for base in ("float fused+SkipLN", "ref:ort-dynamic", "int8 fused+SkipLN"):
        if base in latency:
            print(f"-- speed-up vs {base}")
            for name, r in speedups(latency, base).items():
                print(f"{name:>20} " + "  ".join(f"{k}: {x:.2f}x" for k, x in r.items()))


if __name__ == "__main__":
    main()
