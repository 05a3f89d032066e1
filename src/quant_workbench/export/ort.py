"""Engine-aware export for ONNX Runtime CPU: the fused float baseline and INT8 graphs on ORT's fastest kernels.

The Q/DQ export (export/qdq.py) keeps the layout TensorRT's explicit quantization needs: S8 symmetric
activations, per-channel S8 weights. ONNX Runtime's x86 integer GEMMs want U8 activations with S8
weights (S8 x S8 falls to a slow path: 0.09-0.30x of FP32 measured on this project's machine), and its
transformer fusions (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu) only match
the graph the TorchScript exporter writes. So for an ONNX Runtime CPU target the workbench builds:

- `fused float`: TorchScript export of the model in float + ONNX Runtime's transformer optimizer; this
  is the float baseline every speed-up is measured against (the standard tools' fastest float path).
- `lowered INT8`: that fused graph with every quantized Linear replaced by ONNX Runtime's integer
  kernels, using the variant's own calibrated scales (the `_scale` buffers the Q/DQ export writes):
  the fused Attention becomes QAttention (its Q/K/V projection in U8 x S8), every other MatMul becomes
  QuantizeLinear (U8, zero point 128: the same grid as S8 zero point 0, shifted) + MatMulIntegerToFloat.
- `U8 Q/DQ`: where a variant quantizes what the fused ops hide (attention matmuls, residual adds) or the
  lowering cannot map a Linear, the Q/DQ graph with activation zero points moved to U8 128.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from quant_workbench.core.artifacts import atomic_path
from quant_workbench.core.errors import ExportError
from quant_workbench.export.qdq import check_unique_node_names
from quant_workbench.quantize.modules import ATTENTION_FUNCTION, QuantLinear

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
# The transformer optimizer's fused operators, in the order the report lists them.
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")
# Integer forms of fused float ops: the fusion is kept, the op runs quantized.
QUANTIZED_FORMS = {"QAttention": "Attention", "QEmbedLayerNormalization": "EmbedLayerNormalization"}
U8_ZERO_POINT = "qwb.u8_zero_point"


class LoweringError(ExportError):
    """The fused graph could not carry a variant's quantization: the caller falls back to U8 Q/DQ."""


@dataclass
class FusedGraphInfo:
    fused_ops: dict[str, int]
    num_heads: int
    hidden_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"fused_ops": self.fused_ops, "num_heads": self.num_heads, "hidden_size": self.hidden_size}


@dataclass
class LoweringInfo:
    graph: str  # "fused-int8" | "qdq-u8"
    quantized_attention: int = 0  # fused Attention -> QAttention
    quantized_matmuls: int = 0  # MatMul -> MatMulIntegerToFloat
    left_float: list[str] = field(default_factory=list)  # quantized Linears the engine graph runs in float, and why
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "quantized_attention": self.quantized_attention,
            "quantized_matmuls": self.quantized_matmuls,
            "left_float": self.left_float,
            "notes": self.notes,
        }


def attention_shape(hf: nn.Module) -> tuple[int, int]:
    cfg = hf.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
    if not heads or not hidden:
        raise ExportError(f"cannot read the attention heads / hidden size of {type(hf).__name__}'s config")
    return int(heads), int(hidden)


@contextlib.contextmanager
def _float_eager(model: nn.Module, hf: nn.Module) -> Iterator[None]:
    """Quantizers off and transformers' own eager attention: the graph shape ORT's fusions recognise."""
    from quant_workbench.quantize.smoothquant import float_mode

    setter = getattr(hf, "set_attn_implementation", None)
    config: Any = hf.config
    before = getattr(config, "_attn_implementation", None)
    try:
        if callable(setter):
            setter("eager")
        else:  # transformers < 4.48 reads the config at forward time
            config._attn_implementation = "eager"
        with float_mode(model):
            yield
    finally:
        restore = before or ATTENTION_FUNCTION
        if callable(setter):
            setter(restore)
        else:
            config._attn_implementation = restore


def export_fused_float(
    model: nn.Module,
    hf: nn.Module,
    path: Path,
    example: dict[str, torch.Tensor],
    input_names: Sequence[str],
    output_name: str,
    opset: int = 17,
    *,
    skip_layer_norm: bool = False,
) -> FusedGraphInfo:
    """TorchScript export (quantizers off) + ONNX Runtime's transformer optimizer, written atomically.

    `skip_layer_norm=False` (the workbench's engine graphs) keeps residual Add + LayerNormalization
    apart: ONNX Runtime 1.32's CPU SkipLayerNormalization kernel measured slower than the two ops it
    replaces (the session must not fuse them back either: runtime/onnxruntime.py CPU_DISABLED_OPTIMIZERS;
    `bench/ort_graphs.py` measures both forms). `True` is the standard tools' default, used for the
    reference rows.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = attention_shape(hf)
    args = tuple(example[n] for n in input_names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes[output_name] = {0: "batch"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "float_torchscript.onnx")
        try:
            with _float_eager(model, hf), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, args, raw, dynamo=False, input_names=list(input_names), output_names=[output_name],
                    dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                )
        except Exception as exc:  # the TorchScript exporter raises many error types; all mean "cannot export"
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"TorchScript export for ONNX Runtime's fusions failed: {first}", "set engine.int8_graph: qdq to skip the fused graphs") from exc
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        opts = FusionOptions("bert")
        opts.enable_skip_layer_norm = skip_layer_norm
        optimized = optimize_model(raw, model_type="bert", num_heads=heads, hidden_size=hidden, optimization_options=opts, opt_level=0, use_gpu=False)
        proto: onnx.ModelProto = optimized.model
    stats = {k: 0 for k in FUSED_OPS}
    for node in proto.graph.node:
        if node.op_type in stats:
            stats[node.op_type] += 1
    # The optimizer's shape inference loses the output's static dims (Triton configs are checked against them).
    with torch.no_grad(), _float_eager(model, hf):
        out_shape = model(*args).shape
    for out in proto.graph.output:
        if out.name == output_name:
            dims = out.type.tensor_type.shape.dim
            del dims[:]
            dims.add().dim_param = "batch"
            for d in out_shape[1:]:
                dims.add().dim_value = int(d)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):  # the optimizer adds it only on save_model_to_file
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    proto.producer_name = "quant-workbench"
    with atomic_path(path) as tmp_path:
        onnx.save_model(proto, str(tmp_path))
    return FusedGraphInfo({k: v for k, v in stats.items() if v}, heads, hidden)


# ---------------------------------------------------------------------------------------------
# lowering the fused float graph to ONNX Runtime's integer kernels


def _quant_linears(hf: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in hf.named_modules() if isinstance(m, QuantLinear)}


def _weight_key(w: np.ndarray) -> bytes:
    return np.ascontiguousarray(w, dtype=np.float32).tobytes()


def _enabled(m: QuantLinear) -> bool:
    return bool(m.input_quantizer.enabled and m.weight_quantizer.enabled)


def _int8_weight(m: QuantLinear) -> tuple[np.ndarray, np.ndarray]:
    """[in, out] S8 weight and its per-column (or scalar) scale, exactly as the Q/DQ export quantizes it."""
    w = m.weight.detach().to(torch.float32).numpy()  # [out, in]
    scale = m.weight_quantizer._scale.detach().to(torch.float32).numpy()
    per_channel = scale.ndim == 1 and scale.size == w.shape[0]
    s = scale.reshape(-1, 1) if per_channel else scale.reshape(1, 1)
    q = np.clip(np.rint(w / s), -128, 127).astype(np.int8)  # np.rint: half to even, like QuantizeLinear
    return np.ascontiguousarray(q.T), (scale.astype(np.float32) if per_channel else np.asarray(float(scale.reshape(-1)[0]), np.float32))


def _input_scale(m: QuantLinear) -> float:
    return float(m.input_quantizer._scale.detach().reshape(-1)[0])


class _CallSites:
    """Which of the model's Linear calls each weight-reading node of a fused graph computes.

    Nodes are matched to Linears by weight content (renaming by the exporter or the optimizer cannot
    mis-assign a scale). Calls of one shared weight (ALBERT's layer applied N times, DeBERTa-v2's
    projections also applied to the relative-position embeddings) all read the same weight: they are
    told apart by whether their input depends on the model's inputs (the architecture names the call
    sites that read a constant) and then by order (graph order follows the order of the applications,
    as each application reads the previous one's output). A weight whose graph uses do not pair up
    one to one with its calls is ambiguous: nothing is assigned to it.
    """

    def __init__(self, model: onnx.ModelProto, hf: nn.Module) -> None:
        from quant_workbench.export.qdq import input_dependent_tensors
        from quant_workbench.quantize.architectures import architecture_of

        self.linears = _quant_linears(hf)
        arch = architecture_of(hf)
        calls: dict[tuple[bytes, bool], list[str]] = {}
        for name, m in self.linears.items():
            calls.setdefault((_weight_key(m.weight.detach().to(torch.float32).numpy().T), arch.is_constant_call_site(name)), []).append(name)
        self.weights = {w for w, _ in calls}
        inits = {i.name: i for i in model.graph.initializer}
        dynamic = input_dependent_tensors(model.graph)
        uses: dict[tuple[bytes, bool], list[tuple[int, int]]] = {}
        for i, node in enumerate(model.graph.node):
            for part, w in enumerate(_weight_parts(node, inits)):
                key = _weight_key(w)
                if key in self.weights:
                    constant = node.op_type == "MatMul" and node.input[0] not in dynamic
                    uses.setdefault((key, constant), []).append((i, part))
        self.site: dict[tuple[int, int], str] = {}
        self.ambiguous: dict[str, str] = {}  # call -> why no graph node could be assigned to it
        for group in set(calls) | set(uses):
            names, found = calls.get(group, []), uses.get(group, [])
            if len(names) == len(found):
                self.site.update(zip(found, names, strict=True))
                continue
            for name in names:
                self.ambiguous[name] = f"its weight is read by {len(found)} graph node(s) of this kind for {len(names)} call(s) in the model"

    def of(self, index: int, part: int = 0) -> str | None:
        return self.site.get((index, part))


def _weight_parts(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[np.ndarray]:
    """[in, out] weights a MatMul reads from an initializer, or the Q, K and V parts of a fused Attention's."""
    if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
        w = numpy_helper.to_array(inits[node.input[1]])
        return [w] if w.ndim == 2 else []
    if node.op_type == "Attention" and node.domain == MS_DOMAIN and len(node.input) > 1 and node.input[1] in inits:
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 2 or w.shape[1] % 3:
            return []
        h = w.shape[1] // 3
        return [w[:, i * h : (i + 1) * h] for i in range(3)]
    return []


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.added: list[onnx.TensorProto] = []

    def array(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return numpy_helper.to_array(init) if init is not None else None

    def add(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            t = numpy_helper.from_array(value, name)
            self.inits[name] = t
            self.added.append(t)
        return name


def lower_int8(fused_path: Path, hf: nn.Module, out_path: Path | None) -> LoweringInfo:
    """Replace every quantized Linear of the fused float graph by an ORT integer kernel (U8 x S8).

    `out_path=None` checks and describes the lowering without writing (the cached file is current)."""
    model = onnx.load(str(fused_path))
    g = _Graph(model)
    sites = _CallSites(model, hf)
    linears = sites.linears
    wanted = {name for name, m in linears.items() if _enabled(m)}
    unmatched = sorted(n for n in wanted if n in sites.ambiguous)
    if unmatched:
        raise LoweringError(
            f"{len(unmatched)} quantized Linear call(s) cannot be told apart in the fused graph (e.g. {unmatched[0]}: "
            f"{sites.ambiguous[unmatched[0]]})"
        )
    done: set[str] = set()
    info = LoweringInfo("fused-int8")
    zp = g.add(U8_ZERO_POINT, np.asarray(128, np.uint8))
    new_nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and node.input[1] in g.inits:
            name = sites.of(index)
            if name is None or name not in wanted:
                new_nodes.append(node)
                continue
            m = linears[name]
            qw, ws = _int8_weight(m)
            a_scale = g.add(f"{name}.input_quantizer._scale", np.asarray(_input_scale(m), np.float32))
            w_q = g.add(f"{name}.weight_int8", qw)
            w_s = g.add(f"{name}.weight_quantizer._scale", ws)
            a_q = f"{node.input[0]}__u8__{name}"
            new_nodes.append(helper.make_node("QuantizeLinear", [node.input[0], a_scale, zp], [a_q], name=f"{name}.input_quantizer/Q"))
            new_nodes.append(
                helper.make_node("MatMulIntegerToFloat", [a_q, w_q, a_scale, w_s, zp], list(node.output), name=f"{name}/MatMulIntegerToFloat", domain=MS_DOMAIN)
            )
            info.quantized_matmuls += 1
            done.add(name)
        elif node.op_type == "Attention" and node.domain == MS_DOMAIN:
            lowered = _lower_attention(node, g, linears, [sites.of(index, p) for p in range(3)], wanted, zp, info)
            if lowered is None:
                new_nodes.append(node)
            else:
                new_nodes.extend(lowered[0])
                done.update(lowered[1])
        else:
            new_nodes.append(node)
    missing = sorted(wanted - done)
    if missing:
        # Every Linear the plan quantizes must run as an integer kernel, or the engine graph is not the
        # variant that was calibrated and checked.
        raise LoweringError(
            f"{len(missing)} quantized Linear(s) have no integer kernel in the fused graph (e.g. {missing[0]}): {'; '.join(info.left_float[:3]) or 'weights not found'}"
        )
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(g.added)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    try:
        check_unique_node_names(model.graph, "the fused INT8 graph")
    except ExportError as exc:
        raise LoweringError(exc.message) from exc
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            onnx.save_model(model, str(tmp))
    return info


def _lower_attention(
    node: onnx.NodeProto,
    g: _Graph,
    linears: dict[str, QuantLinear],
    names: list[str | None],
    wanted: set[str],
    zp: str,
    info: LoweringInfo,
) -> tuple[list[onnx.NodeProto], list[str]] | None:
    """Attention(x, W_qkv, b_qkv, mask) -> QuantizeLinear(x) -> QAttention with per-column S8 weights.
    `names`: the Q, K and V Linear calls the fused projection computes (_CallSites)."""
    w = g.array(node.input[1])
    if w is None or w.ndim != 2 or w.shape[1] % 3:
        info.notes.append(f"{node.name}: fused QKV weight not found; attention projection left as ONNX Runtime fused it")
        return None
    hidden = w.shape[1] // 3
    if any(n is None for n in names):
        info.notes.append(f"{node.name}: Q/K/V weights do not match the model's Linears")
        return None
    qkv = [n for n in names if n is not None]
    enabled = [n in wanted for n in qkv]
    if not any(enabled):
        return None
    if not all(enabled):
        info.left_float += [f"{n}: Q, K and V share one fused projection, and not all three are quantized" for n, e in zip(qkv, enabled, strict=True) if e]
        return None
    scales = [_input_scale(linears[n]) for n in qkv]
    if max(scales) - min(scales) > 1e-6 * max(scales):
        info.left_float += [f"{n}: Q/K/V input scales differ ({', '.join(f'{s:.4g}' for s in scales)})" for n in qkv]
        return None
    weights = [_int8_weight(linears[n]) for n in qkv]
    qw = np.concatenate([q for q, _ in weights], axis=1)
    per_channel = all(s.ndim == 1 for _, s in weights)
    if per_channel:
        ws = np.concatenate([s for _, s in weights]).astype(np.float32)
    elif len({float(s) for _, s in weights}) == 1:
        ws = np.asarray(float(weights[0][1]), np.float32)
    else:  # per-tensor Q, K and V scales cannot share one per-tensor QAttention scale: go per column
        ws = np.concatenate([np.full(hidden, float(s), np.float32) for _, s in weights])
    base = qkv[0].rsplit(".", 1)[0]
    a_scale = g.add(f"{base}.qkv.input_quantizer._scale", np.asarray(scales[0], np.float32))
    w_q = g.add(f"{base}.qkv.weight_int8", qw)
    w_s = g.add(f"{base}.qkv.weight_quantizer._scale", ws)
    w_zp = g.add(f"{base}.qkv.weight_zero_point", np.zeros(ws.shape, np.int8))
    a_q = f"{node.input[0]}__u8__{base}.qkv"
    mask = node.input[3] if len(node.input) > 3 else ""
    inputs = [a_q, w_q, node.input[2], a_scale, w_s, mask, zp, w_zp]
    if len(node.input) > 4 and node.input[4]:
        info.notes.append(f"{node.name}: has a past-state input; left as ONNX Runtime fused it")
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("num_heads", "unidirectional")}
    q = helper.make_node("QuantizeLinear", [node.input[0], a_scale, zp], [a_q], name=f"{base}.qkv.input_quantizer/Q")
    qa = helper.make_node("QAttention", inputs, list(node.output[:1]), name=f"{base}/QAttention", domain=MS_DOMAIN, **attrs)
    info.quantized_attention += 1
    return [q, qa], qkv


# ---------------------------------------------------------------------------------------------
# U8 Q/DQ: the TensorRT-layout graph with activation zero points moved from S8 0 to U8 128


def qdq_to_u8_activations(qdq_path: Path, out_path: Path) -> int:
    """Same scales, same grid: activation Q/DQ pairs get a U8 zero point of 128; weights stay S8."""
    model = onnx.load(str(qdq_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    changed = 0
    moved: set[str] = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] in inits:
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.INT8 or len(zp.dims) != 0 or int(numpy_helper.to_array(zp)) != 0:
            continue  # FP8 and non-symmetric zero points are not ours to move
        node.input[2] = U8_ZERO_POINT
        moved.add(node.output[0])
        for dq in consumers.get(node.output[0], []):
            if dq.op_type == "DequantizeLinear" and len(dq.input) > 2:
                dq.input[2] = U8_ZERO_POINT
        changed += 1
    # The exporter recorded the int8 type of every Q output; stale entries would fail ORT's type check.
    kept_info = [v for v in graph.value_info if v.name not in moved]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    if changed:
        graph.initializer.append(numpy_helper.from_array(np.asarray(128, np.uint8), U8_ZERO_POINT))
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))
    return changed


def map_linears(fused_path: Path, hf: nn.Module) -> dict[str, list[str]]:
    """Fused-graph node name -> the model's Linear calls it computes (found by weight content, _CallSites)."""
    model = onnx.load(str(fused_path))
    sites = _CallSites(model, hf)
    found: dict[str, list[str]] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and sites.of(index) is not None:
            found[node.name] = [str(sites.of(index))]
        elif node.op_type == "Attention" and node.domain == MS_DOMAIN:
            names = [sites.of(index, p) for p in range(3)]
            if all(n is not None for n in names):
                found[node.name] = [n for n in names if n is not None]
    return found


def quantized_linears(hf: nn.Module) -> set[str]:
    return {name for name, m in _quant_linears(hf).items() if _enabled(m)}


def fused_op_counts(path: Path) -> dict[str, int]:
    """Transformer fusions present in a graph; QAttention counts as Attention (same fusion, integer)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        op = QUANTIZED_FORMS.get(node.op_type, node.op_type)
        if op in FUSED_OPS:
            counts[op] = counts.get(op, 0) + 1
    return counts
