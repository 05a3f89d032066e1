"""Reference rows: what the standard tools give on the same model and data, built the way users build them.

- `ref:ort-float`: TorchScript ONNX export + ONNX Runtime's transformer optimizer with its default
  fusions (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu).
- `ref:ort-dynamic`: that graph through `onnxruntime.quantization.quantize_dynamic` (per-channel S8
  weights; its default operator list, so the embedding LayerNorm is quantized too).
- `ref:ort-static`: `quantize_static` on the workbench's float.onnx (MinMax calibration on the
  calibration split, U8 activations, per-channel S8 weights, MatMul/Gemm only, Q/DQ format).

They are scored and timed like every variant, in the same loop, and never selected: the report says
whether the selected variant beats them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx

from quant_workbench.core.artifacts import atomic_path
from quant_workbench.core.registry import Registry

if TYPE_CHECKING:
    from quant_workbench.export.graphs import EngineGraphs, ReferenceInputs

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "ref:"


class BuildReference(Protocol):
    """Writes the file a reference row runs (EngineGraphs.references calls it)."""

    def __call__(self, graphs: EngineGraphs, inputs: ReferenceInputs, path: Path) -> None: ...


# reference name (config/catalog.py REFERENCES) -> its builder; filled by export/graphs.py (ONNX Runtime's rows)
# and export/openvino.py (OpenVINO's)
REFERENCE_BUILDERS: Registry[BuildReference] = Registry("reference")


def reference_name(kind: str) -> str:
    return f"{REFERENCE_PREFIX}{kind}"


@contextlib.contextmanager
def _root_errors_only() -> Iterator[None]:
    """The standard tools log "consider pre-processing" through the root logger on every call. Only for
    the call: a level left at ERROR would silence every later warning of the run (issue 20)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(before)


def quantize_dynamic_onnx(fused_path: Path, out_path: Path, *, per_channel: bool = True, nodes: list[str] | None = None, op_types: list[str] | None = None) -> None:
    """`quantize_dynamic` with S8 weights; written atomically (the tool writes wherever it is told)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _root_errors_only(), atomic_path(out_path) as tmp:
        quantize_dynamic(
            str(fused_path), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes or [], op_types_to_quantize=op_types or [],
            # the fused graph's com.microsoft ops defeat ONNX shape inference; their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


class _Feeds:
    """onnxruntime.quantization.CalibrationDataReader over already tokenized batches."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_static_onnx(float_path: Path, out_path: Path, feeds: Iterable[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Feeds, CalibrationDataReader):  # the tool type-checks its reader's base class
        pass

    with _root_errors_only(), atomic_path(out_path) as tmp:
        quantize_static(
            str(float_path), str(tmp), Reader(feeds), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
