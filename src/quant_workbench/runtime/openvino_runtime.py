"""OpenVINO CPU plugin helpers with no dependency on the rest of the package (stdlib, numpy, openvino).

Kept standalone because it also runs as a child process: `python openvino_runtime.py MODEL PROPS_JSON`
compiles the model with those properties, runs one small inference and prints the runtime-graph
summary as JSON. runtime/openvino.py runs that once per (file, properties, OpenVINO version) before
compiling in the run's own process, so a compile-time crash (OpenVINO is not validated on every CPU;
a segfault cannot be caught in-process) fails that row with a message instead of killing the run.

`runtime_summary(compiled, model)` reads what actually runs from `compiled.get_runtime_model()`: each
executed layer's type, runtime precision (`runtimePrecision`) and the original layers fused into it
(`originalLayersNames`), so the report can say what runs in INT8, what stays float (bf16 / f32) and
which fusions happened (QK^T-softmax-PV fused into one attention block).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any

# Layers that hold no work of their own (constants, graph inputs and outputs).
PASSIVE_LAYERS = {"Const", "Input", "Output", "Parameter", "Result"}
# Layers doing matrix products; in i8/u8 they are the INT8 kernels.
MATMUL_LAYERS = {"FullyConnected", "MatMul", "Convolution", "Deconvolution", "GroupConvolution"}
# Layer types OpenVINO gives a fused attention block (QK^T, softmax and PV in one kernel); a snippets
# `Subgraph` is one when the original layers it fuses include a Softmax.
ATTENTION_LAYERS = {"ScaledDotProductAttention", "SDPA", "MHA"}
INT8_PRECISIONS = {"i8", "u8"}
# Data movement and shape arithmetic: counted, but not "work that stays float".
MOVEMENT_LAYERS = {"Reorder", "Reshape", "Transpose", "ShapeOf", "Concatenation", "StridedSlice", "Broadcast", "Range", "Convert", "Gather", "GatherND", "Squeeze", "Unsqueeze"}


def compile_properties(*, threads: int, streams: int, hint: str, inference_precision: str | None, pinning: bool) -> dict[str, Any]:
    """The properties every OpenVINO row is compiled with: nothing left to the plugin's defaults except the
    inference precision when a row asks for the default (None)."""
    props: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": int(streams),
        "PERFORMANCE_HINT": hint.upper(),
        "ENABLE_CPU_PINNING": bool(pinning),
    }
    if inference_precision is not None:
        props["INFERENCE_PRECISION_HINT"] = inference_precision
    return props


def _text(value: Any) -> str:
    return str(value.astype(str)) if hasattr(value, "astype") else str(value)


def runtime_summary(compiled: Any, model: Any | None = None) -> dict[str, Any]:
    """What the compiled model runs, counted from its runtime graph (plain data for report.json).

    `int8_layers`: layers computing in i8/u8 (data movement of integer tensors not counted);
    `int8_matmuls`: of those, matrix products; `int8_matmuls_int8_output`: INT8 matrix products that
    write INT8 (the next layer's quantize fused in, with whatever lay between, e.g. bias + GELU);
    `attention_blocks`: fused QK^T-softmax-PV blocks by precision; `float_matmuls` and `float_work`:
    what still computes in bf16 / f32, by layer type; `by_type`: every layer type by runtime precision.
    """
    original_types: dict[str, str] = {}
    if model is not None:
        original_types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()}
    by_type: dict[str, Counter[str]] = {}
    attention: Counter[str] = Counter()
    int8_layers = int8_matmuls = int8_out = 0
    float_matmuls: Counter[str] = Counter()
    float_work: dict[str, Counter[str]] = {}
    fused_activations: Counter[str] = Counter()
    layers = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = _text(info["layerType"]) if "layerType" in info else op.get_type_name()
        if kind in PASSIVE_LAYERS:
            continue
        layers += 1
        precision = _text(info["runtimePrecision"]) if "runtimePrecision" in info else "?"
        outputs = _text(info["outputPrecisions"]) if "outputPrecisions" in info else ""
        by_type.setdefault(kind, Counter())[precision] += 1
        fused = [n for n in (_text(info["originalLayersNames"]).split(",") if "originalLayersNames" in info else []) if n]
        softmax = any(original_types.get(n) == "Softmax" or "softmax" in n.lower() for n in fused)
        if kind in ATTENTION_LAYERS or (kind == "Subgraph" and softmax):
            attention[precision] += 1
            int8_layers += precision in INT8_PRECISIONS
        elif kind in MATMUL_LAYERS:
            if precision in INT8_PRECISIONS:
                int8_layers += 1
                int8_matmuls += 1
                int8_out += any(p in INT8_PRECISIONS for p in outputs.split(","))
            else:
                float_matmuls[precision] += 1
            # the exporters name activation nodes after the function (node_gelu ...); OpenVINO's ONNX
            # reader decomposes GELU, so its type no longer says so
            for act in ("gelu", "relu", "tanh", "sigmoid", "silu"):
                fused_activations[act] += any(act in n.lower() for n in fused)
        elif kind in MOVEMENT_LAYERS:
            continue
        elif precision in INT8_PRECISIONS:
            int8_layers += 1
        elif precision in ("f32", "bf16", "f16"):
            float_work.setdefault(precision, Counter())[kind] += 1
    return {
        "layers": layers,
        "int8_layers": int8_layers,
        "int8_matmuls": int8_matmuls,
        "int8_matmuls_int8_output": int8_out,
        "float_matmuls": dict(sorted(float_matmuls.items())),
        "attention_blocks": dict(sorted(attention.items())),
        "activations_fused_into_matmuls": {k: v for k, v in sorted(fused_activations.items()) if v},
        "float_work": {p: dict(sorted(c.items())) for p, c in sorted(float_work.items())},
        "by_type": {k: dict(sorted(v.items())) for k, v in sorted(by_type.items())},
    }


def _feed(model: Any, batch: int = 2, seq: int = 8) -> dict[str, Any]:
    """A small valid feed: token ids 1..seq, attention mask 1, token types 0 (the encoders' int64 inputs)."""
    import numpy as np

    feed = {}
    for port in model.inputs:
        name = port.get_any_name()
        if "mask" in name:
            feed[name] = np.ones((batch, seq), dtype=np.int64)
        elif "type" in name:
            feed[name] = np.zeros((batch, seq), dtype=np.int64)
        else:
            feed[name] = np.tile(np.arange(1, seq + 1, dtype=np.int64), (batch, 1))
    return feed


def check(path: str, props: dict[str, Any]) -> dict[str, Any]:
    """Read, compile and run the model once with `props`; the runtime summary and the applied precision."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", props)
    request = compiled.create_infer_request()
    request.infer(_feed(model))
    applied = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = str(getattr(applied, "get_type_name", lambda: applied)())
    return {
        "ok": True,
        "openvino": ov.__version__,
        "inference_precision": {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(name, name),
        "summary": runtime_summary(compiled, model),
    }


if __name__ == "__main__":  # the child process of runtime/openvino.py: one JSON line on stdout
    # run as a script, this folder is first on sys.path, and its openvino.py would shadow the package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    result = check(sys.argv[1], json.loads(sys.argv[2]))
    sys.stdout.write(json.dumps(result) + "\n")
