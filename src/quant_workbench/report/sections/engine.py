"""Report sections for engine-aware export: which graph each variant runs as, and how the selected
variant compares with the standard tools' reference rows (export/references.py) timed in the same loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quant_workbench.config.recipe import DEFAULT_ACCURACY_MARGIN, DEFAULT_SPEED_MARGIN
from quant_workbench.core.results import LatencyStats, RunResult, VariantResult
from quant_workbench.measure.stats import DEFAULT_LEVEL, ratio_interval
from quant_workbench.report.format import DASH, markdown_table


def _at(v: VariantResult, key: str) -> LatencyStats | None:
    return next((s for s in v.latency if s.key == key), None)


def _speedup_text(fast: VariantResult, slow: VariantResult, key: str, level: float) -> str:
    """Speed-up of `fast` over `slow` at `key`: the median per-round ratio with its interval when both were
    timed in the same rounds, else the ratio of medians."""
    a, b = _at(fast, key), _at(slow, key)
    if a is None or b is None or a.p50_ms <= 0:
        return DASH
    if fast is slow:
        return "1.00×"
    if a.samples_ms and b.samples_ms and len(a.samples_ms) == len(b.samples_ms):
        r = ratio_interval(b.samples_ms, a.samples_ms, level)
        return f"{r.ratio:.2f}× ({r.low:.2f}–{r.high:.2f})"
    return f"{b.p50_ms / a.p50_ms:.2f}×"


def _keys(result: RunResult) -> list[str]:
    shapes = sorted({(s.batch_size, s.seq_length) for v in result.variants for s in v.latency})
    return [f"b{b}xs{s}" for b, s in shapes]


def _speed(best: VariantResult, ref: VariantResult, key: str, margin: float, level: float) -> dict[str, Any] | None:
    """The selected variant's speed-up over the reference row at one shape, with its interval and its place
    against the speed margin: faster / slower (interval entirely outside [1/(1+m), 1+m]), equivalent
    (inside it) or undetermined. Without paired samples (an old report): the medians' ratio only."""
    a, b = _at(best, key), _at(ref, key)
    if a is None or b is None or a.p50_ms <= 0:
        return None
    if a.samples_ms and len(a.samples_ms) == len(b.samples_ms):
        r = ratio_interval(b.samples_ms, a.samples_ms, level)
        band = r.versus_margin(margin)
        status = {"above": "faster", "below": "slower"}.get(band, band)
        return {"speedup": r.ratio, "low": r.low, "high": r.high, "status": status}
    ratio = b.p50_ms / a.p50_ms
    status = "equivalent" if 1 / (1 + margin) <= ratio <= 1 + margin else "faster" if ratio > 1 else "slower"
    return {"speedup": ratio, "low": None, "high": None, "status": status}


def _accuracy(ref: VariantResult, margin: float) -> dict[str, Any]:
    """The selected variant minus the reference row, paired on the examples both were scored on (selection.
    compare_references): more accurate (interval above 0), non-inferior (lower bound >= -margin), less
    accurate (interval below 0 and reaching past -margin), or undetermined."""
    cmp = ref.intervals.get("vs_selected") if isinstance(ref.intervals, dict) else None
    if not cmp:
        return {"status": "not compared", "delta": None}
    lo, hi = cmp["delta_low"], cmp["delta_high"]
    if lo > 0:
        status = "more accurate"
    elif lo >= -margin:
        status = "non-inferior"
    elif hi < 0:
        status = "less accurate"
    else:
        status = "undetermined"
    return {"status": status, "delta": cmp["delta"], "low": lo, "high": hi, "n": cmp["n"]}


_SPEED_WORDS = {"faster": "faster than", "slower": "slower than", "equivalent": "as fast as"}
_ACCURACY_WORDS = {"more accurate": "more accurate than", "non-inferior": "non-inferior to", "less accurate": "less accurate than"}


def reference_verdicts(result: RunResult) -> list[dict[str, Any]]:
    """Per reference row: the selected variant's speed-up at every shape and paired accuracy difference, each
    judged by its interval against the run's margins (selection.speed_margin, the accuracy margin), and a verdict."""
    best = result.variant(result.best_variant) if result.best_variant else None
    sel = result.selection or {}
    speed_margin = float(sel.get("speed_margin", DEFAULT_SPEED_MARGIN))
    margin = float(sel.get("accuracy_margin") or DEFAULT_ACCURACY_MARGIN)
    level = float(sel.get("level", DEFAULT_LEVEL))
    keys = _keys(result)
    big = str(sel.get("shape") or (keys[-1] if keys else ""))
    out: list[dict[str, Any]] = []
    for ref in result.variants:
        if not ref.reference or ref.status != "ok" or best is None:
            continue
        speed = {k: _speed(best, ref, k, speed_margin, level) for k in keys}
        acc = _accuracy(ref, margin)
        at_big = (speed.get(big) or {}).get("status", "not measured")
        good_acc = acc["status"] in ("more accurate", "non-inferior")
        if (at_big == "faster" and good_acc) or (at_big == "equivalent" and acc["status"] == "more accurate"):
            head = f"{best.name} beats {ref.name}"
        elif at_big in ("slower", "equivalent") and acc["status"] == "less accurate":
            head = f"{ref.name} beats {best.name}"
        elif at_big == "equivalent" and good_acc:
            head = f"{best.name} matches {ref.name}"
        elif (at_big == "slower" and good_acc) or (at_big == "faster" and acc["status"] == "less accurate"):
            head = f"{best.name} vs {ref.name}: a trade-off"
        elif at_big in _SPEED_WORDS:
            head = f"{best.name} is {_SPEED_WORDS[at_big]} {ref.name} at {big}; accuracy undetermined at this evaluation size"
        elif acc["status"] in _ACCURACY_WORDS:
            head = f"{best.name} is {_ACCURACY_WORDS[acc['status']]} {ref.name}; speed at {big} undetermined at this benchmark length"
        else:
            head = f"{best.name} vs {ref.name}: undetermined at this evaluation size and benchmark length"
        speed_text = ", ".join(
            f"{s['status']} at {k} ({s['speedup']:.2f}×" + (f", {s['low']:.2f}–{s['high']:.2f})" if s["low"] is not None else ")")
            for k, s in speed.items() if s is not None
        )
        acc_text = acc["status"] if acc["delta"] is None else (
            f"{acc['status']} (Δ {100 * acc['delta']:+.2f} pt, {100 * acc['low']:+.2f} to {100 * acc['high']:+.2f}, {acc['n']:,} paired examples)"
        )
        verdict = f"{head}: {speed_text or 'speed not measured'}; accuracy {acc_text} (margins ±{100 * speed_margin:g} % speed, {100 * margin:.2f} pt accuracy)"
        out.append({
            "reference": ref.name, "selected": best.name, "speedup": {k: (s["speedup"] if s else None) for k, s in speed.items()},
            "speed": speed, "accuracy": acc, "accuracy_delta_pts": None if acc["delta"] is None else 100 * acc["delta"], "verdict": verdict,
        })
    return out


REFERENCE_TEXT = {
    "ref:ort-float": "`ref:ort-float`: TorchScript export + ONNX Runtime's transformer optimizer;",
    "ref:ort-dynamic": "`ref:ort-dynamic`: that graph through `quantize_dynamic` (per-channel S8 weights);",
    "ref:ort-static": "`ref:ort-static`: `quantize_static` on float.onnx (MinMax, U8 activations, per-channel S8 weights, MatMul/Gemm, Q/DQ);",
    "ref:openvino-float": "`ref:openvino-float`: float.onnx on OpenVINO with its default inference precision (bf16 on CPUs with bf16 instructions);",
    "ref:openvino-nncf": "`ref:openvino-nncf`: `nncf.quantize` of the float model (ModelType.TRANSFORMER, its defaults, every calibration text), OpenVINO defaults, the path optimum-intel users take.",
}


def reference_section(result: RunResult) -> list[str]:
    refs = [v for v in result.variants if v.reference]
    if not refs:
        return []
    keys = _keys(result)
    lines = [
        "## Against the standard tools",
        "",
        "Reference rows are built with the standard tools on the same model and data, scored by the same "
        "evaluation and timed in the same interleaved loop; they are never selected. "
        + " ".join(REFERENCE_TEXT[v.name] for v in refs if v.name in REFERENCE_TEXT),
        "",
    ]
    header = ["Reference", "Status", "Accuracy (%)", "Cosine to float", *[f"p50 {k} (ms)" for k in keys]]
    rows = []
    for v in refs:
        acc = v.metrics.get(result.primary_metric)
        cos = v.metrics.get("cosine_to_float")
        rows.append([
            v.name, v.status, DASH if acc is None else f"{100 * acc:.2f}", DASH if cos is None else f"{cos:.4f}",
            *[DASH if _at(v, k) is None else f"{_at(v, k).p50_ms:.2f}" for k in keys],  # type: ignore[union-attr]
        ])
    lines += markdown_table(header, rows) + [""]
    for item in reference_verdicts(result):
        lines.append(f"- **{item['verdict']}**.")
    failed = [v for v in refs if v.status != "ok"]
    lines += [f"- {v.name} could not be built here: {v.error}" for v in failed]
    return [*lines, ""]


def engine_label(v: VariantResult) -> str:
    """`onnxruntime`, `openvino f32`, `openvino bf16`, `openvino (default: bf16)` for a row."""
    runtime = v.runtime or str(v.engine.get("backend") or "")
    applied = v.engine.get("inference_precision")
    if v.inference_precision == "default":
        return f"{runtime} (default{': ' + str(applied) if applied else ''})"
    return f"{runtime} {v.inference_precision}".strip() if v.inference_precision else runtime


def several_engines(result: RunResult) -> bool:
    """Whether the rows differ in engine or inference precision (then tables get an Engine column)."""
    return len({(v.runtime, v.inference_precision) for v in result.variants if v.runtime is not None}) > 1


def fastest_float_row(result: RunResult, key: str, accurate_enough: Callable[[VariantResult], bool] | None = None) -> VariantResult | None:
    """The fastest float row (any engine, any inference precision; reference rows excluded) at `key`, among
    those `accurate_enough` accepts (e.g. within the accuracy margin of the f32 float): the float baseline
    a speed-up claim is honest against. The margin itself is the selection rule's, not decided here."""
    floats = [
        v for v in result.variants
        if v.precision == "float32" and not v.reference and v.status == "ok" and _at(v, key) is not None and (accurate_enough is None or accurate_enough(v))
    ]
    return min(floats, key=lambda v: (_at(v, key).p50_ms, v.name), default=None)  # type: ignore[union-attr]


def engines_section(result: RunResult) -> list[str]:
    """Per engine and inference precision: its float row, its fastest quantized row, their accuracy and
    speed against the reference engine's f32 float (`float`) and against the fastest float row."""
    if not several_engines(result):
        return []
    keys = _keys(result)
    base = result.variant("float")
    primary = result.primary_metric
    level = float(result.selection.get("level") or DEFAULT_LEVEL)
    allowed = result.selection.get("float_baselines")
    margin = result.selection.get("accuracy_margin")
    lines = ["## Engines and precisions", ""]
    fastest = {k: fastest_float_row(result, k, (lambda v: v.name in allowed) if allowed else None) for k in keys}
    for k in keys:
        f = fastest[k]
        if f is not None:
            lines.append(f"- Fastest float row at {k} within the accuracy margin of `float`: **{f.name}** ({engine_label(f)}, p50 {_at(f, k).p50_ms:.2f} ms).")  # type: ignore[union-attr]
    excluded = [d for d in result.selection.get("float_accuracy") or [] if d.get("status") != "acceptable"]
    for d in excluded:
        lines.append(f"- {d['name']} is not a float baseline: its Δ vs float ({100 * d['delta']:+.2f} pt, {100 * d['low']:+.2f} to {100 * d['high']:+.2f}) is {d['status']} at the margin.")
    lines += [
        "",
        "Speed-ups are median per-round latency ratios from the one interleaved loop, with "
        f"{100 * (1 - level):g} % intervals over rounds: against `float` (the reference engine's f32 float, the baseline of "
        "every Δ) and against the fastest float row of that shape whose accuracy is non-inferior to `float` at the accuracy "
        + (f"margin ({100 * margin:.2f} pt; bf16 where the engine and CPU support it)." if margin is not None else "margin (bf16 where the engine and CPU support it)."),
        "",
    ]
    groups: dict[str, list[VariantResult]] = {}
    for v in result.variants:
        if v.reference or v.status != "ok":
            continue
        groups.setdefault(engine_label(v), []).append(v)
    header = ["Engine", "Row", "Kind", f"{primary.replace('_', ' ').capitalize()} (%)", "Δ vs float (pts)"]
    for k in keys:
        header += [f"p50 {k} (ms)", f"vs float {k}", f"vs fastest float {k}"]
    rows = []
    for label, members in groups.items():
        floats = [v for v in members if v.precision == "float32"]
        quantized = [v for v in members if v.precision != "float32"]
        big = keys[-1] if keys else None
        best_q = min(quantized, key=lambda v: (_at(v, big).p50_ms if big and _at(v, big) else float("inf"), v.name)) if quantized else None  # type: ignore[union-attr]
        picks: list[tuple[str, VariantResult | None]] = [("float", floats[0] if floats else None), ("fastest quantized", best_q)]
        for kind, pick in picks:
            if pick is None:
                continue
            v = pick
            acc, ref_acc = v.metrics.get(primary), (base.metrics.get(primary) if base else None)
            paired = v.intervals.get("vs_float") if primary == "accuracy" else None
            if v is base:
                delta = None
            elif isinstance(paired, dict) and paired.get("delta") is not None:
                delta = 100.0 * float(paired["delta"])  # on the examples both scored (a row may have stopped early)
            else:
                delta = None if acc is None or ref_acc is None else 100.0 * (acc - ref_acc)
            scored, full = v.intervals.get("n"), (result.evaluation or {}).get("n")
            prefix = f" (first {scored:,})" if isinstance(scored, int) and isinstance(full, int) and scored < full else ""
            row = [label, v.name, kind, DASH if acc is None else f"{100 * acc:.2f}{prefix}", DASH if delta is None else f"{delta:+.2f}"]
            for k in keys:
                st = _at(v, k)
                quickest = fastest[k]
                row += [
                    DASH if st is None else f"{st.p50_ms:.2f}",
                    _speedup_text(v, base, k, level) if base is not None else DASH,
                    _speedup_text(v, quickest, k, level) if quickest is not None else DASH,
                ]
            rows.append(row)
    return [*lines, *markdown_table(header, rows), ""]


def openvino_graph_section(result: RunResult) -> list[str]:
    """What OpenVINO's CPU plugin runs for each row, from the compiled model's runtime graph."""
    rows = []
    for v in result.variants:
        if v.runtime != "openvino" or v.engine.get("backend") != "openvino":
            continue
        e = v.engine
        graph = v.fidelity.get("engine_graph") if isinstance(v.fidelity, dict) else None
        g = graph or {}
        attention = e.get("attention_blocks") or {}
        float_mm = e.get("float_matmuls") or {}
        work = e.get("float_work") or {}
        notes = list(g.get("notes") or [])
        if "mean_cosine_vs_fake_quant" in g:
            notes.insert(0, f"check vs fake quant: cosine {g['mean_cosine_vs_fake_quant']:.4f} (≥ {g['threshold']:.4f})")
        rows.append([
            v.name,
            str(g.get("graph", "float.onnx" if v.precision == "float32" else "qdq")),
            str(e.get("inference_precision", DASH)),
            f"{e.get('int8_matmuls', 0)} ({e.get('int8_matmuls_int8_output', 0)} write INT8)",
            ", ".join(f"{n} {p}" for p, n in attention.items()) or DASH,
            ", ".join(f"{n} {p}" for p, n in float_mm.items()) or "0",
            "; ".join(f"{p}: " + ", ".join(f"{t} ×{n}" for t, n in kinds.items()) for p, kinds in work.items()) or DASH,
            ", ".join(f"{a} ×{n}" for a, n in (e.get("activations_fused_into_matmuls") or {}).items()) or DASH,
            "; ".join(notes) or DASH,
        ])
    if not rows:
        return []
    lines = [
        "### OpenVINO",
        "",
        "Counted from each compiled model's runtime graph (`get_runtime_model()`: every executed layer's type and "
        "runtime precision): INT8 matrix products (FullyConnected in i8; those writing INT8 carry the next layer's "
        "quantize, with the bias and activation between them fused in), fused attention blocks (QK^T, softmax and PV in "
        "one kernel, by precision: i8 when both attention matmuls carry Q/DQ), matrix products left in float, and the "
        "other work that stays float (Eltwise: residual adds and LayerNorm affine; MVN: LayerNorm; FakeQuantize: "
        "activation quantization not fused into a producer).",
        "",
    ]
    header = ["Row", "Graph", "Precision", "INT8 matmuls", "Attention blocks", "Float matmuls", "Float work left", "Activations fused into matmuls", "Notes"]
    return [*lines, *markdown_table(header, rows), ""]


def engine_graph_section(result: RunResult) -> list[str]:
    rows = []
    for v in result.variants:
        graph = v.fidelity.get("engine_graph") if isinstance(v.fidelity, dict) else None
        if v.runtime not in (None, "onnxruntime") or (not graph and not v.engine):
            continue
        g = graph or {}
        fused = g.get("fused_ops") or {}
        lost = g.get("fusions_lost_vs_float") or {}
        notes = list(g.get("notes") or [])
        if g.get("why"):
            notes.insert(0, str(g["why"]))
        rows.append([
            v.name,
            str(g.get("graph", "qdq" if v.precision != "float32" else "float.onnx")),
            str(v.engine.get("integer_matmuls", DASH)),
            str(v.engine.get("float_matmuls", DASH)),
            f"{v.engine.get('remaining_quantize_linear', DASH)} / {v.engine.get('remaining_dequantize_linear', DASH)}",
            ", ".join(f"{n} {k}" for k, n in fused.items()) or DASH,
            ", ".join(f"{k} ×{n}" for k, n in lost.items()) or DASH,
            "; ".join(notes) or DASH,
        ])
    openvino = openvino_graph_section(result)
    if not rows and not openvino:
        return []
    if not rows:
        return ["## Engine graphs", "", *openvino]
    lines = [
        "## Engine graphs",
        "",
        *(["### ONNX Runtime", ""] if openvino else []),
        "What each variant runs as, counted after ONNX Runtime's own graph optimizations: integer kernels "
        "(MatMulIntegerToFloat, QAttention, DynamicQuantizeMatMul, QLinearMatMul …), float MatMuls left, "
        "QuantizeLinear / DequantizeLinear nodes left (a QuantizeLinear feeding an integer kernel is part of it), transformer fusions present, and fusions the float baseline has that this "
        "graph lost. On ONNX Runtime CPU the INT8 variants run as `fused-int8` (the fused float graph with "
        "U8×S8 integer kernels from the variant's own scales) unless a check says otherwise; the Q/DQ file "
        "(S8, the TensorRT layout) is what a TensorRT target builds.",
        "",
    ]
    header = ["Variant", "Graph", "Integer kernels", "Float MatMuls", "QuantizeLinear / DequantizeLinear", "Fused ops", "Fusions lost vs float", "Notes"]
    return [*lines, *markdown_table(header, rows), "", *openvino]


