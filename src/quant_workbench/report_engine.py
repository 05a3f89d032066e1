"""Report sections for engine-aware export: which graph each variant runs as, and how the selected
variant compares with the standard tools' reference rows (references.py) timed in the same loop."""

from __future__ import annotations

from typing import Any

from .recipe import DEFAULT_ACCURACY_MARGIN, DEFAULT_SPEED_MARGIN
from .results import LatencyStats, RunResult, VariantResult
from .stats import DEFAULT_LEVEL, ratio_interval

DASH = "—"


def _at(v: VariantResult, key: str) -> LatencyStats | None:
    return next((s for s in v.latency if s.key == key), None)


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


def reference_section(result: RunResult) -> list[str]:
    refs = [v for v in result.variants if v.reference]
    if not refs:
        return []
    keys = _keys(result)
    lines = [
        "## Against the standard tools",
        "",
        "Reference rows are built with the standard tools on the same model and data, scored by the same "
        "evaluation and timed in the same interleaved loop; they are never selected. `ref:ort-float`: "
        "TorchScript export + ONNX Runtime's transformer optimizer; `ref:ort-dynamic`: that graph through "
        "`quantize_dynamic` (per-channel S8 weights); `ref:ort-static`: `quantize_static` on float.onnx "
        "(MinMax, U8 activations, per-channel S8 weights, MatMul/Gemm, Q/DQ).",
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
    lines += _table(header, rows) + [""]
    for item in reference_verdicts(result):
        lines.append(f"- **{item['verdict']}**.")
    failed = [v for v in refs if v.status != "ok"]
    lines += [f"- {v.name} could not be built here: {v.error}" for v in failed]
    return [*lines, ""]


def engine_graph_section(result: RunResult) -> list[str]:
    rows = []
    for v in result.variants:
        graph = v.fidelity.get("engine_graph") if isinstance(v.fidelity, dict) else None
        if not graph and not v.engine:
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
    if not rows:
        return []
    lines = [
        "## Engine graphs",
        "",
        "What each variant runs as, counted after ONNX Runtime's own graph optimizations: integer kernels "
        "(MatMulIntegerToFloat, QAttention, DynamicQuantizeMatMul, QLinearMatMul …), float MatMuls left, "
        "QuantizeLinear / DequantizeLinear nodes left (a QuantizeLinear feeding an integer kernel is part of it), transformer fusions present, and fusions the float baseline has that this "
        "graph lost. On ONNX Runtime CPU the INT8 variants run as `fused-int8` (the fused float graph with "
        "U8×S8 integer kernels from the variant's own scales) unless a check says otherwise; the Q/DQ file "
        "(S8, the TensorRT layout) is what a TensorRT target builds.",
        "",
    ]
    header = ["Variant", "Graph", "Integer kernels", "Float MatMuls", "QuantizeLinear / DequantizeLinear", "Fused ops", "Fusions lost vs float", "Notes"]
    return [*lines, *_table(header, rows), ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out
