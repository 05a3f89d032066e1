"""report.md section comparing numeric formats (float, INT8, INT8 + SmoothQuant, FP8): the best variant
of each scheme side by side, and which of them can be fast on which hardware."""

from __future__ import annotations

from quant_workbench.config.vocabulary import format_label, parse_format_prefix
from quant_workbench.core.results import RunResult, VariantResult
from quant_workbench.report.format import pct

HARDWARE_NOTES = [
    "**float32**: the reference; runs everywhere.",
    "**INT8** (Q/DQ, per-channel weights, per-tensor activations): fast on x86 CPUs with VNNI/AMX and Arm CPUs "
    "with dot-product instructions through ONNX Runtime's integer kernels (`MatMulIntegerToFloat`), and on NVIDIA "
    "GPUs with INT8 tensor cores (compute capability 7.5 and newer: Turing, Ampere, Ada, Hopper, Blackwell) "
    "through TensorRT's explicit quantization.",
    "**INT8 + SmoothQuant**: the same INT8 kernels. Q/K/V and FFN-in get a per-channel input scale (one "
    "elementwise Mul before their QuantizeLinear, which TensorRT fuses into the preceding LayerNorm and ONNX Runtime "
    "runs as a separate cheap op); the attention output projection's factors are folded into V's weights at no cost.",
    "**FP8 E4M3**: fast only where FP8 tensor cores exist, i.e. NVIDIA GPUs of compute capability 8.9 or newer "
    "(Ada L4/L40, Hopper H100/H200, Blackwell) with TensorRT 9+ building the engine with FP8 enabled. On CPU, ONNX "
    "Runtime executes FP8 QuantizeLinear/DequantizeLinear but has no FP8 GEMM: every MatMul stays float "
    "(integer MatMuls 0), so FP8 is emulated and slower than float there; its CPU latency measures the emulation, "
    "its accuracy and cosine are those of the format.",
]


def _scheme(v: VariantResult) -> str:
    if v.precision == "float32":
        return "float"
    # a row on another engine or inference precision (`int8-sq0.95-max-bf16@openvino`) is its variant's format
    name = v.name.split("@", 1)[0]
    for suffix in ("-bf16", "-f32"):
        name = name.removesuffix(suffix)
    return name.rsplit("-", 1)[0] if "-" in name else name


def _describe(scheme: str) -> str:
    if scheme == "float":
        return "float32"
    kind, alpha = parse_format_prefix(scheme)
    if kind == "fp8" or (kind == "int8" and alpha is None):
        return format_label(kind)
    if alpha is not None:
        return f"INT8 + SmoothQuant (alpha {alpha:g})"
    return scheme


def formats_section(result: RunResult) -> list[str]:
    """Empty unless the run compares more than one quantized format (FP8 or SmoothQuant present)."""
    ok = [v for v in result.variants if v.status == "ok"]
    if not any(v.precision == "fp8" or parse_format_prefix(_scheme(v))[1] is not None for v in result.variants):
        return []
    best: dict[str, VariantResult] = {}
    for v in ok:
        scheme = _scheme(v)
        cur = best.get(scheme)
        if cur is None or v.metrics.get(result.primary_metric, -1.0) > cur.metrics.get(result.primary_metric, -1.0):
            best[scheme] = v
    ref = best.get("float")
    ref_acc = ref.metrics.get(result.primary_metric) if ref else None
    lines = [
        "## Formats compared",
        "",
        "Best calibration method of each format (highest accuracy), all from the same calibration data. "
        "ONNX size is the Q/DQ file (float weights + Q/DQ, the layout TensorRT consumes); deployed weights counts "
        "each quantized weight at 1 byte (INT8 or FP8), as a built engine holds it.",
        "",
        "| Format | Variant | Accuracy (%) | Δ vs float (pts) | Cosine to float | ONNX size (MB) | Deployed weights (MB) | Integer MatMuls (this engine) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scheme, v in best.items():
        acc = v.metrics.get(result.primary_metric)
        delta = "reference" if v is ref else (f"{100.0 * (acc - ref_acc):+.2f}" if acc is not None and ref_acc is not None else "—")
        ci, paired = v.intervals.get(result.primary_metric), v.intervals.get("vs_float")
        acc_text = pct(acc) + (f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci and acc is not None else "")
        if paired and v is not ref and result.primary_metric == "accuracy" and delta != "—":
            delta += f" ({100 * paired['delta_low']:+.2f} to {100 * paired['delta_high']:+.2f})"
        cos = v.metrics.get("cosine_to_float")
        weights = (v.fidelity.get("graph") or {}).get("weight_bytes") or {}
        deployed = weights.get("deployed")
        size = f"{v.size_bytes / 1e6:.2f}" if v.size_bytes else "—"
        dep = f"{deployed / 1e6:.2f}" if deployed else (size if v is ref else "—")
        imm = v.engine.get("integer_matmuls")
        lines.append(
            f"| {_describe(scheme)} | {v.name} | {acc_text} | {delta} | {'—' if cos is None else f'{cos:.4f}'} | {size} | {dep} | {'—' if imm is None else imm} |"
        )
    lines += ["", "Where each format can be fast:", ""]
    lines += [f"- {note}" for note in HARDWARE_NOTES]
    lines.append("")
    return lines
