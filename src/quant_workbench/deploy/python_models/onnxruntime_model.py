"""Triton Python-backend model: one ONNX file run by ONNX Runtime on CPU (for servers without the ONNX
Runtime backend).

Dynamic batching hands `execute` several requests at once, each `[n_i, seq_i]` (ragged batching is
allowed, so `seq_i` may differ). They are right-padded to the longest sequence (pad id 0, attention
mask 0), run as one batch, and the outputs are split back per request; outputs with a sequence axis
are cut back to each request's own length. Padding never changes a row's result: every padded
position is masked out of attention and pooling.

config.pbtxt parameters (string values): onnx_file, intra_op_threads, graph_optimization,
disabled_optimizers (comma-separated).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Deliberately self-contained: deploy/triton.py copies this file alone into a Triton repository as
# `<model>/1/model.py`, and Triton's Python backend runs it where quant_workbench may not be installed.
# So the batching it shares with openvino_model.py (pad_concat, the split back in `execute`) is
# repeated there rather than imported: a change to one is a change to both.

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def pad_concat(arrays: list[np.ndarray], length: int) -> np.ndarray:
    """Right-pad `[n_i, seq_i]` int arrays with zeros to `length` and stack them along the batch axis."""
    return np.concatenate([np.pad(a, ((0, 0), (0, length - a.shape[1]))) if a.shape[1] < length else a for a in arrays])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.graph_optimization_level = _LEVELS[params.get("graph_optimization", "all")]
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        disabled = [x for x in params.get("disabled_optimizers", "").split(",") if x]
        self.session = ort.InferenceSession(
            os.path.join(folder, params.get("onnx_file", "model.onnx")),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled,
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # outputs whose axis 1 is the (dynamic) sequence axis are cut back per request
        self.seq_outputs = {
            o.name for o in self.session.get_outputs() if len(o.shape) > 2 and not isinstance(o.shape[1], int)
        }
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config.get("output", [])
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            feeds = [
                {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names} for r in requests
            ]
            rows = [f[self.input_names[0]].shape[0] for f in feeds]
            lengths = [f[self.input_names[0]].shape[1] for f in feeds]
            longest = max(lengths)
            batch = {n: pad_concat([f[n] for f in feeds], longest) for n in self.input_names}
            outputs = self.session.run(self.output_names, batch)
        except Exception as exc:  # every request of this batch gets the error, the model stays up
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for n, length in zip(rows, lengths, strict=True):
            tensors = []
            for name, value in zip(self.output_names, outputs, strict=True):
                part = value[start : start + n]
                if name in self.seq_outputs:
                    part = part[:, :length]
                dtype = self.output_dtypes.get(name, part.dtype)
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(part, dtype=dtype)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self) -> None:
        self.session = None
