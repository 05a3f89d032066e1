"""Every architecture, from a tiny random model: calibrate -> Q/DQ export -> per-call fidelity in ONNX
Runtime -> end-to-end agreement -> integer kernels, with attention matmuls and residual adds quantized
wherever the architecture supports them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_fixtures import TINY_SEQ, make_rows

from architectures.tiny_architectures import CONFIGS
from quant_workbench.config.recipe import EngineSpec, ModelSpec, QuantSpec
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.export.qdq import (
    export_onnx,
    find_linears,
    folded_calls,
    per_layer_fidelity,
    qdq_summary,
)
from quant_workbench.models.loading import load_model, to_torch, tokenize
from quant_workbench.quantize.apply import calibrate, prepare, set_scales
from quant_workbench.quantize.architectures import supported_model_types
from quant_workbench.quantize.plan import build_plan
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts

ENGINE = EngineSpec(provider="cpu", graph_optimization="all", threads=1)
TEXTS = [t for t, _ in make_rows()]
# Calls whose input is a constant of the weights, for every sequence length (DeBERTa-v2's projections
# of the relative-position embeddings, 2 per layer): the export folds them into their outputs.
FOLDED_CALLS = {"deberta-v2": 4}


def test_every_tested_architecture_is_registered() -> None:
    assert set(CONFIGS) <= set(supported_model_types())


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_calibrate_export_fidelity_integer_kernels(model_type: str, tiny_architecture: Callable[[str], Path], tmp_path: Path) -> None:
    loaded = load_model(ModelSpec(source=str(tiny_architecture(model_type)), max_seq_length=TINY_SEQ))
    arch = loaded.architecture
    spec = QuantSpec(
        quantize_attention_matmuls="attention_matmuls" not in arch.unsupported,
        quantize_residual_adds="residual_adds" not in arch.unsupported,
    )
    plan = build_plan(loaded.model.hf, spec)
    # the default targets take every Linear of every encoder block (each call site included)
    block_linears = [p for p in plan.points if p.kind == "linear" and p.role is not None]
    assert block_linears and all(p.enabled for p in block_linears)
    enabled = {k: sum(p.kind == k for p in plan.enabled) for k in ("linear", "attention_matmul", "residual_add")}
    assert enabled["attention_matmul"] > 0 or "attention_matmuls" in arch.unsupported
    assert enabled["residual_add"] > 0 or "residual_adds" in arch.unsupported

    prepare(loaded.model.hf, plan)

    def feed(texts: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(loaded.tokenizer, texts, TINY_SEQ, loaded.input_names))

    def loop(model: torch.nn.Module) -> None:
        for start in range(0, 32, 16):
            model(**feed(TEXTS[start : start + 16]))

    calibrators = calibrate(loaded.model, loop)
    set_scales(loaded.model, calibrators, "max")
    example = feed(TEXTS[200:208])
    path = export_onnx(loaded.model, tmp_path / f"{model_type}.qdq.onnx", example, loaded.input_names, loaded.output_name, 18)

    # the ONNX inputs are the ones the model reads
    assert qdq_summary(path)["inputs"] == loaded.input_names
    assert ("token_type_ids" in loaded.input_names) == arch.uses_token_type_ids(loaded.model.hf.config)

    # every quantized Linear call has its own Q/DQ MatMul, matching the fake-quant call
    fidelity = per_layer_fidelity(path, loaded.model, example, lambda blob: OrtEngine(blob, ENGINE))
    assert len(fidelity) == enabled["linear"]
    assert min(f.mean_cosine for f in fidelity.values()) > 0.9999, {m: f.mean_cosine for m, f in fidelity.items() if f.mean_cosine <= 0.9999}

    with torch.no_grad():
        ref = loaded.model(**example).numpy()
    with OrtEngine(path, ENGINE) as engine:
        got = engine({k: v.numpy() for k, v in example.items()})
    assert float(np.mean(cosine_rows(got, ref))) > 0.9999

    # a folded call has no MatMul left (nothing of it runs per inference), yet per-layer fidelity
    # above checked its stored output against the fake-quant call
    model = onnx.load(str(path), load_external_data=False)
    folded = folded_calls(model)
    linear_matmuls = [n.matmul for n in find_linears(model).values() if n.activation_qdq]
    assert len(folded) == FOLDED_CALLS.get(model_type, 0)
    assert len(linear_matmuls) + len(folded) == enabled["linear"]
    assert all(f.weight_module.endswith(".rel_embeddings") for f in folded)
    if folded:
        # the folded outputs hold for any sequence length, not only the traced one
        short = feed(TEXTS[210:214])
        short = {k: v[:, :5] for k, v in short.items()}
        with torch.no_grad(), OrtEngine(path, ENGINE) as engine:
            ref = loaded.model(**short).numpy()
            assert float(np.min(cosine_rows(engine({k: v.numpy() for k, v in short.items()}), ref))) > 0.9999

    # on ONNX Runtime every remaining MatMul of a quantized Linear (or attention matmul) is an integer
    # kernel, and the float ones are exactly the matmuls no quantizer covers
    counts = optimized_op_counts(path, ENGINE)
    assert counts["integer_matmuls"] == len(linear_matmuls) + enabled["attention_matmul"], counts
    graph_matmuls = sum(n.op_type in ("MatMul", "Gemm") for n in model.graph.node)
    assert counts["float_matmuls"] == graph_matmuls - len(linear_matmuls) - enabled["attention_matmul"], counts
