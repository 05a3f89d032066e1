"""Tensor signatures and dtype maps shared by the engines and the deployment targets.

Neutral ground: runtime/tensorrt.py reads a plan's inputs/outputs and deploy/triton.py writes and checks
Triton configs with the same types, and neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# onnx.TensorProto element type -> Triton data type
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}

# TensorRT DataType name -> Triton data type
TRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT8": "TYPE_INT8", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8"}


@dataclass(frozen=True)
class TensorSig:
    """One input or output as Triton sees it: dims exclude the batch axis; -1 is a dynamic axis."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}
