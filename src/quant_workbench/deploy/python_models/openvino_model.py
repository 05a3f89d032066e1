"""Triton Python-backend model: one model file (ONNX or OpenVINO IR) run by OpenVINO's CPU plugin, with
every compile property the run used (Triton's own `openvino` backend has no f32 precision hint and is
not in every server build; this model runs wherever the Python backend and the `openvino` package are).

Dynamic batching hands `execute` several requests at once, each `[n_i, seq_i]` (ragged batching is
allowed, so `seq_i` may differ). They are right-padded to the longest sequence (pad id 0, attention
mask 0), run as one batch on the model's dynamic axes, and the outputs are split back per request;
outputs with a sequence axis are cut back to each request's own length (as onnxruntime_model.py does).

config.pbtxt parameters (string values): model_file, inference_num_threads, num_streams,
performance_hint (LATENCY | THROUGHPUT), inference_precision (f32 | bf16 | default = OpenVINO's own),
enable_cpu_pinning (0 | 1).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import openvino as ov
import triton_python_backend_utils as pb_utils

# Deliberately self-contained: deploy/triton.py copies this file alone into a Triton repository as
# `<model>/1/model.py`, and Triton's Python backend runs it where quant_workbench may not be installed.
# So the batching it shares with onnxruntime_model.py (pad_concat, the split back in `execute`) is
# repeated there rather than imported: a change to one is a change to both.


def pad_concat(arrays: list[np.ndarray], length: int) -> np.ndarray:
    """Right-pad `[n_i, seq_i]` int arrays with zeros to `length` and stack them along the batch axis."""
    return np.concatenate([np.pad(a, ((0, 0), (0, length - a.shape[1]))) if a.shape[1] < length else a for a in arrays])


def compile_properties(params: dict[str, str]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "NUM_STREAMS": int(params.get("num_streams", "1") or 1),
        "PERFORMANCE_HINT": params.get("performance_hint", "LATENCY").upper(),
        "ENABLE_CPU_PINNING": params.get("enable_cpu_pinning", "0") == "1",
    }
    threads = int(params.get("inference_num_threads", "0") or 0)
    if threads:
        props["INFERENCE_NUM_THREADS"] = threads
    precision = params.get("inference_precision", "f32")
    if precision != "default":
        props["INFERENCE_PRECISION_HINT"] = precision
    return props


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        core = ov.Core()
        self.model = core.read_model(os.path.join(folder, params.get("model_file", "model.onnx")))
        self.compiled = core.compile_model(self.model, "CPU", compile_properties(params))
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.model.inputs]
        self.output_names = [p.get_any_name() for p in self.model.outputs]
        # outputs whose axis 1 is the (dynamic) sequence axis are cut back per request
        self.seq_outputs = {
            p.get_any_name() for p in self.model.outputs if p.get_partial_shape().rank.get_length() > 2 and p.get_partial_shape()[1].is_dynamic
        }
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config.get("output", [])}

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names} for r in requests]
            rows = [f[self.input_names[0]].shape[0] for f in feeds]
            lengths = [f[self.input_names[0]].shape[1] for f in feeds]
            longest = max(lengths)
            batch = {n: pad_concat([f[n] for f in feeds], longest) for n in self.input_names}
            self.request.infer(batch)
            # copies: the request's output memory is reused by the next inference
            outputs = [np.array(self.request.get_tensor(name).data, copy=True) for name in self.output_names]
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
        self.request = None
        self.compiled = None
