"""Report sections for engine-aware export: which graph each variant runs as, and how the selected
variant compares with the standard tools' reference rows (references.py) timed in the same loop."""

from __future__ import annotations

from typing import Any

from .results import LatencyStats, RunResult, VariantResult

# A reference must be this much faster (p50 ratio) to count as faster: differences below it are in
# the noise of an interleaved CPU benchmark on a shared host.
SPEED_MARGIN = 1.05
DASH = "—"


def _at(v: VariantResult, key: str) -> LatencyStats | None:
    return next((s for s in v.latency if s.key == key), None)


def _keys(result: RunResult) -> list[str]:
    shapes = sorted({(s.batch_size, s.seq_length) for v in result.variants for s in v.latency})
    return [f"b{b}xs{s}" for b, s in shapes]


def _ratio(fast: VariantResult, slow: VariantResult, key: str) -> float | None:
    a, b = _at(fast, key), _at(slow, key)
    if a is None or b is None or a.p50_ms <= 0:
        return None
    return b.p50_ms / a.p50_ms


def reference_verdicts(result: RunResult) -> list[dict[str, Any]]:
    """Per reference row: the selected variant's speed ratio at every shape, accuracy delta and verdict."""
    best = result.variant(result.best_variant) if result.best_variant else None
    keys = _keys(result)
    out: list[dict[str, Any]] = []
    for ref in result.variants:
        if not ref.reference or ref.status != "ok" or best is None:
            continue
        acc_best, acc_ref = best.metrics.get(result.primary_metric), ref.metrics.get(result.primary_metric)
        delta = None if acc_best is None or acc_ref is None else 100.0 * (acc_best - acc_ref)
        speed = {k: _ratio(best, ref, k) for k in keys}
        big = keys[-1] if keys else None
        ratio_big = speed.get(big) if big else None
        dominated = bool(ratio_big is not None and ratio_big < 1.0 / SPEED_MARGIN and delta is not None and delta < 0)
        faster_everywhere = all(r is not None and r >= 1.0 for r in speed.values()) and bool(speed)
        if dominated:
            verdict = f"{ref.name} dominates {best.name}: more than {SPEED_MARGIN - 1:.0%} faster at {big} and more accurate"
        elif faster_everywhere and delta is not None and delta >= 0:
            verdict = f"{best.name} beats {ref.name}: faster at every shape and at least as accurate"
        elif faster_everywhere:
            verdict = f"{best.name} is faster than {ref.name} at every shape but {abs(delta or 0):.2f} pts less accurate"
        else:
            verdict = f"trade-off: {best.name} is not faster than {ref.name} at every shape"
        out.append({"reference": ref.name, "selected": best.name, "speedup": speed, "accuracy_delta_pts": delta, "dominated": dominated, "verdict": verdict})
    return out


def _fmt_ratio(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}×"


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
        speed = ", ".join(f"{_fmt_ratio(r)} at {k}" for k, r in item["speedup"].items())
        delta = item["accuracy_delta_pts"]
        lines.append(f"- **{item['verdict']}** ({speed}; accuracy {DASH if delta is None else f'{delta:+.2f}'} pts).")
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
