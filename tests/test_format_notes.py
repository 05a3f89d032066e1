"""report.md's `## Formats compared` section: best variant per format, sizes, and the hardware notes."""

from __future__ import annotations

from quant_workbench.core.results import RunResult, VariantResult
from quant_workbench.report.markdown import render_markdown
from quant_workbench.report.sections.formats import formats_section


def _v(name: str, precision: str, acc: float, cos: float, **kw: object) -> VariantResult:
    graph = {"weight_bytes": {"stored": 90_000_000, "deployed": 58_000_000}} if precision != "float32" else {}
    return VariantResult(
        name=name,
        precision=precision,  # type: ignore[arg-type]
        calibration_method=None if precision == "float32" else name.rsplit("-", 1)[1],
        metrics={"accuracy": acc, "cosine_to_float": cos},
        size_bytes=91_000_000,
        fidelity={"graph": graph},
        engine={"integer_matmuls": 0 if precision == "fp8" else 36} if precision != "float32" else {},
        **kw,  # type: ignore[arg-type]
    )


def _result(variants: list[VariantResult]) -> RunResult:
    return RunResult(
        recipe_name="r", run_id="x", task="embedding", primary_metric="accuracy", created_utc="2026-01-01T00:00:00Z",
        versions={}, hardware={}, recipe_hash="f" * 64, data={}, calibration={}, variants=variants,
    )  # fmt: skip


def test_formats_section_lists_best_variant_per_format_and_hardware() -> None:
    result = _result(
        [
            _v("float", "float32", 0.726, 1.0),
            _v("int8-max", "int8", 0.714, 0.97),
            _v("int8-mse", "int8", 0.724, 0.98),
            _v("int8-sq0.5-mse", "int8", 0.725, 0.985),
            _v("fp8-max", "fp8", 0.727, 0.996),
            _v("fp8-mse", "fp8", 0.0, 0.0, status="failed", error="boom"),
        ]
    )
    lines = formats_section(result)
    text = "\n".join(lines)
    assert lines[0] == "## Formats compared"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Format") and not line.startswith("| ---")]
    assert [r.split(" | ")[1] for r in rows] == ["float", "int8-mse", "int8-sq0.5-mse", "fp8-max"]
    assert "INT8 + SmoothQuant (alpha 0.5)" in text and "FP8 E4M3" in text
    assert "| 58.00 |" in text  # deployed weights at 1 byte each
    assert "compute capability 8.9" in text and "emulated" in text
    assert "## Formats compared" in render_markdown(result)


def test_formats_section_absent_for_plain_int8_runs() -> None:
    result = _result([_v("float", "float32", 0.7, 1.0), _v("int8-mse", "int8", 0.7, 0.98)])
    assert formats_section(result) == []
    assert "## Formats compared" not in render_markdown(result)
