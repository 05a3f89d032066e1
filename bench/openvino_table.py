"""Issue 17's table from any run folder: the run's float and INT8 graphs on ONNX Runtime and on OpenVINO (f32
and bf16), the standard tools' rows, accuracy (linear probe) and latency, every model in one process.

Usage: python bench/openvino_table.py RUN_DIR [--eval 3000] [--rounds 20] [--shapes 32x128 1x128]
           [--methods max mse] [--only SUBSTRING ...] [--no-accuracy] [--spin-check] [--set key=value ...]

Rows (those whose files the run folder has):
- `float (ORT fused f32)`: ONNX Runtime on the fused float graph (the run's float baseline; float.onnx without one);
- `float.onnx OV f32` / `float.onnx OV bf16`: OpenVINO with INFERENCE_PRECISION_HINT f32 / bf16 (bf16 only
  where detected);
- `int8-<m> ORT fused`: the run's ONNX Runtime INT8 graph; `ref:ort-dynamic`: the standard dynamic path;
- `int8-<m>.qdq.onnx OV f32 / bf16`: the Q/DQ export as it is (the TensorRT layout) on OpenVINO;
- `int8-<m> OV layout f32 / bf16`: the OpenVINO layout the run built (`int8-<m>.qk.qdq.onnx`);
- `ref:openvino-nncf`: NNCF's model, OpenVINO defaults.
Timing: every row in one loop, a fresh random order each round, ONNX Runtime with allow_spinning = 0, OpenVINO
with the run's explicit threads / streams / hint, a second ONNX Runtime session of the float graph as an A/A
control (its ratio must contain 1.00), medians with 95 % intervals, the machine named. `--spin-check` times the
ONNX Runtime float graph right after another ONNX Runtime session and right after an OpenVINO model, in
alternation: OpenVINO's threads still waiting actively after its call would slow the next engine.
Writes RUN_DIR/bench_openvino_table.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from openvino_common import fmt_ratio, machine, save, summarize, table, timed_rounds

from quant_workbench.config.recipe import load_recipe
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.core.machine import openvino_supports
from quant_workbench.data.splits import load_splits
from quant_workbench.measure.accuracy import LinearProbe, run_outputs
from quant_workbench.measure.latency import make_feed
from quant_workbench.measure.stats import median_interval, prediction_statistics
from quant_workbench.models.loading import load_model
from quant_workbench.runtime.onnxruntime import OrtEngine
from quant_workbench.runtime.openvino import OvEngine

BASE = "float (ORT fused f32)"


def candidates(models: Path, methods: list[str], bf16: bool) -> dict[str, tuple[str, Path, str | None]]:
    """name -> (runtime, file, inference precision)."""
    out: dict[str, tuple[str, Path, str | None]] = {}
    fused = models / "float.fused.onnx"
    out[BASE] = ("onnxruntime", fused if fused.is_file() else models / "float.onnx", None)
    precisions = ["f32", "bf16"] if bf16 else ["f32"]
    for p in precisions:
        out[f"float.onnx OV {p}"] = ("openvino", models / "float.onnx", p)
    for m in methods:
        if (models / f"int8-{m}.fused.onnx").is_file():
            out[f"int8-{m} ORT fused"] = ("onnxruntime", models / f"int8-{m}.fused.onnx", None)
    if (models / "ref-ort-dynamic.onnx").is_file():
        out["ref:ort-dynamic"] = ("onnxruntime", models / "ref-ort-dynamic.onnx", None)
    for m in methods:
        for p in precisions:
            if (models / f"int8-{m}.qdq.onnx").is_file():
                out[f"int8-{m}.qdq.onnx OV {p}"] = ("openvino", models / f"int8-{m}.qdq.onnx", p)
            if (models / f"int8-{m}.qk.qdq.onnx").is_file():
                out[f"int8-{m} OV layout {p}"] = ("openvino", models / f"int8-{m}.qk.qdq.onnx", p)
    if (models / "ref-openvino-nncf.xml").is_file():
        out["ref:openvino-nncf"] = ("openvino", models / "ref-openvino-nncf.xml", "default")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--eval", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--shapes", nargs="+", default=["32x128", "1x128"])
    ap.add_argument("--methods", nargs="+", default=["max", "percentile", "entropy", "mse"])
    ap.add_argument("--only", nargs="*", default=[], help="keep rows whose name contains one of these (the ORT float baseline always stays)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--spin-check", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. data.probe_samples=4000")
    args = ap.parse_args()
    say: Callable[[str], None] = lambda s: print(s, flush=True)  # noqa: E731

    recipe = load_recipe(args.run_dir / "recipe.resolved.yaml", [f"data.eval_samples={args.eval}", *args.set])
    loaded = load_model(recipe.model)
    rows = candidates(args.run_dir / "models", args.methods, openvino_supports("bf16"))
    if args.only:
        rows = {k: v for k, v in rows.items() if k == BASE or any(s in k for s in args.only)}
    threads = args.threads or None
    ort_spec = recipe.engine.model_copy(update={"threads": args.threads})

    def open_row(name: str) -> Any:
        runtime, path, precision = rows[name]
        if runtime == "onnxruntime":
            return OrtEngine(path, ort_spec, name)
        return OvEngine(path, recipe.engine, name, threads=threads, inference_precision=precision)

    result: dict[str, Any] = {"machine": machine(), "run_dir": str(args.run_dir), "rows": {k: {"runtime": r, "file": str(p), "inference_precision": q} for k, (r, p, q) in rows.items()}}
    if not args.no_accuracy:
        splits = load_splits(recipe.data)
        bs, maxlen = recipe.quantization.calibration.batch_size, recipe.model.max_seq_length
        with OrtEngine(args.run_dir / "models" / "float.onnx", ort_spec, "float") as eng:
            probe_x = run_outputs(eng, splits.probe, loaded.tokenizer, loaded.input_names, maxlen, bs, "probe", progress=False)
            float_out = run_outputs(eng, splits.evaluation, loaded.tokenizer, loaded.input_names, maxlen, bs, "float", progress=False)
        probe = LinearProbe(seed=recipe.seed).fit(probe_x, splits.probe.labels)
        labels, float_pred = splits.evaluation.labels, probe.predict(float_out)
        acc: dict[str, Any] = {}
        for name in rows:
            t = time.perf_counter()
            with open_row(name) as eng:
                out = run_outputs(eng, splits.evaluation, loaded.tokenizer, loaded.input_names, maxlen, bs, name, progress=False)
            pred = probe.predict(out)
            st = prediction_statistics(pred, labels, float_pred, recipe.selection.level, seed=recipe.seed)
            acc[name] = {"accuracy": float((pred == labels).mean()), "interval": st["accuracy"], "cosine": float(cosine_rows(out, float_out).mean()),
                         "delta_pts": 100 * st["vs_float"]["delta"], "delta_interval_pts": [100 * st["vs_float"]["delta_low"], 100 * st["vs_float"]["delta_high"]]}
            say(f"  {name}: {100 * acc[name]['accuracy']:.2f} % (Δ {acc[name]['delta_pts']:+.2f}), cosine {acc[name]['cosine']:.5f} ({time.perf_counter() - t:.0f} s)")
        result["accuracy"] = acc
        result["eval_texts"] = len(labels)
    engines = {name: open_row(name) for name in rows}
    engines["A/A: float (ORT fused f32) again"] = OrtEngine(rows[BASE][1], ort_spec, "A/A")
    shapes = [(int(b), int(s)) for b, s in (x.split("x") for x in args.shapes)]
    times = timed_rounds(engines, shapes, loaded.input_names, loaded.vocab_size, rounds=args.rounds, progress=say)
    bf16_float = "float.onnx OV bf16" if "float.onnx OV bf16" in rows else "float.onnx OV f32"
    result["latency"] = summarize(times, [BASE, bf16_float], recipe.selection.level)
    result["times_ms"] = times
    if args.spin_check:
        result["spin_check"] = spin_check(engines, rows, shapes, loaded, args.rounds * 5, say)
    save(args.run_dir / "bench_openvino_table.json", result)

    keys = [f"b{b}xs{s}" for b, s in shapes]
    header = ["model", "engine", "accuracy %", "Δ vs f32 float (pts)", "cosine"] + [x for k in keys for x in (f"p50 {k} (ms)", f"vs ORT fused float {k}", f"vs {bf16_float} {k}")]
    body = []
    for name in [*rows, "A/A: float (ORT fused f32) again"]:
        a = (result.get("accuracy") or {}).get(name, {})
        runtime, _, precision = rows.get(name, rows[BASE])
        row = [name, f"{runtime}{' ' + precision if precision else ''}", f"{100 * a['accuracy']:.2f}" if a else "—",
               f"{a['delta_pts']:+.2f} ({a['delta_interval_pts'][0]:+.2f} to {a['delta_interval_pts'][1]:+.2f})" if a else "—",
               f"{a['cosine']:.5f}" if a else "—"]
        for k in keys:
            e = result["latency"][name][k]
            row += [f"{e['p50_ms']:.1f} ({e['p50_low_ms']:.1f}–{e['p50_high_ms']:.1f})", fmt_ratio(e.get(f"speedup_vs_{BASE}")) if name != BASE else "1.00×",
                    fmt_ratio(e.get(f"speedup_vs_{bf16_float}")) if name != bf16_float else "1.00×"]
        body.append(row)
    m = result["machine"]
    print(f"\nMachine: {m.get('cpu')}, {m.get('cores')} cores, load {m.get('load_average')}, OpenVINO {m.get('openvino', {}).get('version')}; "
          f"{args.rounds} rounds, random order each round; {result.get('eval_texts', 0)} evaluation texts\n")
    print(table(header, body))
    if args.spin_check:
        print("\nSpin check (ONNX Runtime float, p50 ms right after another ONNX Runtime session vs right after OpenVINO):")
        for k, v in result["spin_check"].items():
            print(f"  {k}: {v}")


def spin_check(engines: dict[str, Any], rows: dict[str, tuple[str, Path, str | None]], shapes: list[tuple[int, int]], loaded: Any, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    """ORT float timed right after a second ORT session (A) or right after an OpenVINO model (B), A and B
    in a random order, one pair per round; the ratio B / A is how much OpenVINO's waiting threads cost it."""
    ov_name = next((n for n, (r, _, _) in rows.items() if r == "openvino"), None)
    if ov_name is None:
        return {"skipped": "no OpenVINO row"}
    victim, other_ort, ov = engines[BASE], engines["A/A: float (ORT fused f32) again"], engines[ov_name]
    out: dict[str, Any] = {"openvino_model": ov_name}
    rng = random.Random(1)
    for b, s in shapes:
        feed = make_feed(b, s, loaded.input_names, loaded.vocab_size)
        after: dict[str, list[float]] = {"after onnxruntime": [], "after openvino": []}
        for _ in range(rounds):
            for label in rng.sample(list(after), 2):
                (other_ort if label == "after onnxruntime" else ov)(feed)
                t = time.perf_counter()
                victim(feed)
                after[label].append((time.perf_counter() - t) * 1000.0)
        a, bb = np.asarray(after["after onnxruntime"]), np.asarray(after["after openvino"])
        out[f"b{b}xs{s}"] = {
            "after onnxruntime p50 ms": [float(np.median(a)), *median_interval(a)],
            "after openvino p50 ms": [float(np.median(bb)), *median_interval(bb)],
            "slowdown": float(np.median(bb) / np.median(a)),
            "calls": rounds,
        }
        say(f"  spin check b{b}xs{s}: {out[f'b{b}xs{s}']}")
    return out


if __name__ == "__main__":
    sys.exit(main())
