"""What a variant runs as on OpenVINO (engine-aware layout), checked against the fake-quant model, and
the standard OpenVINO path's reference rows (`ref:openvino-float`, `ref:openvino-nncf`).

OpenVINO's CPU plugin reads the workbench's Q/DQ ONNX as it is (S8 symmetric activations, per-channel
S8 weights) and runs every quantized Linear as an INT8 FullyConnected. Its plugin also runs the fused
QK^T-softmax-PV block in INT8 when the attention matmuls carry Q/DQ, which the portable Q/DQ export (the
TensorRT layout: Linears) does not give it. So for OpenVINO each INT8 variant is exported once more from
the same calibration statistics and method with Q/DQ added on the attention score matmul QK^T
(`qdq-qk`, engine.openvino.int8_graph: auto; NNCF's choice too). `qdq-attention` also quantizes the
softmax output x V, which measured less accurate (a per-tensor INT8 grid over probabilities); residual
adds are not offered: quantizing them cost 2-2.4 points of probe accuracy for no speed.
`bench/openvino_layouts.py` measures the candidate layouts side by side (docs/openvino.md).

Every graph is checked like the ONNX Runtime engine graphs (export/graphs.py): OpenVINO at f32 against
the fake-quant PyTorch model with the same quantizers, the export's end-to-end rule; a graph that fails
(or crashes OpenVINO's compiler, found in a child process) falls back to the next one
(qdq-qk -> qdq), and when none passes the OpenVINO rows of that variant fail with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.artifacts import (
    cached,
    hash_json,
    make_shareable,
    temp_prefix,
)
from quant_workbench.core.comparator import Comparator, mean_cosine, numpy_feed, torch_runner
from quant_workbench.core.errors import ExportError, OptionalDependencyError, WorkbenchError
from quant_workbench.export.qdq import export_onnx
from quant_workbench.export.references import REFERENCE_BUILDERS
from quant_workbench.models.loading import LoadedModel, batches
from quant_workbench.quantize.apply import set_scales
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.plan import QuantPlan, build_plan
from quant_workbench.quantize.smoothquant import float_mode

if TYPE_CHECKING:
    from quant_workbench.export.graphs import EngineGraphs, ReferenceInputs

log = logging.getLogger(__name__)

# Bump when the OpenVINO layout rules change: cached layout exports are rebuilt.
OPENVINO_GRAPH_VERSION = "1"


@dataclass(frozen=True)
class ScaleSource:
    """Where a variant's activation scales come from: the calibration statistics matching the model's
    current state, and the method (OpenVINO's layout adds quantizers, whose scales come from the same)."""

    calibrators: dict[str, HistogramCalibrator]
    method: str
    percentile: float


def resolved_layout(recipe: Recipe) -> str:
    mode = recipe.engine.openvino.int8_graph
    return "qdq-qk" if mode == "auto" else mode


def run_openvino(path: Path, recipe: Recipe, example: dict[str, torch.Tensor], inference_precision: str | None = "f32") -> np.ndarray:
    from quant_workbench.runtime.openvino import OvEngine

    with OvEngine(path, recipe.engine, path.stem, inference_precision=inference_precision) as eng:
        return eng(numpy_feed(example))


def attention_plan(hf: torch.nn.Module, recipe: Recipe, plan: QuantPlan, *, pv: bool = False) -> QuantPlan:
    """`plan` with the attention score matmuls (QK^T; with `pv` the probabilities x V matmuls too) that the
    recipe's targets / ignore allow switched on as well."""
    wider = build_plan(hf, recipe.quantization.model_copy(update={"quantize_attention_matmuls": True}))
    add = {p.module for p in wider.points if p.enabled and p.kind == "attention_matmul" and (pv or not p.module.endswith("pv_matmul"))}
    return QuantPlan(tuple(replace(p, enabled=True, reason="OpenVINO layout: attention matmul") if p.module in add and not p.enabled else p for p in plan.points))


@contextmanager
def _flags(hf: torch.nn.Module, plan: QuantPlan) -> Iterator[None]:
    """The model's quantizers switched to `plan` for the block, restored after (scales of the points the
    variant quantizes are untouched: set_scales recomputes them from the same statistics and method)."""
    from quant_workbench.quantize.apply import quantizers

    saved = {n: q.enabled for n, q in quantizers(hf).items()}
    from quant_workbench.quantize.apply import apply_flags

    apply_flags(hf, plan)
    try:
        yield
    finally:
        for n, q in quantizers(hf).items():
            q.enabled = saved[n]


def openvino_allowance(noise: float, min_cosine: float) -> float:
    """How far (1 - mean cosine) an OpenVINO graph may be from the fake-quant model end to end.

    The export's rule (export/graphs.py, export/fidelity.py) allows half the fake-quant model's own distance from
    float, which fits ONNX Runtime: its integer kernels round exactly like QuantizeLinear. OpenVINO's do not
    (its FakeQuantize arithmetic and the requantize fused into a FullyConnected with the GELU before it round
    some elements the other way): measured on all-MiniLM-L6-v2 with one Linear role quantized at a time,
    OpenVINO f32 vs fake quant 0.9994-0.9999 mean cosine where ONNX Runtime gives 0.9999-1.0, and with all
    36 Linears 0.9876 vs 0.9982 while both are 0.977 from float. Those per-element differences add up
    end to end, so OpenVINO gets the whole distance: a graph farther from the fake-quant model than that
    model is from float is not the same quantized model (a wrong scale, a lost quantizer, a saturating
    kernel all are)."""
    return max(1.0 - min_cosine, noise)


def _check_graph(graph: str, path: Path, recipe: Recipe, example: dict[str, torch.Tensor], fake: Comparator, noise: float) -> dict[str, Any]:
    """OpenVINO (f32) on `path` vs the fake-quant model's outputs (openvino_allowance)."""
    compare = mean_cosine(openvino_allowance(noise, recipe.export.min_cosine))
    info: dict[str, Any] = {"graph": graph, "path": f"models/{path.name}", "threshold": compare.threshold}
    try:
        got = run_openvino(path, recipe, example)
    except Exception as exc:  # a compile error, a crash (found in the child process) or a failed inference: this graph only
        return {**info, "passed": False, "error": str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"}
    check = fake.check(got, compare)
    return {**info, "mean_cosine_vs_fake_quant": check.mean_cosine, "passed": check.passed}


def openvino_graph(
    recipe: Recipe, models_dir: Path, loaded: LoadedModel, name: str, qdq_path: Path, example: dict[str, torch.Tensor], *,
    precision: str, plan: QuantPlan | None = None, scales: ScaleSource | None = None, base_key: str = "",
) -> tuple[Path, dict[str, Any]]:
    """The graph the quantized variant `name` (of `precision`, its model in the variant's state) runs as on OpenVINO
    and its check (the row's fidelity["engine_graph"]).

    Raises ExportError when no candidate graph passes (the variant's OpenVINO rows fail, the run goes on)."""
    hf = loaded.model.hf
    notes: list[str] = []
    candidates: list[tuple[str, Path, QuantPlan | None]] = []
    layout = resolved_layout(recipe)
    if layout in ("qdq-qk", "qdq-attention"):
        wider = attention_plan(hf, recipe, plan, pv=layout == "qdq-attention") if plan is not None else None
        added = [] if wider is None or plan is None else [p.module for p, q in zip(wider.points, plan.points, strict=True) if p.enabled and not q.enabled]
        if precision != "int8":
            notes.append(f"{precision} variant: the Q/DQ export runs as it is")
        elif scales is None or wider is None:
            notes.append("no calibration statistics for this variant's state (QAT, search): its Q/DQ export runs as it is")
        elif not added:
            notes.append("the attention matmuls are already quantized (or outside targets): the Q/DQ export runs as it is")
        else:
            path = models_dir / f"{name}.{layout.removeprefix('qdq-')}.qdq.onnx"
            with _flags(hf, wider):
                amax = set_scales(loaded.model, scales.calibrators, scales.method, percentile=scales.percentile)
                key = hash_json({
                    "graph": layout, "version": OPENVINO_GRAPH_VERSION, "base": base_key, "qdq": _sidecar(qdq_path),
                    "plan": wider.to_rows(), "amax": amax, "opset": recipe.export.opset,
                })
                cached(path, key, lambda: export_onnx(loaded.model, path, example, loaded.input_names, loaded.output_name, recipe.export.opset))
            candidates.append((layout, path, wider))
            what = "attention matmuls (QK^T, PV)" if layout == "qdq-attention" else "attention score matmuls (QK^T)"
            notes.append(f"Q/DQ added on {len(added)} {what} from the same statistics ({scales.method})")
    candidates.append(("qdq", qdq_path, plan))
    model = torch_runner(loaded.model)
    for graph, path, graph_plan in candidates:
        with _flags(hf, graph_plan) if graph_plan is not None else _unchanged():
            fake = Comparator(model, numpy_feed(example))
            with float_mode(loaded.model):
                noise = fake.measure(model).distance
        check = _check_graph(graph, path, recipe, example, fake, noise)
        if check["passed"]:
            return path, {**check, "notes": notes}
        why = check.get("error") or f"mean cosine {check['mean_cosine_vs_fake_quant']:.4f} < {check['threshold']:.4f}"
        notes.append(f"{graph} graph not used on OpenVINO: {why}")
    raise ExportError(f"no OpenVINO graph of {name} passed its check: {'; '.join(notes)}", "see the engine graphs section; other engines' rows are unaffected")


@contextmanager
def _unchanged() -> Iterator[None]:
    yield


def _sidecar(path: Path) -> str:
    side = path.with_name(path.name + ".key")
    return side.read_text().strip() if side.is_file() else ""


def float_check(path: Path, recipe: Recipe, example: dict[str, torch.Tensor], reference: np.ndarray) -> dict[str, Any]:
    """OpenVINO f32 on float.onnx vs PyTorch: the float rows' engine check (cosine; the max abs diff for information)."""
    info: dict[str, Any] = {"graph": "float.onnx", "path": f"models/{path.name}"}
    try:
        got = run_openvino(path, recipe, example)
    except Exception as exc:  # the rows that would run it fail, not the run
        return {**info, "passed": False, "error": str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"}
    # OpenVINO's f32 kernels sum in another order than PyTorch's: outputs agree to ~1e-5, so the check is
    # the float tolerance on the cosine distance rather than on the largest element difference
    check = Comparator(reference).check(got, mean_cosine(recipe.export.float_tolerance))
    return {**info, "max_abs_diff_vs_pytorch": check.max_abs_diff, "mean_cosine_vs_pytorch": check.mean_cosine, "passed": check.passed}


# ---------------------------------------------------------------------------------------------
# reference rows: what a user of OpenVINO's own tools gets


def _build_openvino_float(graphs: EngineGraphs, inputs: ReferenceInputs, path: Path) -> None:
    """OpenVINO's defaults on the workbench's float.onnx: the row runs that file itself, nothing to build."""
    if not path.is_file():
        raise ExportError(f"{path.name} is missing", "re-run the recipe")


def require_nncf(feature: str = "ref:openvino-nncf") -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise OptionalDependencyError("nncf", "openvino", feature) from exc
    return nncf


def _build_openvino_nncf(graphs: EngineGraphs, inputs: ReferenceInputs, path: Path) -> None:
    """nncf.quantize of the float model, transformer preset, on the run's calibration split (one text per
    item, as optimum-intel feeds it), every calibration text used; saved as OpenVINO IR (xml + bin)."""
    bin_path = path.with_suffix(".bin")
    key = graphs._key(graph="ref-openvino-nncf", data=inputs.fingerprint, samples=len(inputs.splits.calibration))
    cached(path, key, lambda: nncf_quantize(inputs.float_path, inputs.loaded, inputs.splits.calibration.texts, path), also=[bin_path])


def nncf_quantize(float_path: Path, loaded: LoadedModel, texts: Sequence[str] | Sequence[tuple[str, str]], path: Path) -> None:
    """nncf.quantize (ModelType.TRANSFORMER, its defaults) of `float_path` on `texts`, one per item, every one
    used; OpenVINO IR written to `path` (.xml) and its .bin, each renamed into place."""
    nncf = require_nncf()
    import openvino as ov

    model = ov.Core().read_model(str(float_path))
    items = list(batches(loaded.tokenizer, texts, 1, loaded.spec.max_seq_length, loaded.input_names))
    logging.getLogger("nncf").setLevel(logging.WARNING)
    quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
    bin_path = path.with_suffix(".bin")
    # OpenVINO writes <name>.xml + <name>.bin itself: into a private folder first, then each file is renamed
    # into place (the weights before the graph that reads them), so no half-written IR is ever reused
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        ov.save_model(quantized, str(staging / "model.xml"), compress_to_fp16=False)
        for src, dst in ((staging / "model.bin", bin_path), (staging / "model.xml", path)):
            make_shareable(src)
            os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The OpenVINO rows (config/catalog.py REFERENCES says what each is).
REFERENCE_BUILDERS.register("openvino-float", _build_openvino_float)
REFERENCE_BUILDERS.register("openvino-nncf", _build_openvino_nncf)
