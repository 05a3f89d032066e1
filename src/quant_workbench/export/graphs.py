"""Which graph each variant runs as on the recipe's engine (engine-aware export), the standard tools'
reference rows, and the dynamic INT8 scheme.

Every INT8 variant is exported once as Q/DQ ONNX (the TensorRT layout, fidelity-checked against the
fake-quant model). On ONNX Runtime CPU that graph is not what runs: `EngineGraphs.for_variant` builds
the engine graph from the same scales (export/ort.py) and checks it against the fake-quant model
again, so a lowering bug or a saturating U8 x S8 kernel (CPUs without VNNI) falls back to the
checked Q/DQ graph instead of shipping wrong numbers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from quant_workbench.config.catalog import REFERENCES
from quant_workbench.config.recipe import Recipe
from quant_workbench.core.artifacts import cached, hash_json
from quant_workbench.core.comparator import Comparator, max_abs_diff, mean_cosine, numpy_feed, torch_runner
from quant_workbench.core.errors import ExportError
from quant_workbench.core.machine import cpu_has_vnni
from quant_workbench.core.results import VariantResult
from quant_workbench.data.splits import Splits
from quant_workbench.export.openvino import ScaleSource, openvino_graph
from quant_workbench.export.ort import (
    LoweringError,
    LoweringInfo,
    export_fused_float,
    fused_op_counts,
    lower_int8,
    map_linears,
    qdq_to_u8_activations,
    quantized_linears,
)
from quant_workbench.export.qdq import end_to_end_allowance
from quant_workbench.export.references import (
    REFERENCE_BUILDERS,
    quantize_dynamic_onnx,
    quantize_static_onnx,
    reference_name,
)
from quant_workbench.models.loading import LoadedModel, batches
from quant_workbench.quantize.modules import QuantAdd, QuantMatMul
from quant_workbench.quantize.plan import QuantPlan
from quant_workbench.quantize.smoothquant import float_mode
from quant_workbench.runtime import EngineFromOnnx, engine_summary
from quant_workbench.runtime.onnxruntime import OrtEngine

log = logging.getLogger(__name__)

# Bump when the fused-graph recipe changes (fusion options, lowering rules): cached graphs are rebuilt.
ENGINE_GRAPH_VERSION = "2"
Say = Callable[[str], None]


def _run(path: Path, recipe: Recipe, example: dict[str, torch.Tensor]) -> np.ndarray:
    with OrtEngine(path, recipe.engine, path.stem) as eng:
        return eng(numpy_feed(example))


def _sidecar(path: Path) -> str:
    """The cache key an artifact was written under (core.artifacts.mark_artifact): what it was built from."""
    side = path.with_name(path.name + ".key")
    return side.read_text().strip() if side.is_file() else ""


def _hidden_quantizers(hf: torch.nn.Module) -> list[str]:
    """Quantized ops that ONNX Runtime's fused Attention / SkipLayerNormalization would compute in float."""
    kinds = []
    if any(isinstance(m, QuantMatMul) and m.input_quantizer.enabled for m in hf.modules()):
        kinds.append("attention matmuls")
    if any(isinstance(m, QuantAdd) and m.input_quantizer.enabled for m in hf.modules()):
        kinds.append("residual adds")
    return kinds


class EngineGraphs:
    def __init__(self, recipe: Recipe, models_dir: Path, base_key: str, say: Say = print) -> None:
        self.recipe = recipe
        self.models_dir = models_dir
        self.base_key = base_key
        self.say = say
        self.mode = recipe.engine.resolved_int8_graph
        self.fused_float_path: Path | None = None
        self.float_fused_ops: dict[str, int] = {}
        self.warnings: list[str] = []  # what the run must report beyond the notes (pipeline/run.py collects them)
        self.warn = True

    def sharing_float(self, models_dir: Path) -> EngineGraphs:
        """The same engine rules writing into another folder (search trials), over this fused float graph."""
        other = EngineGraphs(self.recipe, models_dir, self.base_key, self.say)
        other.fused_float_path, other.float_fused_ops = self.fused_float_path, self.float_fused_ops
        other.warn = False  # a trial's graph is in its record; the run warns about the variants it reports
        return other

    def identity(self) -> str:
        """What decides the graphs built here: joins cache keys of results timed on them."""
        return f"{self.mode}-{ENGINE_GRAPH_VERSION}-ort{onnxruntime.__version__}"

    @property
    def wants_fused_float(self) -> bool:
        """On ONNX Runtime CPU the float baseline is always the fused graph: the fastest float it offers
        (built too when ONNX Runtime CPU is one of several engines: its rows run it)."""
        return self.recipe.engine.ort_cpu_rows

    def _key(self, **extra: Any) -> str:
        return hash_json({"base": self.base_key, "engine_graph": ENGINE_GRAPH_VERSION, "onnxruntime": onnxruntime.__version__, **extra})

    def fused_float(self, loaded: LoadedModel, example: dict[str, torch.Tensor], reference: np.ndarray) -> tuple[Path, dict[str, Any]]:
        path = self.models_dir / "float.fused.onnx"
        float_path = self.models_dir / "float.onnx"
        try:
            key = self._key(graph="fused-float")
            cached(path, key, lambda: export_fused_float(loaded.model, loaded.model.hf, path, example, loaded.input_names, loaded.output_name))
            check = Comparator(reference).check(_run(path, self.recipe, example), max_abs_diff(self.recipe.export.float_tolerance))
        except ExportError as exc:
            self.say(f"  fused float graph unavailable ({exc}); the float baseline runs float.onnx")
            return float_path, {"graph": "float.onnx", "error": str(exc)}
        ops = fused_op_counts(path)
        info = {
            "graph": f"models/{path.name}", "fused_ops": ops, "onnx_vs_pytorch_max_abs_diff": check.max_abs_diff,
            "tolerance": check.threshold, "passed": check.passed,
        }
        if not check.passed:
            self.say(f"  fused float graph differs from PyTorch by {check.max_abs_diff:.3g} (> {check.threshold}); the float baseline runs float.onnx")
            return float_path, info
        self.fused_float_path, self.float_fused_ops = path, ops
        self.say(f"  fused float: {', '.join(f'{v} {k}' for k, v in ops.items())}")
        if cpu_has_vnni() is False and self.mode in ("fused", "qdq-u8"):
            self.say(
                "  this CPU has no VNNI/AMX integer dot product: ONNX Runtime's U8 x S8 kernels sum pairs of products in "
                "16 bits and can saturate; every engine graph is checked against the fake-quant model and replaced by the "
                "S8 Q/DQ graph if it disagrees"
            )
        return path, info

    def _fused_for(self, loaded: LoadedModel, example: dict[str, torch.Tensor], key: str) -> Path:
        """A fused float graph of the model's current weights (SmoothQuant-rewritten or QAT-trained)."""
        path = self.models_dir / f"fused-{key[:12]}.onnx"
        cached(path, key, lambda: export_fused_float(loaded.model, loaded.model.hf, path, example, loaded.input_names, loaded.output_name))
        return path

    def for_variant(
        self,
        loaded: LoadedModel,
        name: str,
        qdq_path: Path,
        example: dict[str, torch.Tensor],
        variant: VariantResult,
        *,
        alpha: float | None = None,
        fp8: bool = False,
        weights_key: str | None = None,
        runtime: str | None = None,
        plan: QuantPlan | None = None,
        scales: ScaleSource | None = None,
    ) -> Path:
        """The graph this quantized variant runs as on `runtime` (default: the reference engine); its check
        lands in `variant.fidelity["engine_graph"]`. OpenVINO's layout needs the variant's `plan` and
        `scales` to add quantizers (export/openvino.py); without them it runs the Q/DQ export."""
        runtime = runtime or self.recipe.engine.runtime
        if runtime == "openvino":
            path, check = openvino_graph(
                self.recipe, self.models_dir, loaded, name, qdq_path, example, precision=variant.precision, plan=plan, scales=scales, base_key=self.base_key
            )
            variant.fidelity["engine_graph"] = check
            return path
        if runtime != "onnxruntime" or not self.recipe.engine.ort_cpu_rows:
            variant.fidelity["engine_graph"] = {"graph": "qdq", "why": f"{runtime} runs the Q/DQ export (S8, the TensorRT layout)"}
            return qdq_path
        if fp8 or self.mode == "qdq":
            if fp8:
                why = "FP8 Q/DQ (ONNX Runtime CPU has no FP8 GEMM: emulated)" if self.recipe.engine.ort_cpu else "FP8 Q/DQ"
            else:
                why = "engine.int8_graph: qdq (S8 Q/DQ, the TensorRT layout)"
            variant.fidelity["engine_graph"] = {"graph": "qdq", "why": why}
            return qdq_path
        hidden = _hidden_quantizers(loaded.model.hf)
        notes: list[str] = []
        candidates: list[tuple[str, Path, dict[str, Any]]] = []
        if self.mode == "fused" and hidden:
            notes.append(f"{' and '.join(hidden)} are quantized: ONNX Runtime's fused ops would run them in float, so the U8 Q/DQ graph runs instead")
        elif self.mode == "fused" and self.fused_float_path is None:
            notes.append("no fused float graph (see the float variant); the U8 Q/DQ graph runs instead")
        elif self.mode == "fused" and self.fused_float_path is not None:
            try:
                src = self.fused_float_path
                if alpha is not None or weights_key is not None:
                    src = self._fused_for(loaded, example, self._key(alpha=alpha, weights=weights_key))
                out = self.models_dir / f"{name}.fused.onnx"
                key = self._key(graph="fused-int8", qdq=_sidecar(qdq_path), source=_sidecar(src))
                built: list[LoweringInfo] = []
                cached(out, key, lambda: built.append(lower_int8(src, loaded.model.hf, out)))
                # a reused graph is still described (and its call sites checked) without being written again
                lowered = built[0] if built else lower_int8(src, loaded.model.hf, None)
                candidates.append(("fused-int8", out, lowered.to_dict()))
            except (LoweringError, ExportError) as exc:
                notes.append(f"fused INT8 graph not built: {exc}")
            except Exception as exc:  # noqa: BLE001 - a lowering bug must cost the variant its fastest graph, not the variant
                log.debug("fused INT8 lowering of %s failed", name, exc_info=True)
                notes.append(f"fused INT8 graph not built ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})")
        u8 = self.models_dir / f"{name}.u8.onnx"
        candidates.append(("qdq-u8", u8, {}))
        model = torch_runner(loaded.model)
        fake = Comparator(model, numpy_feed(example))
        known = variant.fidelity.get("end_to_end", {}).get("fake_quant_vs_float_cosine")
        if known is None:  # no Q/DQ check ran (search.check_fidelity: false): measure the quantization noise here
            with float_mode(loaded.model):
                known = fake.measure(model).mean_cosine
        noise = 1.0 - float(known)
        allowed = end_to_end_allowance(noise, self.recipe.export.min_cosine)
        for graph, path, lowering_info in candidates:
            # Whatever goes wrong with a faster graph (it cannot be built, ONNX Runtime refuses to load
            # it, it fails at run time or disagrees with the fake-quant model), the next graph runs and
            # the report says why: a variant never fails for want of a faster graph.
            try:
                if graph == "qdq-u8":
                    key = self._key(graph="qdq-u8", qdq=_sidecar(qdq_path))
                    cached(path, key, functools.partial(qdq_to_u8_activations, qdq_path, path))
                verdict = fake.check(_run(path, self.recipe, example), mean_cosine(allowed))
            except Exception as exc:  # noqa: BLE001 - any failure of this graph means: use the next one
                log.debug("engine graph %s of %s failed", graph, name, exc_info=True)
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                notes.append(f"{graph} graph failed to build or load ({type(exc).__name__}: {first}); not used")
                self.say(f"  {name}: {notes[-1]}")
                continue
            check = {"mean_cosine_vs_fake_quant": verdict.mean_cosine, "threshold": verdict.threshold, "passed": verdict.passed}
            if verdict.passed:
                ops = fused_op_counts(path)
                lost = {k: v - ops.get(k, 0) for k, v in self.float_fused_ops.items() if ops.get(k, 0) < v}
                variant.fidelity["engine_graph"] = {
                    "graph": graph, "path": f"models/{path.name}", **check, "lowering": lowering_info,
                    "fused_ops": ops, "fusions_lost_vs_float": lost, "notes": notes,
                }
                self._requested_graph_not_used(name, graph, notes)
                return path
            # A U8 x S8 kernel that saturates (16-bit pair sums on CPUs without VNNI) shows up here.
            notes.append(f"{graph} graph disagrees with the fake-quant model (mean cosine {verdict.mean_cosine:.4f} < {verdict.threshold:.4f}); not used")
            self.say(f"  {name}: {notes[-1]}")
        self.say(f"  {name}: running the S8 Q/DQ graph (slow on ONNX Runtime CPU) because no faster graph passed its check")
        variant.fidelity["engine_graph"] = {"graph": "qdq", "why": "fallback: no U8 graph passed the check", "notes": notes}
        self._requested_graph_not_used(name, "qdq", notes)
        return qdq_path

    def _requested_graph_not_used(self, name: str, graph: str, notes: list[str]) -> None:
        """A graph form the recipe asked for by name (engine.int8_graph, not auto) that did not run is a
        warning of the run (log and report), not only a note in the engine-graph table."""
        wanted = self.recipe.engine.int8_graph
        if not self.warn or wanted == "auto" or graph == {"fused": "fused-int8"}.get(wanted, wanted):
            return
        why = "; ".join(notes) or "see the engine graph notes"
        text = f"{name}: engine.int8_graph: {wanted} was requested, but the variant runs the {graph} graph ({why})"
        log.warning(text)
        self.warnings.append(text)

    # -----------------------------------------------------------------------------------------
    # int8-dynamic and the reference rows

    def dynamic_variant(
        self, loaded: LoadedModel, example: dict[str, torch.Tensor], reference: np.ndarray, variant: VariantResult, *, quantization_noise: float | None = None
    ) -> Path:
        """ONNX Runtime's dynamic quantization of the fused float graph, on the Linears the plan quantizes.

        Gate (the same pass/fail as every other candidate's engine graph): there is no fake-quant model of a
        run-time quantization to compare with, so its distance from float (1 - mean cosine on the fidelity
        inputs) may be at most the quantization noise of the static max-calibrated fake-quant model of the same
        Linears (`quantization_noise`; dynamic ranges are never wider than the calibrated max) plus the
        allowance the Q/DQ export's end-to-end check gives a correct graph. A graph that fails is not used:
        ExportError, and the variant is recorded as failed with the numbers."""
        if self.fused_float_path is None:
            raise ExportError("int8-dynamic quantizes the fused float graph, which could not be built (see the float variant)")
        mapping = map_linears(self.fused_float_path, loaded.model.hf)
        wanted = quantized_linears(loaded.model.hf)
        nodes = [node for node, lins in mapping.items() if lins and all(n in wanted for n in lins)]
        partial = [node for node, lins in mapping.items() if any(n in wanted for n in lins) and not all(n in wanted for n in lins)]
        out = self.models_dir / "int8-dynamic.onnx"
        key = self._key(graph="int8-dynamic", nodes=sorted(nodes), per_channel=self.recipe.quantization.per_channel_weights)
        cached(out, key, functools.partial(quantize_dynamic_onnx, self.fused_float_path, out, per_channel=self.recipe.quantization.per_channel_weights, nodes=nodes, op_types=["MatMul", "Attention"]))
        noise = quantization_noise or 0.0
        check = Comparator(reference).check(_run(out, self.recipe, example), mean_cosine(noise + end_to_end_allowance(noise, self.recipe.export.min_cosine)))
        variant.fidelity = {
            "engine_graph": {
                "graph": "dynamic", "path": f"models/{out.name}", "quantized_nodes": len(nodes),
                "linears_quantized": sum(len(mapping[n]) for n in nodes), "linears_in_plan": len(wanted),
                "notes": [f"{n}: Q/K/V share one fused projection and not all are in the plan; left float" for n in partial],
                "mean_cosine_vs_float": check.mean_cosine, "threshold": check.threshold, "passed": check.passed,
                "static_max_fake_quant_vs_float_cosine": None if quantization_noise is None else 1.0 - noise,
                "fused_ops": fused_op_counts(out),
            }
        }
        if not check.passed:
            raise ExportError(
                f"int8-dynamic failed its fidelity check: mean cosine to float {check.mean_cosine:.4f} < {check.threshold:.4f} "
                f"(the static max-calibrated fake-quant model of the same Linears reaches {1.0 - noise:.4f}); the candidate is removed",
                "on a CPU without VNNI, ONNX Runtime's U8 x S8 kernels can saturate; see the Engine graphs section",
            )
        return out

    def references(
        self,
        loaded: LoadedModel,
        splits: Splits,
        example: dict[str, torch.Tensor],
        float_path: Path,
        reference: np.ndarray,
        fingerprint: str,
    ) -> list[tuple[VariantResult, Path]]:
        kinds = self.recipe.reference_kinds
        out: list[tuple[VariantResult, Path]] = []
        inputs = ReferenceInputs(loaded, splits, example, float_path, fingerprint)
        for kind in kinds:
            name = reference_name(kind)
            row = REFERENCES.get(kind)
            v = VariantResult(name=name, precision=row.precision, reference=True, runtime=row.runtime, inference_precision=row.inference_precision)
            v.calibration_method = row.calibration_method
            path = self.models_dir / row.file.format(kind=kind)
            try:
                REFERENCE_BUILDERS.get(kind)(self, inputs, path)
                with EngineFromOnnx(path, self.recipe, name, row.precision, runtime=row.runtime, inference_precision=row.inference_precision) as eng:
                    against_float = Comparator(reference, numpy_feed(example)).measure(eng)
                check = {"graph": kind, "path": f"models/{path.name}", "mean_cosine_vs_float": against_float.mean_cosine, "max_abs_diff_vs_float": against_float.max_abs_diff}
                if row.runtime == "onnxruntime":
                    check["fused_ops"] = fused_op_counts(path)
                v.fidelity = {"engine_graph": check}
                v.engine = engine_summary(path, self.recipe, row.runtime, row.inference_precision)
                v.artifacts = {"reference_onnx": f"models/{path.name}"}
                v.size_bytes = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
            except Exception as exc:  # a reference the standard tools cannot build here is reported, not fatal
                log.debug("reference %s failed", name, exc_info=True)
                v.status, v.error = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.say(f"  {name} failed: {v.error}")
            out.append((v, path))
        return out


# ---------------------------------------------------------------------------------------------
# declarations: the int8-dynamic scheme and the reference rows built here

@dataclass(frozen=True)
class ReferenceInputs:
    """What a reference row is built from: the run's model, data and float export."""

    loaded: LoadedModel
    splits: Splits
    example: dict[str, torch.Tensor]
    float_path: Path
    fingerprint: str  # of the calibration data


def _ort_float_graph(graphs: EngineGraphs, inputs: ReferenceInputs) -> Path:
    """TorchScript export + the transformer optimizer's default fusions (SkipLayerNormalization included)."""
    path = graphs.models_dir / "ref-ort-float.onnx"
    key = graphs._key(graph="ref-ort-float")
    loaded = inputs.loaded
    cached(path, key, lambda: export_fused_float(loaded.model, loaded.model.hf, path, inputs.example, loaded.input_names, loaded.output_name, skip_layer_norm=True))
    return path


def _build_ort_float(graphs: EngineGraphs, inputs: ReferenceInputs, path: Path) -> None:
    _ort_float_graph(graphs, inputs)  # the row runs that graph itself: ref-ort-float.onnx


def _build_ort_dynamic(graphs: EngineGraphs, inputs: ReferenceInputs, path: Path) -> None:
    ort_float = _ort_float_graph(graphs, inputs)
    key = graphs._key(graph="ref-ort-dynamic")
    cached(path, key, lambda: quantize_dynamic_onnx(ort_float, path))


def _build_ort_static(graphs: EngineGraphs, inputs: ReferenceInputs, path: Path) -> None:
    key = graphs._key(graph="ref-ort-static", data=inputs.fingerprint, samples=len(inputs.splits.calibration))
    cal = graphs.recipe.quantization.calibration
    loaded = inputs.loaded

    def build() -> None:
        feeds = batches(loaded.tokenizer, inputs.splits.calibration.texts, cal.batch_size, loaded.spec.max_seq_length, loaded.input_names)
        quantize_static_onnx(inputs.float_path, path, feeds)

    cached(path, key, build)


# The ONNX Runtime rows (config/catalog.py REFERENCES says what each is).
REFERENCE_BUILDERS.register("ort-float", _build_ort_float)
REFERENCE_BUILDERS.register("ort-dynamic", _build_ort_dynamic)
REFERENCE_BUILDERS.register("ort-static", _build_ort_static)
