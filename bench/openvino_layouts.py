"""Which Q/DQ layout OpenVINO's CPU plugin runs fastest and correctly: candidate layouts of one run's
model, all from the run's cached calibration statistics, scored (linear probe) and timed side by side.

Usage: python bench/openvino_layouts.py RUN_DIR [--layouts linears attention attention+residual ...]
           [--methods max mse] [--precisions f32 bf16] [--eval 3000] [--rounds 20] [--shapes 32x128 1x128]
           [--sensitivity LAYOUT:METHOD] [--set key=value ...]

A layout is a set of quant points on top of the recipe's Linears (targets / ignore as the recipe says):
- `linears`: every Linear of the plan (the Q/DQ export as the run wrote it, the TensorRT layout);
- `attention`: + the two attention matmuls (QK^T and PV inputs): OpenVINO fuses QK^T-softmax-PV into one
  INT8 block; `attention-qk`: + QK^T only (NNCF's choice: the softmax output stays float);
- `attention+residual`: + the residual adds' inputs;
- `attention-no-<role>` / `linears-no-<role>`: that layout with one Linear role kept float (roles:
  attention-qkv, attention-output, ffn-in, ffn-out), e.g. `attention-no-ffn-out`;
- `attention-no-layer<N>`: encoder layer N kept float; `attention-no-ffn-out@<N>`: one role of one layer;
  `attention-no-ffn-out@0+ffn-out@5`: several.
Every (layout, method) is exported once (cached under RUN_DIR/bench_openvino_layouts/), compiled on
OpenVINO at each precision, scored on the first --eval evaluation texts (probe trained on the float
model's embeddings of the probe split, as the run does) and timed with ONNX Runtime's fused float (the
run's float baseline) and OpenVINO's float rows in one loop, random order each round, A/A pair included.
`--alpha A` applies SmoothQuant (the int8-smoothquant scheme's rewrite) first. `--sensitivity LAYOUT:METHOD` scores LAYOUT with each encoder layer and each Linear role kept float in
turn (accuracy, disagreement with float, cosine), untimed. Writes RUN_DIR/bench_openvino_layouts.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from openvino_common import fmt_ratio, machine, save, summarize, table, timed_rounds

from quant_workbench.config.recipe import load_recipe
from quant_workbench.core.artifacts import artifact_is_current, hash_json, mark_artifact
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.data.splits import load_splits
from quant_workbench.export.openvino import nncf_quantize
from quant_workbench.export.qdq import export_onnx
from quant_workbench.measure.accuracy import LinearProbe, run_outputs
from quant_workbench.measure.stats import prediction_statistics
from quant_workbench.models.loading import load_model, to_torch, tokenize
from quant_workbench.quantize.apply import apply_flags, prepare, set_scales
from quant_workbench.quantize.plan import QuantPlan, build_plan
from quant_workbench.runtime.onnxruntime import OrtEngine
from quant_workbench.runtime.openvino import OvEngine
from quant_workbench.search.groups import layer_index, op_kind

ROLES = ("attention-qkv", "attention-output", "ffn-in", "ffn-out")


def layout_plan(full: QuantPlan, base: QuantPlan, layout: str) -> QuantPlan:
    """`full` has every candidate enabled; `base` is the recipe's plan (its Linears)."""
    linears = {p.module for p in base.points if p.enabled and p.kind == "linear"}
    head, _, drop = layout.partition("-no-")
    kinds = {"linear"} | ({"attention_matmul"} if head.startswith("attention") else set()) | ({"residual_add"} if "residual" in head else set())
    if head not in ("linears", "attention", "attention-qk", "attention+residual"):
        raise SystemExit(f"unknown layout {layout!r}")
    qk_only = head == "attention-qk"

    dropped = [d for d in drop.split("+") if d]

    def dropped_by(p: Any, d: str) -> bool:
        if d.startswith("layer"):
            return layer_index(p.module) == int(d[5:])
        role, _, layer = d.partition("@")  # ffn-out@3: that role in layer 3 only
        return op_kind(p) == role and (not layer or layer_index(p.module) == int(layer))

    def keep(p: Any) -> bool:
        if p.kind not in kinds or (p.kind == "linear" and p.module not in linears):
            return False
        if qk_only and p.kind == "attention_matmul" and not p.module.endswith("qk_matmul"):
            return False
        return not any(dropped_by(p, d) for d in dropped)

    return QuantPlan(tuple(replace(p, enabled=keep(p)) for p in full.points))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--layouts", nargs="*", default=["linears", "attention", "attention+residual"])
    ap.add_argument("--methods", nargs="+", default=["max", "mse"])
    ap.add_argument("--precisions", nargs="+", default=["f32", "bf16"])
    ap.add_argument("--eval", type=int, default=3000, help="evaluation texts scored per candidate")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--shapes", nargs="+", default=["32x128", "1x128"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--nncf", action="store_true", help="also nncf.quantize of the float model (the ref:openvino-nncf row)")
    ap.add_argument("--alpha", type=float, default=None, help="SmoothQuant alpha applied before every layout (the int8-smoothquant scheme's rewrite)")
    ap.add_argument("--ffn-out", action="store_true", help="with --alpha: smooth FFN-out's input too (smoothquant.ffn_out)")
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=PATH:PRECISION: more OpenVINO models to score and time (e.g. another run's layout)")
    ap.add_argument("--no-floats", action="store_true", help="skip the OpenVINO float candidates")
    ap.add_argument("--sensitivity", default=None, help="LAYOUT:METHOD: score it with each layer / Linear role kept float in turn")
    ap.add_argument("--per-layer", nargs="*", default=[], help="with --sensitivity: also these roles one layer at a time (e.g. ffn-out)")
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. data.eval_samples=3000")
    args = ap.parse_args()
    say = lambda s: print(s, flush=True)  # noqa: E731

    overrides = [f"data.eval_samples={args.eval}", *args.set]
    recipe = load_recipe(args.run_dir / "recipe.resolved.yaml", overrides)
    splits = load_splits(recipe.data)
    loaded = load_model(recipe.model)
    hf = loaded.model.hf
    base = build_plan(hf, recipe.quantization)
    full = build_plan(hf, recipe.quantization.model_copy(update={"quantize_attention_matmuls": True, "quantize_residual_adds": True}))
    prepare(hf, full, per_channel_weights=recipe.quantization.per_channel_weights)
    from quant_workbench.pipeline.calibration import calibration_statistics

    channel_amax: dict[str, Any] = {}
    calibrators, _ = calibration_statistics(recipe, loaded, splits, full, progress=False, say=say, channel_amax=channel_amax)
    suffix = ""
    if args.alpha is not None:  # SmoothQuant (the int8-smoothquant scheme's rewrite), statistics collected again after it
        from quant_workbench.quantize.smoothquant import apply_smoothquant

        state = apply_smoothquant(loaded.model, channel_amax, args.alpha, ffn_out=args.ffn_out)
        groups = [g.describe() for g in state.groups]
        calibrators, _ = calibration_statistics(recipe, loaded, splits, full, progress=False, say=say, extra_key={"smoothquant": {"alpha": args.alpha, "groups": groups}})
        suffix = f"-sq{args.alpha:g}" + ("f" if args.ffn_out else "")
    example = to_torch(tokenize(loaded.tokenizer, splits.evaluation.texts[: recipe.export.fidelity_samples], loaded.spec.max_seq_length, loaded.input_names))
    out_dir = args.run_dir / "bench_openvino_layouts"
    models = args.run_dir / "models"
    bs, maxlen = recipe.quantization.calibration.batch_size, recipe.model.max_seq_length

    def export(layout: str, method: str) -> Path:
        plan = layout_plan(full, base, layout)
        apply_flags(hf, plan)
        amax = set_scales(loaded.model, calibrators, method, percentile=recipe.quantization.calibration.percentile)
        path = out_dir / f"{layout}{suffix}-{method}.qdq.onnx"
        key = hash_json({"plan": plan.to_rows(), "amax": amax, "model": loaded.fingerprint, "opset": recipe.export.opset, "alpha": args.alpha, "ffn_out": args.ffn_out})
        if not artifact_is_current(path, key):
            t = time.perf_counter()
            export_onnx(loaded.model, path, example, loaded.input_names, loaded.output_name, recipe.export.opset)
            mark_artifact(path, key)
            say(f"  exported {path.name} ({len(plan.enabled)} ops quantized, {time.perf_counter() - t:.0f} s)")
        return path

    # float reference: ONNX Runtime f32 on float.onnx (the accuracy baseline; the probe is trained on it)
    ort_spec = recipe.engine.model_copy(update={"threads": args.threads})
    with OrtEngine(models / "float.onnx", ort_spec, "float") as eng:
        probe_x = run_outputs(eng, splits.probe, loaded.tokenizer, loaded.input_names, maxlen, bs, "probe", progress=False)
        float_out = run_outputs(eng, splits.evaluation, loaded.tokenizer, loaded.input_names, maxlen, bs, "float", progress=False)
    probe = LinearProbe(seed=recipe.seed).fit(probe_x, splits.probe.labels)
    labels = splits.evaluation.labels
    float_pred = probe.predict(float_out)
    scores: dict[str, Any] = {"float (ORT f32)": {"accuracy": float((float_pred == labels).mean())}}

    def score(name: str, path: Path, precision: str) -> dict[str, Any]:
        t = time.perf_counter()
        with OvEngine(path, recipe.engine, name, threads=args.threads or None, inference_precision=precision) as eng:
            out = run_outputs(eng, splits.evaluation, loaded.tokenizer, loaded.input_names, maxlen, bs, name, progress=False)
            summary = eng.summary()
        pred = probe.predict(out)
        st = prediction_statistics(pred, labels, float_pred, recipe.selection.level, seed=recipe.seed)
        cos = cosine_rows(out, float_out)
        vs = st["vs_float"]
        row = {
            "accuracy": float((pred == labels).mean()), "accuracy_interval": st["accuracy"],
            "delta_pts": 100 * vs["delta"], "delta_interval_pts": [100 * vs["delta_low"], 100 * vs["delta_high"]],
            "disagree": vs["disagreements"], "discordant": vs["discordant"], "cosine": float(cos.mean()),
            "int8_matmuls": summary["int8_matmuls"], "attention_blocks": summary["attention_blocks"], "float_work": summary["float_work"],
        }
        say(f"  {name}: accuracy {100 * row['accuracy']:.2f} %, Δ {row['delta_pts']:+.2f} ({row['delta_interval_pts'][0]:+.2f} to "
            f"{row['delta_interval_pts'][1]:+.2f}), disagree {row['disagree']}, cosine {row['cosine']:.4f} ({time.perf_counter() - t:.0f} s)")
        return row

    result: dict[str, Any] = {"machine": machine(), "run_dir": str(args.run_dir), "eval_texts": len(labels), "args": vars(args) | {"run_dir": str(args.run_dir)}}
    if args.sensitivity:
        layout, _, method = args.sensitivity.partition(":")
        layers = sorted({i for p in base.enabled if (i := layer_index(p.module)) is not None})
        groups = [f"{layout}-no-{r}" for r in ROLES] + [f"{layout}-no-layer{i}" for i in layers] + [f"{layout}-no-{r}@{i}" for r in args.per_layer for i in layers]
        rows = {}
        for cand in [layout, *groups]:
            rows[cand] = score(f"{cand}-{method}@bf16", export(cand, method), "bf16")
        result["sensitivity"] = rows
        header = ["kept float", "accuracy %", "Δ vs f32 float (pts)", "disagree", "cosine"]
        body = [[k.replace(f"{layout}-no-", "") if k != layout else "(none)", f"{100 * v['accuracy']:.2f}",
                 f"{v['delta_pts']:+.2f} ({v['delta_interval_pts'][0]:+.2f} to {v['delta_interval_pts'][1]:+.2f})", str(v["disagree"]), f"{v['cosine']:.4f}"]
                for k, v in rows.items()]
        print(f"\nSensitivity of {layout}:{method} on OpenVINO bf16, {len(labels)} texts\n\n" + table(header, body))
        save(args.run_dir / f"bench_openvino_sensitivity-{layout}-{method}.json", result)
        return

    candidates: dict[str, tuple[Path, str]] = {"ov float": (models / "float.onnx", "f32"), "ov float-bf16": (models / "float.onnx", "bf16")}
    if args.nncf:  # the standard OpenVINO path (ref:openvino-nncf), at OpenVINO's default precision
        nncf_path = out_dir / "nncf.xml"
        if not nncf_path.is_file():
            nncf_quantize(models / "float.onnx", loaded, splits.calibration.texts, nncf_path)
        candidates["nncf (OpenVINO default precision)"] = (nncf_path, "default")
    for layout in args.layouts:
        for method in args.methods:
            path = export(layout, method)
            for precision in args.precisions:
                candidates[f"{layout}{suffix}-{method}" + ("" if precision == "f32" else "-bf16")] = (path, precision)
    for item in args.extra:
        name, _, rest = item.partition("=")
        file, _, precision = rest.rpartition(":")
        candidates[name] = (Path(file), precision)
    if args.no_floats:
        for name in ("ov float", "ov float-bf16"):
            candidates.pop(name)
    for name, (path, precision) in candidates.items():
        scores[name] = score(name, path, precision)
    result["accuracy"] = scores
    if not args.no_timing:
        fused = models / "float.fused.onnx"
        ort_float = fused if fused.is_file() else models / "float.onnx"
        runners: dict[str, Any] = {"ort float": OrtEngine(ort_float, ort_spec, "ort float"), "ort float (A/A)": OrtEngine(ort_float, ort_spec, "ort float 2")}
        for name, (path, precision) in candidates.items():
            runners[name] = OvEngine(path, recipe.engine, name, threads=args.threads or None, inference_precision=precision)
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes]
        times = timed_rounds(runners, shapes, loaded.input_names, loaded.vocab_size, rounds=args.rounds, progress=say)  # type: ignore[arg-type]
        result["latency"] = summarize(times, ["ort float", "ov float-bf16"], recipe.selection.level)
        result["times_ms"] = times
    save(args.run_dir / "bench_openvino_layouts.json", result)
    keys = [f"b{b}xs{s}" for b, s in (tuple(int(x) for x in s.split("x")) for s in args.shapes)]
    header = ["candidate", "accuracy %", "Δ vs f32 float (pts)", "disagree", "cosine", "INT8 matmuls / attention"]
    for k in keys:
        header += [f"p50 {k} ms", f"vs ORT float {k}", f"vs OV bf16 float {k}"]
    body = []
    for name, sc in scores.items():
        lat = (result.get("latency") or {}).get(name if name != "float (ORT f32)" else "ort float", {})
        row = [name, f"{100 * sc['accuracy']:.2f}",
               f"{sc['delta_pts']:+.2f} ({sc['delta_interval_pts'][0]:+.2f} to {sc['delta_interval_pts'][1]:+.2f})" if "delta_pts" in sc else "—",
               str(sc.get("disagree", "—")), f"{sc['cosine']:.4f}" if "cosine" in sc else "—",
               f"{sc['int8_matmuls']} / {sc['attention_blocks']}" if "int8_matmuls" in sc else "—"]
        for k in keys:
            e = lat.get(k, {})
            row += [f"{e['p50_ms']:.1f}" if e else "—", fmt_ratio(e.get("speedup_vs_ort float")), fmt_ratio(e.get("speedup_vs_ov float-bf16"))]
        body.append(row)
    aa = (result.get("latency") or {}).get("ort float (A/A)", {})
    print(f"\n{len(labels)} evaluation texts; machine: {result['machine'].get('cpu')}, load {result['machine'].get('load_average')}\n")
    print(table(header, body))
    if aa:
        print("\nA/A control (a second ONNX Runtime session of the float graph; must contain 1.00): " + ", ".join(f"{k} {fmt_ratio(aa[k].get('speedup_vs_ort float'))}" for k in keys))


if __name__ == "__main__":
    sys.exit(main())
