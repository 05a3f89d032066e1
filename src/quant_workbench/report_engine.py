"""Report sections for engine-aware export: which graph each variant runs as, and how the selected
variant compares with the standard tools' reference rows (references.py) timed in the same loop."""

from __future__ import annotations

from collections.abc import Callable
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


REFERENCE_TEXT = {
    "ref:ort-float": "`ref:ort-float`: TorchScript export + ONNX Runtime's transformer optimizer;",
    "ref:ort-dynamic": "`ref:ort-dynamic`: that graph through `quantize_dynamic` (per-channel S8 weights);",
    "ref:ort-static": "`ref:ort-static`: `quantize_static` on float.onnx (MinMax, U8 activations, per-channel S8 weights, MatMul/Gemm, Q/DQ);",
    "ref:openvino-float": "`ref:openvino-float`: float.onnx on OpenVINO with its default inference precision (bf16 on CPUs with bf16 instructions);",
    "ref:openvino-nncf": "`ref:openvino-nncf`: `nncf.quantize` of the float model (ModelType.TRANSFORMER, its defaults, every calibration text), OpenVINO defaults, the path optimum-intel users take.",
}


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
    lines += _table(header, rows) + [""]
    for item in reference_verdicts(result):
        speed = ", ".join(f"{_fmt_ratio(r)} at {k}" for k, r in item["speedup"].items())
        delta = item["accuracy_delta_pts"]
        lines.append(f"- **{item['verdict']}** ({speed}; accuracy {DASH if delta is None else f'{delta:+.2f}'} pts).")
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
    lines = ["## Engines and precisions", ""]
    fastest = {k: fastest_float_row(result, k) for k in keys}
    for k in keys:
        f = fastest[k]
        if f is not None:
            lines.append(f"- Fastest float row at {k}: **{f.name}** ({engine_label(f)}, p50 {_at(f, k).p50_ms:.2f} ms).")  # type: ignore[union-attr]
    lines += [
        "",
        "Speed-ups are p50 ratios from the one interleaved loop: against `float` (the reference engine's f32 float, "
        "the baseline of every Δ) and against the fastest float row of that shape (bf16 where the engine and CPU "
        "support it). Whether a row's accuracy is close enough to f32 for it to count as the float baseline is the "
        "selection rule's margin.",
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
            delta = None if acc is None or ref_acc is None or v is base else 100.0 * (acc - ref_acc)
            row = [label, v.name, kind, DASH if acc is None else f"{100 * acc:.2f}", DASH if delta is None else f"{delta:+.2f}"]
            for k in keys:
                st = _at(v, k)
                quickest = fastest[k]
                row += [
                    DASH if st is None else f"{st.p50_ms:.2f}",
                    _fmt_ratio(_ratio(v, base, k) if base is not None else None),
                    _fmt_ratio(_ratio(v, quickest, k) if quickest is not None else None),
                ]
            rows.append(row)
    return [*lines, *_table(header, rows), ""]


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
    return [*lines, *_table(header, rows), ""]


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
    return [*lines, *_table(header, rows), "", *openvino]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out
