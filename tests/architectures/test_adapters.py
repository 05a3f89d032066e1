"""What each architecture adapter declares: true sequence limits, call sites addressable by
targets/ignore, features it cannot support rejected by name, SmoothQuant groups that keep the float
model exact, and the search's op-kind roles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_fixtures import TINY_MAX_POSITIONS, TINY_SEQ, make_rows

from quant_workbench.config.recipe import ModelSpec, QuantSpec, SmoothQuantSpec
from quant_workbench.core.errors import ModelError, SelectionError
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.quantize.apply import prepare
from quant_workbench.quantize.architectures import architecture_for
from quant_workbench.quantize.modules import QuantLinear
from quant_workbench.quantize.plan import build_plan
from quant_workbench.quantize.smoothquant import (
    ChannelAmaxCollector,
    float_mode,
    smooth_groups,
    smoothquant_applied,
)
from quant_workbench.search.groups import build_groups

TEXTS = [t for t, _ in make_rows()]


def _load(folder: Path, max_seq_length: int = TINY_SEQ) -> LoadedModel:
    return load_model(ModelSpec(source=str(folder), max_seq_length=max_seq_length))


def _feed(loaded: LoadedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    return to_torch(tokenize(loaded.tokenizer, texts, TINY_SEQ, loaded.input_names))


@pytest.mark.parametrize(("model_type", "limit"), [("bert", TINY_MAX_POSITIONS), ("roberta", TINY_MAX_POSITIONS + 1), ("mpnet", TINY_MAX_POSITIONS)])
def test_sequence_limit_is_what_the_position_embeddings_hold(model_type: str, limit: int, tiny_architecture: Callable[[str], Path]) -> None:
    folder = tiny_architecture(model_type)
    loaded = _load(folder, max_seq_length=limit)
    hf = loaded.model.hf
    ids = torch.full((1, limit), 7, dtype=torch.long)
    with torch.no_grad():
        hf(input_ids=ids, attention_mask=torch.ones_like(ids))  # the limit itself runs
        with pytest.raises((IndexError, RuntimeError)):  # past the position embeddings
            longer = torch.full((1, limit + 1), 7, dtype=torch.long)
            hf(input_ids=longer, attention_mask=torch.ones_like(longer))
    with pytest.raises(ModelError, match=rf"limit of {limit} tokens"):
        _load(folder, max_seq_length=limit + 1)


@pytest.mark.parametrize(
    ("model_type", "spec", "words"),
    [
        ("deberta-v2", QuantSpec(quantize_attention_matmuls=True), ("quantize_attention_matmuls", "DeBERTa-v2")),
        ("deberta-v2", QuantSpec(smoothquant=SmoothQuantSpec(alpha=0.5)), ("smoothquant", "DeBERTa-v2")),
        ("albert", QuantSpec(compare=["int8", "int8-smoothquant"], smoothquant=SmoothQuantSpec(alpha=0.5)), ("smoothquant", "ALBERT")),
    ],
)
def test_unsupported_feature_is_an_error_naming_architecture_and_feature(
    model_type: str, spec: QuantSpec, words: tuple[str, ...], tiny_architecture: Callable[[str], Path]
) -> None:
    loaded = _load(tiny_architecture(model_type))
    with pytest.raises(SelectionError) as info:
        build_plan(loaded.model.hf, spec)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_unknown_architecture_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"model_type 'gpt2'.*bert.*deberta-v2"):
        architecture_for(SimpleNamespace(model_type="gpt2"))


def test_albert_applications_are_call_sites_named_encoder_layer_n(tiny_architecture: Callable[[str], Path]) -> None:
    loaded = _load(tiny_architecture("albert"))
    plan = build_plan(loaded.model.hf, QuantSpec(ignore=["encoder.layer.0"]))
    assert not any("albert_layer_groups" in p.module for p in plan.points)  # the shared layer no longer runs
    by_name = {p.module: p for p in plan.points}
    assert not by_name["encoder.layer.0.attention.query"].enabled
    assert by_name["encoder.layer.0.attention.query"].reason == "ignored by 'encoder.layer.0'"
    assert by_name["encoder.layer.1.attention.query"].enabled and by_name["encoder.layer.2.ffn_output"].enabled
    prepare(loaded.model.hf, plan)
    first = loaded.model.hf.get_submodule("encoder.layer.0.attention.query")
    second = loaded.model.hf.get_submodule("encoder.layer.1.attention.query")
    assert isinstance(first, QuantLinear) and isinstance(second, QuantLinear)
    assert first.weight is second.weight  # one shared weight (QAT trains it once) ...
    assert first.input_quantizer is not second.input_quantizer  # ... one quantizer per call
    assert not first.input_quantizer.enabled and second.input_quantizer.enabled


def test_albert_call_sites_compute_the_original_model(tiny_architecture: Callable[[str], Path]) -> None:
    from transformers import AutoModel

    folder = tiny_architecture("albert")
    loaded = _load(folder)
    original = AutoModel.from_pretrained(str(folder)).eval()
    feed = _feed(loaded, TEXTS[:4])
    with torch.no_grad():
        got = loaded.model.hf(**feed).last_hidden_state
        want = original(**feed).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the rewritten forwards (residual adds, attention matmuls) compute the same model in float
    spec = QuantSpec(quantize_attention_matmuls=True, quantize_residual_adds=True)
    prepare(loaded.model.hf, build_plan(loaded.model.hf, spec))
    assert isinstance(loaded.model.hf.get_submodule("encoder.layer.2.attention.residual_add"), torch.nn.Module)
    with torch.no_grad(), float_mode(loaded.model):
        prepared = loaded.model.hf(**feed).last_hidden_state
    torch.testing.assert_close(prepared, want, rtol=1e-5, atol=1e-5)


def test_deberta_relative_position_calls_are_addressable(tiny_architecture: Callable[[str], Path]) -> None:
    from transformers import AutoModel

    folder = tiny_architecture("deberta-v2")
    loaded = _load(folder)
    plan = build_plan(loaded.model.hf, QuantSpec(ignore=[r"re:.*\.query_proj\.rel_embeddings"]))
    by_name = {p.module: p for p in plan.points}
    assert by_name["encoder.layer.0.attention.self.query_proj"].enabled
    assert not by_name["encoder.layer.0.attention.self.query_proj.rel_embeddings"].enabled
    assert by_name["encoder.layer.0.attention.self.key_proj.rel_embeddings"].enabled
    # ignoring the module keeps both of its calls float
    whole = build_plan(loaded.model.hf, QuantSpec(ignore=["encoder.layer.1.attention.self.key_proj"]))
    assert [p.module for p in whole.points if not p.enabled and "layer.1" in p.module and p.kind == "linear"] == [
        "encoder.layer.1.attention.self.key_proj",
        "encoder.layer.1.attention.self.key_proj.rel_embeddings",
    ]
    prepare(loaded.model.hf, plan)
    proj = loaded.model.hf.get_submodule("encoder.layer.0.attention.self.query_proj")
    site = proj.get_submodule("rel_embeddings")
    assert isinstance(proj, QuantLinear) and isinstance(site, QuantLinear) and site.weight is proj.weight
    original = AutoModel.from_pretrained(str(folder)).eval()
    feed = _feed(loaded, TEXTS[:4])
    with torch.no_grad(), float_mode(loaded.model):
        got = loaded.model.hf(**feed).last_hidden_state
    with torch.no_grad():
        want = original(**feed).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
def test_smoothquant_groups_keep_the_float_model_exact(model_type: str, tiny_architecture: Callable[[str], Path]) -> None:
    loaded = _load(tiny_architecture(model_type))
    prepare(loaded.model.hf, build_plan(loaded.model.hf, QuantSpec()))
    feed = _feed(loaded, TEXTS[:8])
    with torch.no_grad(), float_mode(loaded.model), ChannelAmaxCollector(loaded.model) as collector:
        ref = loaded.model(**feed)
    groups = smooth_groups(loaded.model)
    # per layer: the attention output folded into V, Q/K/V and FFN-in with an explicit input scale
    assert [g.how for g in groups].count("fold") == 2 and len(groups) == 6
    with torch.no_grad(), smoothquant_applied(loaded.model, collector.amax, 0.8), float_mode(loaded.model):
        smoothed = loaded.model(**feed)
    torch.testing.assert_close(smoothed, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["distilbert", "mpnet", "albert", "deberta-v2"])
def test_search_op_kind_groups_come_from_the_architecture(model_type: str, tiny_architecture: Callable[[str], Path]) -> None:
    loaded = _load(tiny_architecture(model_type))
    plan = build_plan(loaded.model.hf, QuantSpec())
    kinds = {g.name: g.modules for g in build_groups(plan, kinds=("kind",))}
    assert set(kinds) == {"attention-qkv", "attention-output", "ffn-in", "ffn-out"}
    n_layers = 3 if model_type == "albert" else 2
    extra_calls = 2 if model_type == "deberta-v2" else 0  # query_proj / key_proj on the relative positions
    assert len(kinds["attention-qkv"]) == n_layers * (3 + extra_calls)
    assert len(kinds["ffn-out"]) == n_layers


def test_trained_head_labels_must_match_the_data(tiny_classifier_dir: Path) -> None:
    spec = ModelSpec(source=str(tiny_classifier_dir), task="sequence-classification", max_seq_length=TINY_SEQ)
    trained = ["negative", "neutral", "positive"]  # the fixture's id2label
    assert load_model(spec, num_labels=3, label_names=trained).num_labels == 3
    with pytest.raises(ModelError, match=r"\['negative', 'neutral', 'positive'\].*\['positive', 'negative', 'neutral'\]") as info:
        load_model(spec, num_labels=3, label_names=["positive", "negative", "neutral"])
    assert "set data.label_names: ['negative', 'neutral', 'positive']" in str(info.value)
    with pytest.raises(ModelError, match="use data labelled with the model's classes"):
        load_model(spec, num_labels=2, label_names=["spam", "ham"])


def test_smoothquant_on_an_architecture_without_it_fails_whoever_asks(tiny_architecture: Callable[[str], Path]) -> None:
    """The search applies SmoothQuant per trial without a QuantSpec: it must not silently smooth nothing."""
    loaded = _load(tiny_architecture("deberta-v2"))
    prepare(loaded.model.hf, build_plan(loaded.model.hf, QuantSpec()))
    with pytest.raises(SelectionError, match="not supported for the DeBERTa-v2 architecture"):
        smooth_groups(loaded.model)
