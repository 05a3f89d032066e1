"""ONNX Runtime engines (CPU, CUDA, TensorRT execution providers)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quant_workbench.config.recipe import EngineSpec, Recipe
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.runtime.base import BACKENDS, Engine, EngineBackend

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
INTEGER_MATMUL_OPS = {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "QAttention"}
FLOAT_MATMUL_OPS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
# ONNX Runtime's common-subexpression elimination merges the per-consumer Q/DQ pairs of a shared input
# (Q, K and V read the same tensor) and then its QDQ fusion skips those MatMuls; keep them apart.
DISABLED_OPTIMIZERS = ["CommonSubexpressionElimination"]
# ONNX Runtime 1.32's Relu/Clip -> QuantizeLinear rewrites read a float8 zero point as if it were
# uint8 (0 = the lowest level) and drop the Relu/Clip, which is wrong for FP8 E4M3 Q/DQ; BERT-family
# graphs have neither before a QuantizeLinear, so keeping them costs INT8 models nothing here.
DISABLED_OPTIMIZERS += ["ReluQuantRewrite", "ClipQuantRewrite"]
# CPU only: ONNX Runtime 1.32's session-level SkipLayerNormFusion turns the residual Add + LayerNormalization
# into its CPU SkipLayerNormalization kernel, which measured slower than the two ops it replaces (the
# default recipe's fused INT8 graph 1.20x faster at b32x128 with it off, the fused float 1.12x; both
# interleaved, bench/ort_graphs.py re-measures it). GPU providers keep it.
CPU_DISABLED_OPTIMIZERS = [*DISABLED_OPTIMIZERS, "SkipLayerNormFusion"]


def disabled_optimizers(spec: EngineSpec) -> list[str]:
    return CPU_DISABLED_OPTIMIZERS if spec.provider == "cpu" else DISABLED_OPTIMIZERS


# After a run, ONNX Runtime's intra-op (and inter-op) pool threads spin on their cores waiting for the next
# one; with several sessions timed in turn on a few shared cores, the previous session's spinning threads
# steal the next session's time (measured: float 3-4x its real time at b1x128 with 9 sessions on 2 cores).
# Every session the workbench opens sleeps instead; its evaluation alternates sessions block by block too.
SESSION_CONFIG = {
    "session.intra_op.allow_spinning": "0",
    "session.inter_op.allow_spinning": "0",
}


def session_options(spec: EngineSpec, threads: int | None = None) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[spec.graph_optimization]
    n = spec.threads if threads is None else threads
    if n:
        so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    return so


def session_providers(spec: EngineSpec) -> list[str]:
    import onnxruntime as ort

    wanted = PROVIDERS[spec.provider]
    available = set(ort.get_available_providers())
    if wanted[0] not in available:
        raise WorkbenchError(
            f"engine.provider '{spec.provider}' needs ONNX Runtime's {wanted[0]}, which this installation lacks "
            f"(available: {', '.join(sorted(available))}).",
            "install onnxruntime-gpu on a machine with an NVIDIA GPU, or set engine.provider: cpu",
        )
    return wanted


class OrtEngine:
    """A runner over one ONNX model; `engine(feed) -> first output`."""

    def __init__(self, model: str | bytes | Path, spec: EngineSpec, name: str = "onnx", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.name = name
        self.spec = spec
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(
                source,
                session_options(spec, threads),
                providers=session_providers(spec),
                disabled_optimizers=disabled_optimizers(spec),
            )
        except WorkbenchError:
            raise
        except Exception as exc:
            raise WorkbenchError(f"ONNX Runtime cannot load {name}: {str(exc).splitlines()[0]}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(self.output_names[:1], {k: v for k, v in feed.items() if k in self.input_names})
        return np.asarray(out[0])

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "onnxruntime", "providers": self.session.get_providers(), "graph_optimization": self.spec.graph_optimization,
            "session_config": dict(SESSION_CONFIG),
        }

    def __enter__(self) -> OrtEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.session


def optimized_op_counts(path: Path, spec: EngineSpec) -> dict[str, Any]:
    """Let ONNX Runtime optimize the graph as it would at run time and count integer vs float MatMuls."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        so = session_options(spec)
        so.optimized_model_filepath = out
        ort.InferenceSession(str(path), so, providers=session_providers(spec), disabled_optimizers=disabled_optimizers(spec))
        graph = onnx.load(out, load_external_data=False).graph
        counts: dict[str, int] = {}
        for n in graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    integer = sum(v for k, v in counts.items() if k in INTEGER_MATMUL_OPS)
    floating = sum(v for k, v in counts.items() if k in FLOAT_MATMUL_OPS)
    return {
        "integer_matmuls": integer,
        "float_matmuls": floating,
        "integer_ops": {k: v for k, v in sorted(counts.items()) if k in INTEGER_MATMUL_OPS},
        "remaining_quantize_linear": counts.get("QuantizeLinear", 0),
        "remaining_dequantize_linear": counts.get("DequantizeLinear", 0),
    }


def _open(onnx_path: Path, recipe: Recipe, name: str, precision: str, *, threads: int | None = None, inference_precision: str | None = None) -> Engine:
    return OrtEngine(onnx_path, recipe.engine, name, threads=threads)


def _summary(onnx_path: Path, recipe: Recipe, *, inference_precision: str | None = None) -> dict[str, Any]:
    return optimized_op_counts(onnx_path, recipe.engine)


BACKENDS.register("onnxruntime", EngineBackend(open=_open, summary=_summary))
