"""Where ONNX Runtime CPU spends an inference, per op type, and how fast the INT8 graph could get.

Usage: python bench/ort_profile.py RUN_DIR [--variants float int8-dynamic int8-max] [--batch 32] [--seq 128]
                                   [--rounds 20] [--warmup 3] [--threads N] [--no-split] [--no-fastgelu]
                                   [--out FILE.json]

For each variant's engine graph (the graph report.json says it was scored and timed with, opened the way
OrtEngine opens it: same session options, same disabled optimizers, the recipe's engine threads):
- ONNX Runtime's own profiler over --rounds inferences after --warmup (warm-up events dropped), summed
  per op type and per class (integer GEMM, float GEMM, attention, GELU, normalization, quantize, other);
- plain (unprofiled) sessions timed round-robin (benchmark_interleaved) for the wall-clock medians and
  the INT8 / float ratio, since the profiler's per-node bookkeeping slows every graph down;
- QAttention and Attention fuse the QKV projection GEMM with the float attention core. A copy of each
  graph under /tmp with every (Q)Attention split into GEMM -> Split -> MultiHeadAttention is profiled in
  the same loop to measure that split; --no-split falls back to FLOP proportion (the output says which);
- Amdahl ceilings of each INT8 graph vs float: integer GEMMs free, then GELU free too, then also the
  attention core free;
- experiment (--no-fastgelu to skip; never changes a workbench graph): a /tmp copy of each INT8 graph with
  BiasGelu replaced by com.microsoft FastGelu (tanh approximation, bias fused), its speed and the max
  abs output difference it causes.
Writes RUN_DIR/bench_ort_profile.json (or --out). Default variants: float, the selected variant,
int8-dynamic and int8-max.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnx import helper, numpy_helper

from quant_workbench.config.recipe import BenchmarkSpec, EngineSpec
from quant_workbench.core.artifacts import write_json
from quant_workbench.core.machine import hardware
from quant_workbench.export.ort import MS_DOMAIN
from quant_workbench.measure.latency import benchmark_interleaved, make_feed, speedup_intervals, speedups
from quant_workbench.runtime.onnxruntime import (
    OrtEngine,
    disabled_optimizers,
    session_options,
    session_providers,
)

INPUT_ORDER = ["input_ids", "attention_mask", "token_type_ids"]
VOCAB = 30522  # BERT WordPiece, as bench/latency.py feeds it

# The op types each class holds; (Q)Attention is split between "integer/float GEMM" and "attention"
# afterwards, since one kernel runs both the QKV projection and the attention core.
CLASSES: dict[str, set[str]] = {
    "integer GEMM": {"MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul"},
    "float GEMM": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"},
    "attention": {"Attention", "QAttention", "MultiHeadAttention"},
    "GELU": {"BiasGelu", "Gelu", "FastGelu", "QuickGelu"},
    "normalization": {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "SimplifiedLayerNormalization"},
    "quantize": {"QuantizeLinear", "DynamicQuantizeLinear", "DequantizeLinear"},
}
CLASS_ORDER = [*CLASSES, "other"]
FUSED_ATTENTION = {"Attention", "QAttention"}
QKV_GEMM_TAG = "_qkv_gemm"


def op_class(op: str) -> str:
    return next((c for c, ops in CLASSES.items() if op in ops), "other")


def engine_graph(run_dir: Path, variant: dict[str, Any]) -> Path:
    """The file a variant was scored and timed with: the same rule as bench/latency.py."""
    graph = (variant.get("fidelity") or {}).get("engine_graph") or {}
    arts = variant.get("artifacts") or {}
    rel = graph.get("path") if str(graph.get("path", "")).startswith("models/") else None
    rel = rel or arts.get("engine_onnx") or arts.get("reference_onnx") or arts.get("onnx")
    if graph.get("graph") == "qdq":
        rel = arts.get("onnx")
    return run_dir / str(rel)


def recipe_engine(run_dir: Path) -> EngineSpec:
    """The run's engine spec; only that section is read, so a run whose data sources moved still loads."""
    path = run_dir / "recipe.resolved.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return EngineSpec.model_validate((data or {}).get("engine") or {})


def profiled_session(path: Path, spec: EngineSpec, threads: int | None, prefix: Path) -> Any:
    """An InferenceSession built like OrtEngine's (runtime/onnxruntime.py: the same session options) plus
    the profiler; a graph optimized differently from the timed one would profile a different graph."""
    so = session_options(spec, threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), so, providers=session_providers(spec), disabled_optimizers=disabled_optimizers(spec))


def split_attention(src: Path, dst: Path) -> int:
    """(Q)Attention -> QKV GEMM -> Split -> MultiHeadAttention (bias and key mask on MHA), written to dst.

    The same weights, scales and mask, so the two graphs compute the same thing (checked by the caller);
    only the profiler's attribution changes: the GEMM and the attention core become separate nodes.
    """
    model = onnx.load(str(src))
    g = model.graph
    init = {t.name: t for t in g.initializer}
    new: list[onnx.NodeProto] = []
    count = 0
    for n in g.node:
        if n.op_type not in FUSED_ATTENTION or n.domain != MS_DOMAIN:
            new.append(n)
            continue
        heads = next(a.i for a in n.attribute if a.name == "num_heads")
        ins = list(n.input) + [""] * 9
        weight = numpy_helper.to_array(init[ins[1]])
        hidden = weight.shape[1] // 3
        qkv = f"{n.name}_split_qkv"
        if n.op_type == "QAttention":
            # input, weight, scales, zero points: the QAttention order is (x, w, bias, x_scale, w_scale, mask, x_zp, w_zp)
            gemm_in = [ins[0], ins[1], ins[3], ins[4], ins[6], ins[7]]
            new.append(helper.make_node("MatMulIntegerToFloat", gemm_in, [qkv], name=f"{n.name}{QKV_GEMM_TAG}", domain=MS_DOMAIN))
            mask = ins[5]
        else:
            new.append(helper.make_node("MatMul", [ins[0], ins[1]], [qkv], name=f"{n.name}{QKV_GEMM_TAG}"))
            mask = ins[3]
        sizes = f"{n.name}_split_sizes"
        g.initializer.append(numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), sizes))
        q, k, v = (f"{n.name}_split_{x}" for x in "qkv")
        new.append(helper.make_node("Split", [qkv, sizes], [q, k, v], name=f"{n.name}_split", axis=-1))
        new.append(helper.make_node(
            "MultiHeadAttention", [q, k, v, ins[2], mask], list(n.output), name=f"{n.name}_mha", domain=MS_DOMAIN, num_heads=heads,
        ))
        count += 1
    del g.node[:]
    g.node.extend(new)
    onnx.save(model, str(dst))
    return count


def with_fast_gelu(src: Path, dst: Path) -> int:
    """BiasGelu(x, b) -> com.microsoft FastGelu(x, b): the tanh approximation, bias add kept fused."""
    model = onnx.load(str(src))
    count = 0
    for n in model.graph.node:
        if n.op_type == "BiasGelu":
            n.op_type = "FastGelu"
            n.domain = MS_DOMAIN
            count += 1
    onnx.save(model, str(dst))
    return count


def parse_profile(trace_file: str, warmup: int) -> dict[str, Any]:
    """Per op type: summed kernel µs and node count over the timed runs, plus each timed run's duration."""
    events = json.loads(Path(trace_file).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    # Warm-up runs come first in the trace; everything that starts before the first timed run is dropped.
    cutoff = runs[warmup]["ts"] if len(runs) > warmup else float("inf")
    by_op: dict[str, float] = {}
    by_node: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or e["ts"] < cutoff or not name.endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + float(e["dur"])
        by_node[name] = by_node.get(name, 0.0) + float(e["dur"])
        nodes.setdefault(op, set()).add(name)
    return {
        "us": by_op, "node_us": by_node, "nodes": {k: len(v) for k, v in nodes.items()},
        "run_ms": [r["dur"] / 1000.0 for r in runs[warmup:]],
    }


def profile_round_robin(
    sessions: dict[str, Any], feed: dict[str, np.ndarray], warmup: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Every profiled session runs once per round, in turn, so load drifts on the shared host hit all alike."""
    feeds = {name: {k: v for k, v in feed.items() if k in {i.name for i in s.get_inputs()}} for name, s in sessions.items()}
    for _ in range(warmup):
        for name, s in sessions.items():
            s.run(None, feeds[name])
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, s in sessions.items():
                s.run(None, feeds[name])
    finally:
        gc.enable()
    out = {}
    for name, s in sessions.items():
        trace = s.end_profiling()
        out[name] = parse_profile(trace, warmup)
        Path(trace).unlink(missing_ok=True)
    return out


def breakdown(prof: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Per-inference ms and share of the node total, per op type and per class."""
    total_us = sum(prof["us"].values())
    ops = {
        op: {"class": op_class(op), "nodes": prof["nodes"][op], "ms": us / rounds / 1000.0, "share": us / total_us}
        for op, us in sorted(prof["us"].items(), key=lambda kv: -kv[1])
    }
    classes = {c: {"ms": 0.0, "share": 0.0} for c in CLASS_ORDER}
    for row in ops.values():
        classes[row["class"]]["ms"] += row["ms"]
        classes[row["class"]]["share"] += row["share"]
    # The split graphs' QKV GEMMs (named by split_attention) share an op type with the other projections.
    qkv = [us for name, us in prof["node_us"].items() if QKV_GEMM_TAG in name]
    return {
        "node_total_ms": total_us / rounds / 1000.0,
        "qkv_gemm_ms": sum(qkv) / rounds / 1000.0 if qkv else None,
        "profiled_run_ms_median": statistics.median(prof["run_ms"]) if prof["run_ms"] else None,
        # node_total_ms is a mean over the timed runs; compare it with this, not with the median
        "profiled_run_ms_mean": statistics.fmean(prof["run_ms"]) if prof["run_ms"] else None,
        "timed_runs": len(prof["run_ms"]),
        "op_types": ops,
        "classes": classes,
    }


def attention_split(full: dict[str, Any], split: dict[str, Any] | None, batch: int, seq: int, hidden: int, heads: int) -> dict[str, Any]:
    """The core's fraction of a fused (Q)Attention: measured from the split graph or, without it, by FLOPs."""
    if split is not None:
        ops = split["op_types"]
        core = ops.get("MultiHeadAttention", {}).get("ms", 0.0)
        qkv = split.get("qkv_gemm_ms")
        fraction = core / (core + qkv) if qkv is not None and core + qkv > 0 else None
        if fraction is not None:
            return {"method": "measured: split graph (GEMM -> Split -> MultiHeadAttention)", "core_fraction": fraction,
                    "split_core_ms": core, "split_qkv_gemm_ms": qkv}
    gemm_flops = 2.0 * batch * seq * hidden * 3 * hidden
    core_flops = 4.0 * batch * heads * seq * seq * (hidden // heads)
    return {"method": "FLOP proportion (no split graph)", "core_fraction": core_flops / (core_flops + gemm_flops)}


def with_attention_split(b: dict[str, Any], frac: float) -> dict[str, float]:
    """Class ms with each fused (Q)Attention's GEMM share moved to its GEMM class."""
    ms = {c: v["ms"] for c, v in b["classes"].items()}
    for op in FUSED_ATTENTION:
        t = b["op_types"].get(op, {}).get("ms", 0.0)
        gemm = "integer GEMM" if op == "QAttention" else "float GEMM"
        ms["attention"] -= t * (1 - frac)
        ms[gemm] += t * (1 - frac)
    return ms


def ceilings(int8_ms: dict[str, float], float_total: float, int8_wall: float, float_wall: float) -> dict[str, Any]:
    """Speed-up vs float if the listed classes of the INT8 graph cost nothing and the rest stayed as is.

    wall: shares of the profiled node time applied to the plain wall-clock medians (the profiler's overhead
    and the non-node time scale with the graph); profile: node-time sums only.
    """
    total = sum(int8_ms.values())
    cases = {
        "measured": [],
        "a: integer GEMMs free": ["integer GEMM"],
        "a+: integer GEMMs and quantize ops free": ["integer GEMM", "quantize"],
        "b: integer GEMMs and GELU free": ["integer GEMM", "GELU"],
        "c: integer GEMMs, GELU and attention core free": ["integer GEMM", "GELU", "attention"],
        "GELU alone free": ["GELU"],
        "GELU and attention core free (GEMMs as measured)": ["GELU", "attention"],
    }
    out = {}
    for name, free in cases.items():
        left = total - sum(int8_ms[c] for c in free)
        out[name] = {
            "free": free,
            "remaining_share": left / total,
            "speedup_wall": float_wall / (int8_wall * left / total),
            "speedup_profile": float_total / left,
        }
    return out


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def padded_feed(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed with every other sequence right-padded to a shorter length, to check mask handling too."""
    out = {k: v.copy() for k, v in feed.items()}
    seq = out["input_ids"].shape[1]
    for row in range(0, out["input_ids"].shape[0], 2):
        keep = max(1, seq // 2 + row % 7)
        out["attention_mask"][row, keep:] = 0
        out["input_ids"][row, keep:] = 0
    return out


def fmt_row(label: str, cells: Iterable[str]) -> str:
    return f"{label:>34} " + " ".join(f"{c:>22}" for c in cells)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variants", nargs="+", default=None, help="default: float, the selected variant, int8-dynamic, int8-max")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: the recipe's engine threads (0 = all cores)")
    ap.add_argument("--no-split", action="store_true", help="split (Q)Attention by FLOPs instead of profiling a split graph")
    ap.add_argument("--no-fastgelu", action="store_true", help="skip the BiasGelu -> FastGelu experiment")
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/bench_ort_profile.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    t0 = time.time()
    report = json.loads((args.run_dir / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"] if v["status"] == "ok"}
    names = list(dict.fromkeys(args.variants or [n for n in ["float", report["best_variant"], "int8-dynamic", "int8-max"] if n in by_name]))
    if "float" not in names:
        raise SystemExit("the breakdown and ceilings are against float: include it in --variants")
    paths = {name: engine_graph(args.run_dir, by_name[name]) for name in names}
    int8_names = [n for n in names if n != "float"]
    spec = recipe_engine(args.run_dir)
    if args.threads is not None:
        spec = spec.model_copy(update={"threads": args.threads})
    threads = spec.threads or os.cpu_count()

    with tempfile.TemporaryDirectory(prefix="ort_profile_") as tmp_dir:
        tmp = Path(tmp_dir)
        split_paths: dict[str, Path] = {}
        if not args.no_split:
            for name, p in paths.items():
                dst = tmp / f"{name}.split-attention.onnx"
                if split_attention(p, dst):
                    split_paths[f"{name}+split-attn"] = dst
        gelu_paths: dict[str, Path] = {}
        gelu_counts: dict[str, int] = {}
        if not args.no_fastgelu:
            for name in int8_names:
                dst = tmp / f"{name}.fastgelu.onnx"
                gelu_counts[name] = with_fast_gelu(paths[name], dst)
                if gelu_counts[name]:
                    gelu_paths[f"exp:{name}+FastGelu"] = dst

        all_paths = {**paths, **split_paths, **gelu_paths}
        engines = {name: OrtEngine(p, spec, name) for name, p in all_paths.items()}
        input_names = sorted({n for e in engines.values() for n in e.input_names}, key=INPUT_ORDER.index)
        feed = make_feed(args.batch, args.seq, input_names, VOCAB)

        # The rewritten copies must compute what their source computes, or their timings mean nothing.
        checks: dict[str, Any] = {}
        pad = padded_feed(feed) if "attention_mask" in feed else feed
        outputs = {name: engines[name](feed) for name in names}
        for name in split_paths:
            src = name.split("+", 1)[0]
            checks[name] = {
                "max_abs_diff_vs_source": max_abs_diff(engines[name](feed), outputs[src]),
                "max_abs_diff_vs_source_padded_feed": max_abs_diff(engines[name](pad), engines[src](pad)),
            }

        for exp in gelu_paths:
            src = exp.removeprefix("exp:").split("+", 1)[0]
            got = engines[exp](feed)
            checks[exp] = {"max_abs_diff_vs_source": max_abs_diff(got, outputs[src]), "max_abs_diff_vs_float": max_abs_diff(got, outputs["float"]),
                           "source_max_abs_diff_vs_float": max_abs_diff(outputs[src], outputs["float"])}

        # Wall clock: plain sessions, the main variants and the FastGelu copies, round-robin.
        plain = {name: engines[name] for name in [*names, *gelu_paths]}
        bench = BenchmarkSpec(
            batch_sizes=[args.batch], seq_lengths=[args.seq], warmup=args.warmup, iterations=args.rounds,
            threads=spec.threads, speedup_tolerance=None,
        )
        latency = benchmark_interleaved(plain, bench, input_names, vocab_size=VOCAB)
        ratios = speedups(latency, "float")
        intervals = speedup_intervals(latency, "float")
        wall = {name: stats[0].p50_ms for name, stats in latency.items()}
        del engines, plain
        gc.collect()

        # Profiler: one fresh session per graph, all in one round-robin loop.
        sessions = {name: profiled_session(p, spec, args.threads, tmp / name.replace(":", "_").replace("+", "_")) for name, p in all_paths.items()}
        profiles = profile_round_robin(sessions, feed, args.warmup, args.rounds)
        del sessions
    load_after = os.getloadavg()

    breakdowns = {name: breakdown(prof, args.rounds) for name, prof in profiles.items()}
    # Attention geometry for the FLOP fallback, from the float graph's fused node.
    first = onnx.load(str(paths["float"]), load_external_data=False)
    att = next((n for n in first.graph.node if n.op_type in FUSED_ATTENTION), None)
    heads = next((a.i for a in att.attribute if a.name == "num_heads"), 12) if att is not None else 12
    hidden = next((int(t.dims[0]) for t in first.graph.initializer if att is not None and t.name == att.input[1]), 384)
    splits: dict[str, Any] = {}
    for name in names:
        splits[name] = attention_split(breakdowns[name], breakdowns.get(f"{name}+split-attn"), args.batch, args.seq, hidden, heads)
    class_ms = {name: with_attention_split(breakdowns[name], splits[name]["core_fraction"]) for name in names}
    float_total = sum(class_ms["float"].values())
    result_ceilings = {
        name: ceilings(class_ms[name], float_total, wall[name], wall["float"]) for name in int8_names
    }
    gemm_speedup = {
        name: (class_ms["float"]["float GEMM"] + class_ms["float"]["integer GEMM"])
        / max(1e-9, class_ms[name]["integer GEMM"] + class_ms[name]["float GEMM"])
        for name in int8_names
    }
    key = f"b{args.batch}xs{args.seq}"

    print(f"machine: {hardware()['cpu']}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, {threads} threads; "
          f"{key}; {args.rounds} rounds; load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print("-- wall clock, plain sessions interleaved (p50 ms; speed-up vs float, 95 % interval)")
    for name, stats in latency.items():
        s = stats[0]
        iv = intervals.get(name, {}).get(key)
        r = ratios.get(name, {}).get(key)
        extra = f"  {r:.2f}x ({iv[0]:.2f}-{iv[1]:.2f})" if r is not None and iv else ""
        print(f"{name:>34} p50 {s.p50_ms:8.2f} ms  profiled run p50 {breakdowns[name]['profiled_run_ms_median']:8.2f} ms{extra}")
    print("-- profiled node time per inference, ms (share), (Q)Attention's QKV GEMM moved to its GEMM class")
    print(fmt_row("class", names))
    for c in CLASS_ORDER:
        print(fmt_row(c, (f"{class_ms[n][c]:8.2f} ({class_ms[n][c] / sum(class_ms[n].values()):5.1%})" for n in names)))
    print(fmt_row("total", (f"{sum(class_ms[n].values()):8.2f}" for n in names)))
    for name in names:
        print(f"   {name}: attention split by {splits[name]['method']}, core = {splits[name]['core_fraction']:.1%} of (Q)Attention")
    print("-- per op type, ms per inference (share of node time)")
    for name in names:
        ops = breakdowns[name]["op_types"]
        print(f"   {name}: " + ", ".join(f"{op} x{r['nodes']} {r['ms']:.1f} ({r['share']:.1%})" for op, r in ops.items() if r["share"] >= 0.005))
    print("-- GEMM work (incl. QKV projection): float / INT8 time = " + ", ".join(f"{n} {g:.2f}x" for n, g in gemm_speedup.items()))
    print("-- Amdahl ceilings vs float (wall-clock scaled; profile-only in brackets)")
    for name, cs in result_ceilings.items():
        for case, row in cs.items():
            print(f"{name:>18} {case:<52} {row['speedup_wall']:6.2f}x  [{row['speedup_profile']:.2f}x]  remaining {row['remaining_share']:.1%}")
    gelu_out: dict[str, Any] = {}
    for name in int8_names:
        exp = f"exp:{name}+FastGelu"
        if exp not in latency:
            continue
        gelu_out[name] = {
            "replaced_nodes": gelu_counts[name],
            "p50_ms": wall[exp],
            "source_p50_ms": wall[name],
            "speedup_vs_source": wall[name] / wall[exp],
            "speedup_vs_float": ratios[exp][key],
            "speedup_interval_vs_float": intervals.get(exp, {}).get(key),
            "gelu_ms_profiled": breakdowns[exp]["classes"]["GELU"]["ms"],
            "source_gelu_ms_profiled": class_ms[name]["GELU"],
            "node_total_ms_profiled": breakdowns[exp]["node_total_ms"],
            "source_node_total_ms_profiled": breakdowns[name]["node_total_ms"],
            **checks[exp],
        }
    if gelu_out:
        print("-- experiment: BiasGelu -> FastGelu (tanh approximation), copy under /tmp")
        for name, row in gelu_out.items():
            print(f"{name:>18} p50 {row['p50_ms']:.2f} ms vs {row['source_p50_ms']:.2f} ms ({row['speedup_vs_source']:.3f}x), "
                  f"{row['speedup_vs_float']:.2f}x vs float; GELU {row['source_gelu_ms_profiled']:.1f} -> {row['gelu_ms_profiled']:.1f} ms; "
                  f"max |diff| vs {name} {row['max_abs_diff_vs_source']:.2e} (vs float {row['max_abs_diff_vs_float']:.2e}, {name} vs float "
                  f"{row['source_max_abs_diff_vs_float']:.2e})")

    out: dict[str, Any] = {
        "machine": {**hardware(), "onnxruntime": ort.__version__, "threads": threads, "loadavg_before": list(load_before), "loadavg_after": list(load_after)},
        "shape": {"batch": args.batch, "seq": args.seq},
        "rounds": args.rounds,
        "warmup": args.warmup,
        "engine": spec.model_dump(exclude={"tensorrt"}),
        "graphs": {name: str(p) for name, p in paths.items()},
        "rewritten_graph_checks": checks,
        "wall_clock": {name: stats[0].__dict__ for name, stats in latency.items()},
        "speedup_vs_float": {n: r.get(key) for n, r in ratios.items()},
        "speedup_interval_vs_float": {n: r.get(key) for n, r in intervals.items()},
        "profile": breakdowns,
        "attention_split": splits,
        "classes_ms": class_ms,
        "gemm_speedup_float_over_int8": gemm_speedup,
        "ceilings": result_ceilings,
        "experiment_fastgelu": gelu_out,
        "notes": {
            "classes": {c: sorted(ops) for c, ops in CLASSES.items()},
            "attention_split": (
                "each fused (Q)Attention's time is split into its QKV GEMM (moved to integer/float GEMM) and the "
                "float attention core (kept in attention) by core_fraction = MultiHeadAttention / (MultiHeadAttention + "
                "QKV GEMM) of the same graph rewritten as GEMM -> Split -> MultiHeadAttention and profiled in the same "
                "loop (rewritten_graph_checks: its outputs vs the source); for a dynamic INT8 graph ONNX Runtime fuses "
                "the rewrite's activation quantization into the QKV GEMM (DynamicQuantizeMatMul), so its GEMM side "
                "includes that quantization; with --no-split: FLOP proportion"
            ),
            "ceilings": (
                "speed-up vs float if the listed classes of the INT8 graph took no time and the rest stayed as "
                "profiled; speedup_wall = float p50 / (INT8 p50 x remaining share of node time), speedup_profile = "
                "float node time / remaining INT8 node time"
            ),
            "profiled_vs_plain": "profiled_run_ms_median (per-node profiler on) vs wall_clock p50 (plain sessions)",
        },
        "seconds": time.time() - t0,
    }
    write_json(args.out or args.run_dir / "bench_ort_profile.json", out)


if __name__ == "__main__":
    main()
