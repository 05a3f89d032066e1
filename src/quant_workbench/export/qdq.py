"""Float and Q/DQ ONNX export (torch.export-based exporter), graph finishing and fidelity checks.

Q/DQ layout (what TensorRT's explicit quantization and ONNX Runtime's QDQ fusions expect):
- activation: x -> QuantizeLinear(scale, int8 zero point 0) -> DequantizeLinear -> MatMul
- weight:     W (initializer) -> QuantizeLinear(per-channel, axis 0) -> DequantizeLinear -> Transpose -> MatMul
- every consumer gets its own Q/DQ pair, because ONNX Runtime only fuses a DQ -> MatMul whose Q/DQ
  are not shared (a shared pair, e.g. the input of Q, K and V, leaves those MatMuls in float).
- a quantized Linear call whose input is a constant of the weights (DeBERTa-v2's projections of the
  relative-position embeddings) is folded into an initializer `hf.<weight module>.folded_call_<k>`.
Nodes are renamed after their quantizers (`encoder.layer.0.attention.self.query.input_quantizer/Q`).
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from quant_workbench.config.vocabulary import HF_PREFIX
from quant_workbench.core.artifacts import atomic_path
from quant_workbench.core.comparator import Comparator, Comparison, layer_cosine
from quant_workbench.core.errors import ExportError
from quant_workbench.quantize.apply import set_export_mode
from quant_workbench.quantize.modules import QuantLinear

log = logging.getLogger(__name__)

# Part of every artifact key: bumped when the bytes of an export change for the same model and scales,
# so files written by an earlier layout are rebuilt, not reused (2: Q/DQ nodes named per quantizer).
EXPORT_LAYOUT = 2
# The dynamic axes the exported graphs are traced for; preflight rejects shapes outside them at load time.
EXPORT_MAX_BATCH = 4096
EXPORT_MIN_SEQ = 2
EXPORT_MAX_SEQ = 8192


# The exporter lowers each quantizer application to one node of this private domain, carrying the
# quantizer's name as an attribute; finish_graph expands it into QuantizeLinear/DequantizeLinear named
# after that quantizer. Lowering straight to QuantizeLinear would let the exporter's optimizer merge the
# pairs of two quantizers that read one tensor with equal scales (Q, K and V's inputs; a residual add's
# other operand), and name them after whichever it kept.
QDQ_DOMAIN = "qwb"
_QDQ_OP = "QDQ"
_schema_registered = False


def _register_qdq_schema() -> None:
    global _schema_registered
    if _schema_registered:
        return
    from onnx.defs import OpSchema

    if not onnx.defs.has(_QDQ_OP, QDQ_DOMAIN):
        onnx.defs.register_schema(
            OpSchema(
                _QDQ_OP, QDQ_DOMAIN, 1,
                doc="quant-workbench export placeholder: QuantizeLinear + DequantizeLinear of one named quantizer (expanded by finish_graph)",
                inputs=[OpSchema.FormalParameter("x", "T"), OpSchema.FormalParameter("scale", "T"), OpSchema.FormalParameter("zero_point", "Z")],
                outputs=[OpSchema.FormalParameter("y", "T")],
                type_constraints=[("T", ["tensor(float)"], ""), ("Z", ["tensor(int8)", "tensor(float8e4m3fn)"], "")],
                attributes=[OpSchema.Attribute("axis", OpSchema.AttrType.INT, ""), OpSchema.Attribute("quantizer", OpSchema.AttrType.STRING, "")],
            )
        )
    _schema_registered = True


def _qdq_translation(opset: int) -> Any:
    import onnxscript

    _register_qdq_schema()
    qwb = onnxscript.values.Opset(QDQ_DOMAIN, 1)

    def qdq(x: Any, scale: Any, zero_point: Any, axis: int, name: str = "") -> Any:
        return qwb.QDQ(x, scale, zero_point, axis=axis, quantizer=name)

    return qdq


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress lines and warnings that say nothing actionable to our users."""
    buf = _io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
        yield


def export_onnx(
    model: nn.Module,
    path: Path,
    example: dict[str, torch.Tensor],
    input_names: Sequence[str],
    output_name: str,
    opset: int,
) -> Path:
    """Export with dynamic batch and sequence axes; finish the graph; full checker; atomic write."""
    args = tuple(example[n] for n in input_names)
    dyn = {
        n: {0: torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH), 1: torch.export.Dim("sequence", min=EXPORT_MIN_SEQ, max=EXPORT_MAX_SEQ)}
        for n in input_names
    }
    set_export_mode(model, True)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_shapes=dyn,
                opset_version=opset,
                custom_translation_table={torch.ops.qwb.qdq.default: _qdq_translation(opset)},
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many error types; all mean "cannot export"
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export to {path.name} failed: {first}", "run with --debug for the exporter's full trace") from exc
    finally:
        set_export_mode(model, False)
    assert program is not None
    proto = program.model_proto
    proto = finish_graph(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported {path.name} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return path


def _graph_index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[tuple[onnx.NodeProto, int]]]]:
    """Tensor name -> the node producing it, and -> every (node, input index) reading it."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, i))
    return producers, consumers


def _unshare_transposed_weights(graph: onnx.GraphProto) -> None:
    """A weight with several call sites (ALBERT's shared layer, DeBERTa-v2's projections applied twice)
    reaches the exporter's CSE as one W -> Q -> DQ -> Transpose feeding several MatMuls; give every
    MatMul its own chain, as for activations (ONNX Runtime fuses only unshared DQ -> MatMul)."""
    producers, consumers = _graph_index(graph)
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.append(node)
        users = consumers.get(node.output[0], []) if node.op_type == "Transpose" else []
        dq = producers.get(node.input[0]) if users else None
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if len(users) <= 1 or q is None or q.op_type != "QuantizeLinear" or len(consumers.get(dq.output[0], [])) != 1:  # type: ignore[union-attr]
            continue
        assert dq is not None
        for k, (user, idx) in enumerate(users[1:], start=1):
            copies = []
            for original in (q, dq, node):
                c = onnx.NodeProto()
                c.CopyFrom(original)
                c.output[0] = f"{original.output[0]}__{k}"
                c.name = f"{original.name}__{k}"
                copies.append(c)
            copies[1].input[0] = copies[0].output[0]
            copies[2].input[0] = copies[1].output[0]
            user.input[idx] = copies[2].output[0]
            new_nodes.extend(copies)
    del graph.node[:]
    graph.node.extend(new_nodes)


def quantizer_plan_name(module_path: str) -> str:
    """A quantizer's name as the plan, --dry-run and the scales files give it: its module path inside
    the Hugging Face model (the exported wrapper holds that model under `hf.`)."""
    return module_path[len(HF_PREFIX) :] if module_path.startswith(HF_PREFIX) else module_path


def plan_names(amax: dict[str, float]) -> dict[str, float]:
    """Scales keyed by the plan's quantizer names (what the scales files and the Q/DQ node names use)."""
    return {quantizer_plan_name(name): value for name, value in amax.items()}


def _expand_named_qdq(model: onnx.ModelProto) -> None:
    """Each `qwb.QDQ` placeholder -> QuantizeLinear + DequantizeLinear named `<quantizer>/Q`, `/DQ`, reading
    the quantizer's own scale and zero point initializers (`<module path>._scale`, `._zero_point`; the
    exporter may have merged equal ones into another quantizer's)."""
    graph = model.graph
    if not any(n.domain == QDQ_DOMAIN for n in graph.node):
        return
    inits = {i.name: i for i in graph.initializer}
    added: list[onnx.TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain != QDQ_DOMAIN:
            new_nodes.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        path = attrs["quantizer"].decode() if isinstance(attrs["quantizer"], bytes) else str(attrs["quantizer"])
        if not path:
            raise ExportError("a quantizer was exported without its name", "this is an export bug; report it")
        axis = int(attrs.get("axis", -1))
        x, scale, zero_point = node.input
        own = []
        for tensor, suffix in ((scale, "._scale"), (zero_point, "._zero_point")):
            name = f"{path}{suffix}"
            if tensor != name and tensor in inits and name not in inits:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[tensor])
                copy.name = name
                inits[name] = copy
                added.append(copy)
            own.append(name if name in inits else tensor)
        kw: dict[str, Any] = {"axis": axis} if axis >= 0 else {}
        plan_name = quantizer_plan_name(path)
        q_out = f"{node.output[0]}__q"
        new_nodes.append(onnx.helper.make_node("QuantizeLinear", [x, *own], [q_out], name=f"{plan_name}/Q", **kw))
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_out, *own], list(node.output), name=f"{plan_name}/DQ", **kw))
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(added)
    used = {x for n in graph.node for x in n.input} | _subgraph_references(graph)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_opsets = [o for o in model.opset_import if o.domain != QDQ_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept_opsets)


def check_unique_node_names(graph: onnx.GraphProto, what: str) -> None:
    """ONNX Runtime refuses a graph in which two nodes share a name."""
    seen: set[str] = set()
    for node in graph.node:
        if node.name and node.name in seen:
            raise ExportError(f"{what} has two nodes named '{node.name}'", "this is an export bug; report it")
        seen.add(node.name)


def finish_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Expand the named Q/DQ placeholders, unshare Q/DQ pairs per consumer, fold the quantized Linear calls
    that read only constants, fix metadata for byte determinism."""
    graph = model.graph
    _expand_named_qdq(model)
    _unshare_transposed_weights(graph)
    producers, consumers = _graph_index(graph)
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != "DequantizeLinear":
            continue
        users = consumers.get(node.output[0], [])
        q = producers.get(node.input[0])
        if len(users) <= 1 or q is None or q.op_type != "QuantizeLinear":
            continue
        for k, (user, idx) in enumerate(users[1:], start=1):
            q2 = onnx.NodeProto()
            q2.CopyFrom(q)
            q2.output[0] = f"{q.output[0]}__{k}"
            dq2 = onnx.NodeProto()
            dq2.CopyFrom(node)
            dq2.input[0] = q2.output[0]
            dq2.output[0] = f"{node.output[0]}__{k}"
            user.input[idx] = dq2.output[0]
            q2.name, dq2.name = f"{q.name}__{k}", f"{node.name}__{k}"
            new_nodes.extend([q2, dq2])
    # Topological order: the copies were appended right after their DQ, whose inputs precede it.
    del graph.node[:]
    graph.node.extend(new_nodes)
    _fold_constant_calls(model)
    check_unique_node_names(graph, "the exported graph")
    _drop_source_locations(model)
    model.producer_name = "quant-workbench"
    return model


# ONNX Runtime cannot fold a quantized call on constants itself: its constant folding keeps every
# DequantizeLinear (they mark the QDQ groups its fusions need), and the call's static input shape lets
# MatMulAddFusion turn the MatMul + bias into a float Gemm before the QDQ fusions run. So the projection
# would run in float on every inference although its result never changes; folding it at export makes
# it cost nothing at run time, on every engine.
FOLDED_CALL = ".folded_call_"
# ops whose output is not a function of their inputs
_NOT_CONSTANT_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class FoldedCall:
    """A quantized Linear call computed at export: its output is the initializer `initializer`."""

    weight_module: str  # the call site (a module holding the weight) the output belongs to
    initializer: str


def folded_calls(model: onnx.ModelProto) -> list[FoldedCall]:
    return [
        FoldedCall(i.name[len(HF_PREFIX) : i.name.rindex(FOLDED_CALL)], i.name)
        for i in model.graph.initializer
        if i.name.startswith(HF_PREFIX) and FOLDED_CALL in i.name
    ]


def _subgraph_references(graph: onnx.GraphProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies (outer-scope values are read there without an input edge)."""
    names: set[str] = set()

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            names.update(node.input)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)

    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                visit(sub)
    return names


def input_dependent_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors that depend on a graph input (the exporter writes nodes in topological order)."""
    dynamic = {i.name for i in graph.input}
    for node in graph.node:
        has_body = any(attr.HasField("g") or len(attr.graphs) for attr in node.attribute)
        if has_body or node.op_type in _NOT_CONSTANT_OPS or any(x in dynamic for x in node.input):
            dynamic.update(node.output)
    return dynamic


def _evaluate_constants(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Values of tensors computed from initializers only, by ONNX Runtime's kernels unoptimized (the
    Q/DQ semantics every engine follows; ONNX's reference evaluator lacks opset 18's DequantizeLinear)."""
    import onnxruntime as ort

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    needed: set[str] = set()
    stack = list(names)
    while stack:
        t = stack.pop()
        if t in needed or not t:
            continue
        needed.add(t)
        node = producers.get(t)
        if node is not None:
            stack.extend(node.input)
    nodes = [n for n in graph.node if any(o in needed for o in n.output)]
    typed = {v.name: v for v in graph.value_info}
    sub = onnx.helper.make_graph(
        nodes,
        "constants",
        [],
        [typed[n] if n in typed else onnx.helper.make_empty_tensor_value_info(n) for n in names],
        [inits[t] for t in sorted(needed) if t in inits],
    )
    sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import), functions=list(model.functions), ir_version=model.ir_version)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(sub_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    values = session.run(list(names), {})
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def _fold_constant_calls(model: onnx.ModelProto) -> None:
    """Replace every quantized Linear call whose output does not depend on the graph inputs by its value."""
    graph = model.graph
    dynamic = input_dependent_tensors(graph)
    kept = {o.name for o in graph.output} | _subgraph_references(graph)
    producers = {o: n for n in graph.node for o in n.output}
    calls = [
        # the call site's own name when the graph tells it (find_linears), else the weight's module
        (site if "#" not in site else nodes.weight_module, nodes)
        for site, nodes in find_linears(model).items()
        if nodes.activation_qdq and nodes.matmul.op_type == "MatMul" and nodes.output_tensor not in dynamic and nodes.output_tensor not in kept
    ]
    if not calls:
        return
    bias: dict[str, str] = {}
    for _, nodes in calls:
        if nodes.output_tensor != nodes.matmul.output[0]:
            add = producers[nodes.output_tensor]
            bias[nodes.output_tensor] = next(x for x in add.input if x != nodes.matmul.output[0])
    values = _evaluate_constants(model, sorted({x for _, nodes in calls for x in nodes.matmul.input[:2]} | set(bias.values())))
    numbered: dict[str, int] = {}
    for f in folded_calls(model):
        numbered[f.weight_module] = numbered.get(f.weight_module, 0) + 1
    renamed: dict[str, str] = {}
    for owner, nodes in calls:
        a, w = (values[x].astype(np.float64) for x in nodes.matmul.input[:2])
        # in float64 so the stored value does not depend on this machine's float32 GEMM summation order
        y = np.matmul(a, w)
        if nodes.output_tensor in bias:
            y = y + values[bias[nodes.output_tensor]].astype(np.float64)
        k = numbered.get(owner, 0)
        numbered[owner] = k + 1
        name = f"{HF_PREFIX}{owner}{FOLDED_CALL}{k}"
        graph.initializer.append(onnx.numpy_helper.from_array(y.astype(np.float32), name))
        renamed[nodes.output_tensor] = name
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x in renamed:
                node.input[i] = renamed[x]
    _drop_unused(graph, list(renamed), kept)


def _drop_unused(graph: onnx.GraphProto, seeds: Sequence[str], kept: set[str]) -> None:
    """Remove the nodes and initializers that computed only `seeds` (which nothing reads any more)."""
    uses: dict[str, int] = {name: 1 for name in kept}
    for node in graph.node:
        for x in node.input:
            uses[x] = uses.get(x, 0) + 1
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    inits = {i.name for i in graph.initializer}
    dead_nodes: set[int] = set()
    dead_inits: set[str] = set()
    stack = list(seeds)
    while stack:
        t = stack.pop()
        if uses.get(t, 0) > 0:
            continue
        if t in producer:
            i = producer[t]
            node = graph.node[i]
            if i in dead_nodes or any(uses.get(o, 0) > 0 for o in node.output):
                continue
            dead_nodes.add(i)
            for x in node.input:
                uses[x] -= 1
                stack.append(x)
        elif t in inits:
            dead_inits.add(t)
    kept_nodes = [n for i, n in enumerate(graph.node) if i not in dead_nodes]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_inits = [i for i in graph.initializer if i.name not in dead_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    present = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer} | {i.name for i in graph.input}
    kept_info = [v for v in graph.value_info if v.name in present]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)


# The exporter records the Python stack trace of every node (absolute paths of this machine's
# site-packages): the same recipe exported from another install would differ byte for byte, and
# the file would tell who reads it where the model was built. The module namespace is kept.
_SOURCE_LOCATION_KEYS = ("pkg.torch.onnx.stack_trace",)


def _drop_source_locations(model: onnx.ModelProto) -> None:
    def clean(nodes: Any) -> None:
        for node in nodes:
            kept = [p for p in node.metadata_props if p.key not in _SOURCE_LOCATION_KEYS]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attr in node.attribute:  # nodes inside If/Loop bodies
                if attr.g is not None and len(attr.g.node):
                    clean(attr.g.node)
                for g in attr.graphs:
                    clean(g.node)

    clean(model.graph.node)
    for fn in model.functions:
        clean(fn.node)


# ---------------------------------------------------------------------------------------------
# inspection helpers


def qdq_summary(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    zp_types = sorted({onnx.TensorProto.DataType.Name(inits[n.input[2]].data_type) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits})
    axes = sorted({next((a.i for a in n.attribute if a.name == "axis"), 1) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 1 and n.input[1] in inits and len(inits[n.input[1]].dims) == 1})
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "matmul": ops.get("MatMul", 0) + ops.get("Gemm", 0),
        "zero_point_types": zp_types,
        "per_channel_axes": axes,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "weight_bytes": _weight_bytes(model),
    }


def _weight_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer bytes as stored (float weights + Q/DQ) and as a deployed engine would hold them:
    a weight feeding a QuantizeLinear takes 1 byte per element (int8 or fp8) instead of 4."""
    total = 0
    quantized = 0
    fed_to_q = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        size = n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += size
        if init.name in fed_to_q and init.data_type == onnx.TensorProto.FLOAT:
            quantized += size - n
    return {"stored": total, "deployed": total - quantized}


# per_layer_fidelity's floor: one Linear call's Q/DQ subgraph against the fake-quant call's output, the whole
# output read as one vector (core/comparator.py layer_cosine)
LAYER_MIN_COSINE = 0.9999


@dataclass
class LinearNodes:
    """The ONNX nodes of one quantized Linear call, found through its named weight initializer."""

    matmul: onnx.NodeProto
    input_tensor: str  # the float activation entering the input quantizer
    output_tensor: str  # after the bias Add when there is one
    activation_qdq: list[onnx.NodeProto]
    weight_qdq: list[onnx.NodeProto]
    # the module the weight initializer is named after; call sites of one shared weight have the same
    weight_module: str = ""


def _weight_chains(tensor: str, consumers: dict[str, list[onnx.NodeProto]], chain: list[onnx.NodeProto]) -> Iterator[tuple[list[onnx.NodeProto], onnx.NodeProto, str]]:
    """(W -> Q -> DQ -> Transpose nodes, the MatMul, the tensor entering it) for every use of a weight."""
    users = consumers.get(tensor, [])
    for user in users:
        if user.op_type in ("MatMul", "Gemm"):
            yield chain, user, tensor
        elif user.op_type in ("QuantizeLinear", "DequantizeLinear", "Transpose") and len(chain) < 3 and user.input[0] == tensor:
            yield from _weight_chains(user.output[0], consumers, [*chain, user])


def _call_site(call: LinearNodes) -> str | None:
    """The Linear call a Q/DQ MatMul belongs to, from its activation quantizer's node name."""
    if not call.activation_qdq:
        return None
    name = call.activation_qdq[0].name.split("__", 1)[0]
    suffix = ".input_quantizer/Q"
    return name[: -len(suffix)] if name.endswith(suffix) else None


def find_linears(model: onnx.ModelProto) -> dict[str, LinearNodes]:
    """Every quantized Linear call of the graph, by module name.

    A call is named after its activation quantizer's Q node (named by the export after the quantizer,
    so each call site of a shared weight has its own name). A call without one is named by its weight
    initializer, `<weight module>#<k>` when the weight has several calls. Folded calls (`folded_calls`)
    have no MatMul but still count as calls of their weight, so the names of the others do not change
    with folding.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    folded: dict[str, int] = {}
    for f in folded_calls(model):
        folded[f.weight_module] = folded.get(f.weight_module, 0) + 1
    found: dict[str, LinearNodes] = {}
    for init in graph.initializer:
        if not (init.name.startswith(HF_PREFIX) and init.name.endswith(".weight")):
            continue
        module = init.name[len(HF_PREFIX) : -len(".weight")]
        calls: list[LinearNodes] = []
        for chain, matmul, tensor in _weight_chains(init.name, consumers, []):
            if not any(n.op_type == "DequantizeLinear" for n in chain):
                continue
            calls.append(_linear_call(matmul, tensor, chain, producers, consumers, module))
        sites = [_call_site(c) for c in calls]
        for k, (call, site) in enumerate(zip(calls, sites, strict=True)):
            if site is not None and sites.count(site) == 1 and site not in found:
                found[site] = call
            elif len(calls) == 1 and module not in folded:
                found[module] = call
            else:
                found[f"{module}#{k}"] = call
    return found


def _linear_call(
    matmul: onnx.NodeProto,
    tensor: str,
    chain: list[onnx.NodeProto],
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    module: str,
) -> LinearNodes:
    act = matmul.input[0] if matmul.input[1] == tensor else matmul.input[1]
    act_nodes: list[onnx.NodeProto] = []
    dq = producers.get(act)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            act_nodes = [q, dq]
            act = q.input[0]
            # SmoothQuant's explicit input scale: x -> Mul(1/s) -> Q -> DQ; the layer starts at x.
            mul = producers.get(act)
            if mul is not None and mul.op_type == "Mul":
                scale_in = [i for i in mul.input if i.endswith(".smooth_scale")]
                if len(scale_in) == 1:
                    act = next(i for i in mul.input if i != scale_in[0])
    out = matmul.output[0]
    bias_users = [c for c in consumers.get(out, []) if c.op_type == "Add"]
    if len(consumers.get(out, [])) == 1 and bias_users:
        out = bias_users[0].output[0]
    return LinearNodes(matmul, act, out, act_nodes, [n for n in chain if n.op_type != "Transpose"], module)


def per_layer_fidelity(
    qdq_path: Path,
    fake_quant_model: nn.Module,
    example: dict[str, torch.Tensor],
    session_factory: Any,
) -> dict[str, Comparison]:
    """Each quantized Linear call of the Q/DQ ONNX, run alone in the engine on the PyTorch call's real
    input, against the fake-quant PyTorch call's output (layer_cosine, floor LAYER_MIN_COSINE); by call, in
    the order the model makes them.

    Call sites sharing a weight (one module per call) each need a Q/DQ MatMul of their own: a call
    whose name the graph does not tell (equal scales merged by the exporter) takes the best-matching
    unclaimed MatMul of its weight, so a missing call is still an error. A call folded at export (its
    input a constant of the weights) is checked as the engine will use it: its stored output against
    the fake-quant call's.
    """
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    weight_of: dict[str, int] = {}
    hooks = []
    for name, mod in fake_quant_model.named_modules():
        if isinstance(mod, QuantLinear) and mod.input_quantizer.enabled:
            key = name[len(HF_PREFIX) :] if name.startswith(HF_PREFIX) else name
            weight_of[key] = id(mod.weight)

            def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, key: str = key) -> None:
                captured[key] = (inp[0].detach().clone(), out.detach().clone())

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            fake_quant_model(**example)
    finally:
        for h in hooks:
            h.remove()
    model = onnx.load(str(qdq_path))
    extractor = onnx.utils.Extractor(model)
    linears = {k: v for k, v in find_linears(model).items() if v.activation_qdq}
    folded = {f.initializer: f for f in folded_calls(model)}
    inits = {i.name: i for i in model.graph.initializer if i.name in folded}

    def measure(module: str, nodes: LinearNodes) -> Comparison:
        x, out = captured[module]
        sub = extractor.extract_model([nodes.input_tensor], [nodes.output_tensor])
        engine = session_factory(sub.SerializeToString())
        return Comparator(out.numpy(), {nodes.input_tensor: x.numpy()}).check(engine, layer_cosine(LAYER_MIN_COSINE))

    def measure_folded(module: str, initializer: str) -> Comparison:
        # raises on another shape: the stored output of another call of the weight
        return Comparator(captured[module][1].numpy()).check(onnx.numpy_helper.to_array(inits[initializer]), layer_cosine(LAYER_MIN_COSINE))

    results: dict[str, Comparison] = {}
    claimed = {m for m in captured if m in linears}
    for module in captured:
        if module in linears:
            results[module] = measure(module, linears[module])
    for module in captured:
        if module in results:
            continue
        free = [k for k, v in linears.items() if k not in claimed and _parameter_id(fake_quant_model, v.weight_module) == weight_of[module]]
        free_folded = [k for k, f in folded.items() if k not in claimed and _parameter_id(fake_quant_model, f.weight_module) == weight_of[module]]
        tried: dict[str, Comparison] = {}
        for k in free + free_folded:
            try:
                tried[k] = measure(module, linears[k]) if k in linears else measure_folded(module, k)
            except Exception:  # noqa: BLE001 - another call of the weight, fed a different shape: not this call
                continue
        if not tried:
            raise ExportError(f"quantized layer {module} has no Q/DQ MatMul nor folded output in {qdq_path.name}")
        best = max(tried, key=lambda k: tried[k].mean_cosine)
        claimed.add(best)
        results[module] = tried[best]
    return {m: results[m] for m in captured}


def _parameter_id(model: nn.Module, module: str) -> int | None:
    """Identity of the weight an initializer was named after (`hf.` prefix or not, as the root has it)."""
    for name in (f"{HF_PREFIX}{module}.weight", f"{module}.weight"):
        try:
            return id(model.get_parameter(name))
        except AttributeError:
            continue
    return None


def end_to_end_allowance(quantization_noise: float, min_cosine: float) -> float:
    """How far (1 - mean cosine) the Q/DQ ONNX may be from the fake-quant model end to end:
    `1 - min_cosine`, or half the fake-quant model's own distance from float when that is larger."""
    return max(1.0 - min_cosine, 0.5 * quantization_noise)
