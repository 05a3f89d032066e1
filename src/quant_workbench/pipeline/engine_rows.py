"""One row per (variant, engine, inference precision) in a run over several engines (`engine.runtimes`).

The stages build each variant once (float, the PTQ schemes, QAT, the search's choice) and, as today,
its row on the reference engine (the first runtime; for it nothing changes). `add_engine_rows` then
adds that variant's rows on every other engine, and on every other inference precision an engine has
here (OpenVINO: f32, and bf16 where this CPU and OpenVINO support it, detected):

    float                  ONNX Runtime, the fused float graph       (the reference engine's f32 float)
    float@openvino         OpenVINO, float.onnx, f32
    float-bf16@openvino    OpenVINO, float.onnx, bf16
    int8-max               ONNX Runtime, the fused INT8 graph
    int8-max@openvino      OpenVINO, the OpenVINO layout (export/openvino.py), f32 leftovers
    int8-max-bf16@openvino same graph, bf16 leftovers

Each row is a VariantResult with its `runtime` and `inference_precision`, scored by the same
evaluation and timed in the same interleaved loop as every other row (measure/accuracy.py / measure/latency.py open
it with `EngineFromOnnx(..., runtime=row.runtime, inference_precision=row.inference_precision)`).
A row whose graph cannot be built or checked on its engine is recorded as failed; the others go on.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.core.results import FLOAT_PRECISIONS, VariantResult
from quant_workbench.export.openvino import ScaleSource, float_check, openvino_graph
from quant_workbench.models.loading import LoadedModel
from quant_workbench.quantize.plan import QuantPlan
from quant_workbench.runtime import engine_summary, row_name, row_precisions

if TYPE_CHECKING:
    from quant_workbench.pipeline.state import RunState

log = logging.getLogger(__name__)
Say = Callable[[str], None]


def mark_reference_row(variant: VariantResult, recipe: Recipe) -> None:
    """The row the stages built: on the reference engine, at its first precision."""
    variant.runtime = recipe.engine.runtime
    variant.inference_precision = row_precisions(recipe, recipe.engine.runtime, variant.precision not in FLOAT_PRECISIONS)[0]


def other_rows(recipe: Recipe, quantized: bool = False) -> list[tuple[str, str | None]]:
    """(runtime, inference precision) of every row a variant (the float model, or with `quantized` a quantized
    variant) gets besides its reference-engine row."""
    out = []
    for runtime in recipe.engine.all_runtimes:
        precisions = row_precisions(recipe, runtime, quantized)
        for i, precision in enumerate(precisions):
            if runtime == recipe.engine.runtime and i == 0:
                continue
            out.append((runtime, precision))
    return out


def supports(runtime: str, variant: VariantResult) -> str | None:
    """Why `runtime` gets no row of this variant (None: it does)."""
    if runtime == "openvino" and variant.precision == "fp8":
        return "OpenVINO's CPU plugin has no FP8 matrix product"
    return None


def _row(base: VariantResult, name: str, runtime: str, precision: str | None) -> VariantResult:
    row = VariantResult(name=name, precision=base.precision, calibration_method=base.calibration_method, runtime=runtime, inference_precision=precision)
    row.size_bytes = base.size_bytes
    row.artifacts = dict(base.artifacts)
    # the Q/DQ checks (per layer, end to end on ONNX Runtime) are the variant's; the engine check is the row's
    row.fidelity = {k: copy.deepcopy(v) for k, v in base.fidelity.items() if k != "engine_graph"}
    return row


class EngineRows:
    """Builds the other engines' rows of each variant; `graph_for` builds (once per variant and engine) the
    file that engine runs and its check."""

    def __init__(self, recipe: Recipe, models_dir: Path, say: Say = print) -> None:
        self.recipe = recipe
        self.models_dir = models_dir
        self.say = say

    def float_rows(self, base: VariantResult, float_path: Path, fused_path: Path | None, example: dict[str, torch.Tensor], reference: np.ndarray) -> list[tuple[VariantResult, Path | None]]:
        """The float model's rows on the other engines (ONNX Runtime: its fused graph when built)."""
        out: list[tuple[VariantResult, Path | None]] = []
        checks: dict[str, dict[str, Any]] = {}
        for runtime, precision in other_rows(self.recipe):
            row = _row(base, row_name("float", self.recipe, runtime, precision), runtime, precision)
            path = float_path
            if runtime == "openvino":
                if runtime not in checks:
                    checks[runtime] = float_check(float_path, self.recipe, example, reference)
                row.fidelity["engine_graph"] = checks[runtime]
                if not checks[runtime]["passed"]:
                    row.status, row.error = "failed", f"OpenVINO float check failed: {checks[runtime].get('error') or checks[runtime]}"
            elif runtime == "onnxruntime" and fused_path is not None:
                path = fused_path
                row.artifacts["engine_onnx"] = f"models/{fused_path.name}"
            out.append(self._finish(row, path))
        return out

    def variant_rows(
        self,
        base: VariantResult,
        loaded: LoadedModel,
        qdq_path: Path,
        example: dict[str, torch.Tensor],
        *,
        plan: QuantPlan | None,
        scales: ScaleSource | None,
        ort_graph: Callable[[VariantResult], Path] | None = None,
        base_key: str = "",
    ) -> list[tuple[VariantResult, Path | None]]:
        """A quantized variant's rows on the other engines, built while the model is in the variant's state."""

        def graph(runtime: str) -> tuple[Path, dict[str, Any]]:
            """The file `runtime` runs for this variant, and its check."""
            if runtime == "openvino":
                return openvino_graph(self.recipe, self.models_dir, loaded, base.name, qdq_path, example, precision=base.precision, plan=plan, scales=scales, base_key=base_key)
            if runtime == "onnxruntime" and ort_graph is not None:
                probe = VariantResult(name=base.name, precision=base.precision, fidelity=copy.deepcopy(base.fidelity))
                path = ort_graph(probe)
                return path, probe.fidelity.get("engine_graph", {})
            return qdq_path, {"graph": "qdq", "why": f"{runtime} runs the Q/DQ export"}

        out: list[tuple[VariantResult, Path | None]] = []
        graphs: dict[str, tuple[Path, dict[str, Any]] | WorkbenchError] = {}
        for runtime, precision in other_rows(self.recipe, quantized=True):
            row = _row(base, row_name(base.name, self.recipe, runtime, precision, quantized=True), runtime, precision)
            why_not = supports(runtime, base)
            if why_not is not None:
                log.debug("no %s row for %s: %s", runtime, base.name, why_not)
                continue
            if runtime not in graphs:
                try:
                    graphs[runtime] = graph(runtime)
                except Exception as exc:  # this engine's rows of the variant fail; the variant and other engines go on
                    log.debug("%s on %s failed", base.name, runtime, exc_info=True)
                    graphs[runtime] = exc if isinstance(exc, WorkbenchError) else WorkbenchError(f"{type(exc).__name__}: {exc}")
                    self.say(f"  {base.name} on {runtime}: {graphs[runtime]}")
            built = graphs[runtime]
            if isinstance(built, WorkbenchError):
                row.status, row.error = "failed", str(built)
                out.append((row, None))
                continue
            path, check = built
            row.fidelity["engine_graph"] = copy.deepcopy(check)
            if path != qdq_path:
                row.artifacts["engine_onnx"] = f"models/{path.name}"
            out.append(self._finish(row, path))
        return out

    def _finish(self, row: VariantResult, path: Path | None) -> tuple[VariantResult, Path | None]:
        if row.status != "ok" or path is None:
            return row, None
        try:
            assert row.runtime is not None
            row.engine = engine_summary(path, self.recipe, row.runtime, row.inference_precision)
        except Exception as exc:  # e.g. a compile crash found by the engine's check: this row fails
            row.status, row.error = "failed", str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
            self.say(f"  {row.name} failed: {row.error}")
            return row, None
        return row, path


# ---------------------------------------------------------------------------------------------
# the run's stages call these (pipeline/run.py): one line each


def add_float_rows(state: RunState, float_variant: VariantResult) -> None:
    """After the float row: mark it as the reference engine's, check it there when that engine has its own
    float check (OpenVINO), and add the float rows of the other engines."""
    recipe = state.recipe
    mark_reference_row(float_variant, recipe)
    assert state.float_path is not None and state.float_reference is not None
    if recipe.engine.runtime == "openvino":
        float_variant.fidelity["engine_graph"] = check = float_check(state.float_path, recipe, state.example, state.float_reference)
        if not check["passed"]:
            raise WorkbenchError(f"OpenVINO's float model disagrees with PyTorch: {check.get('error') or check}", "see engine.openvino; try engine.openvino.precisions: [f32]")
        float_variant.engine = engine_summary(state.float_path, recipe, "openvino", float_variant.inference_precision)
    graphs = state.need_graphs()
    rows = EngineRows(recipe, state.run_dir / "models", state.say)
    for row, path in rows.float_rows(float_variant, state.float_path, graphs.fused_float_path, state.example, state.float_reference):
        state.add_variant(row, path)


def add_variant_rows(
    state: RunState,
    variant: VariantResult,
    qdq_path: Path,
    *,
    plan: QuantPlan | None,
    scales: ScaleSource | None,
    ort_graph: Callable[[VariantResult], Path] | None = None,
) -> None:
    """After a quantized variant's reference-engine row: its rows on the other engines (nothing without engine.runtimes)."""
    mark_reference_row(variant, state.recipe)
    if not other_rows(state.recipe, quantized=True):
        return
    rows = EngineRows(state.recipe, state.run_dir / "models", state.say)
    for row, path in rows.variant_rows(variant, state.need_loaded(), qdq_path, state.example, plan=plan, scales=scales, ort_graph=ort_graph, base_key=state.base_key):
        state.add_variant(row, path)


def display_order(variants: list[VariantResult], recipe: Recipe) -> None:
    """Rows grouped by engine (reference engine first), reference rows last; stable within a group."""
    runtimes = recipe.engine.all_runtimes
    variants.sort(key=lambda v: (v.reference, runtimes.index(v.runtime) if v.runtime in runtimes else 0))
