"""The evaluate stage's mechanics on fake engines whose correctness is known: length-bucketed batches that
come back in split order, blocks with looks, and the early stop of a variant shown inferior at the margin."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tiny_fixtures import FILLER, LABEL_WORDS, LABELS

import quant_workbench.measure.accuracy as evaluate_mod
from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.core.results import VariantResult
from quant_workbench.data.splits import Splits, TextSet
from quant_workbench.measure.accuracy import evaluate_variants, length_buckets

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
NOISE = {"bad": FILLER[0], "good": FILLER[1]}  # a variant answers wrong on texts holding its noise word


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


def _texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts of varied length: one label word (the class) plus filler; 10 % hold `bad`'s noise word, 0.2 % `good`'s."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 3
        words = [LABEL_WORDS[LABELS[label]][0]] + rng.sample(FILLER[2:], rng.randint(1, 20))
        if i % 10 == 3:
            words.append(NOISE["bad"])
        if i % 500 == 7:
            words.append(NOISE["good"])
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64)


class FakeEngine:
    """Logits from the tokens: the class whose label word is present; wrong (next class) when the noise word is."""

    def __init__(self, name: str, tokenizer: Any) -> None:
        self.name = name
        self.label_ids = [tokenizer.convert_tokens_to_ids(LABEL_WORDS[lab][0]) for lab in LABELS]
        self.noise_id = tokenizer.convert_tokens_to_ids(NOISE[name]) if name in NOISE else None
        self.calls = 0

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        ids = feed["input_ids"]
        cls = np.stack([(ids == t).any(axis=1) for t in self.label_ids], axis=1).argmax(axis=1)
        if self.noise_id is not None:
            cls = np.where((ids == self.noise_id).any(axis=1), (cls + 1) % 3, cls)
        return np.eye(3, dtype=np.float32)[cls]

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake"}

    def __exit__(self, *exc: object) -> None:
        pass


def test_length_buckets_sort_by_length_and_return_split_order(tokenizer: Any) -> None:
    texts, _ = _texts(300)
    buckets = length_buckets(tokenizer, texts, NAMES, max_length=64, batch_size=16)
    lengths = [int(f["attention_mask"].sum(axis=1).max()) for f in buckets.feeds]
    assert lengths == sorted(lengths)  # shortest batches first
    in_order = sum(int(tokenizer(texts[i : i + 16], padding="longest", return_tensors="np")["input_ids"].size) for i in range(0, 300, 16))
    assert buckets.padded_tokens < 0.8 * in_order and buckets.real_tokens <= buckets.padded_tokens
    # outputs come back in the split's own order: row i of the result is text i's
    out = buckets.run(lambda feed: feed["attention_mask"].sum(axis=1, keepdims=True).astype(np.float32))
    expected = [len(tokenizer(t, truncation=True, max_length=64)["input_ids"]) for t in texts]
    assert out[:, 0].tolist() == expected


def _recipe(**selection: Any) -> Any:
    return recipe_from_dict({
        "name": "t", "model": {"source": "m", "task": "sequence-classification", "max_seq_length": 64},
        "data": {"files": ["x.csv"]}, "quantization": {"calibration": {"batch_size": 32}}, "selection": selection,
        "benchmark": {"seq_lengths": [64]},
    })


def _evaluate(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch, n: int = 1000, extra: tuple[VariantResult, ...] = (), **selection: Any
) -> tuple[Any, list[VariantResult], dict[str, FakeEngine]]:
    texts, labels = _texts(n)
    empty = TextSet([], np.zeros(0, dtype=np.int64))
    splits = Splits(empty, empty, TextSet(texts, labels), list(LABELS), "fp")
    engines: dict[str, FakeEngine] = {}

    def open_engine(path: Path, recipe: Any, name: str, precision: str, **kw: Any) -> FakeEngine:
        engines[name] = FakeEngine(name, tokenizer)
        return engines[name]

    monkeypatch.setattr(evaluate_mod, "EngineFromOnnx", open_engine)
    variants = [VariantResult("float", "float32"), VariantResult("bad", "int8"), VariantResult("good", "int8"), *extra]
    loaded = SimpleNamespace(tokenizer=tokenizer, input_names=NAMES)
    ev = evaluate_variants(_recipe(**selection), loaded, splits, variants, {v.name: Path(v.name) for v in variants}, progress=False, say=lambda s: None)  # type: ignore[arg-type]
    return ev, variants, engines


def test_a_variant_shown_inferior_at_the_margin_stops_and_the_others_score_the_whole_split(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ev, variants, _ = _evaluate(tokenizer, monkeypatch)
    by = {v.name: v for v in variants}
    # float is right everywhere: only if every output came back in split order
    assert by["float"].metrics["accuracy"] == 1.0 and len(ev.correct["float"]) == 1000
    # bad: wrong on 10 % (Δ -10 pt) -> inferior at the first look, after 200 of 1,000 examples
    assert list(ev.stopped) == ["bad"] and ev.stopped["bad"]["look"] == 1 and ev.stopped["bad"]["n"] == 200
    assert ev.stopped["bad"]["statistic"] <= ev.stopped["bad"]["boundary"] < 0
    assert len(ev.correct["bad"]) == 200 and by["bad"].intervals["n"] == 200
    assert by["bad"].intervals["vs_float"]["n"] == 200 and by["bad"].metrics["accuracy"] == pytest.approx(0.9)
    # good: wrong on 0.2 % (-0.2 pt, within the 0.5 pt margin) -> still in contention, scores everything
    assert len(ev.correct["good"]) == 1000 and by["good"].intervals["vs_float"]["n"] == 1000
    rec = ev.record
    assert rec["looks"] == 5 and len(rec["boundaries"]) == 4 and rec["texts_saved"] == 800
    assert rec["variants"]["bad"]["stopped"]["look"] == 1 and rec["variants"]["good"]["stopped"] is None
    assert rec["batches"]["padded_tokens"] >= rec["batches"]["real_tokens"] > 0
    assert "Pocock" in rec["procedure"]


def test_one_look_scores_every_variant_on_the_whole_split(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ev, variants, _ = _evaluate(tokenizer, monkeypatch, looks=1)
    assert ev.stopped == {} and all(len(c) == 1000 for c in ev.correct.values())
    assert next(v for v in variants if v.name == "bad").metrics["accuracy"] == pytest.approx(0.9)


def test_a_wider_margin_keeps_the_variant_in_contention(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ev, _, _ = _evaluate(tokenizer, monkeypatch, accuracy_margin=0.2)  # -10 pt is within a 20 pt margin
    assert ev.stopped == {}


def test_a_reference_row_stops_once_it_is_shown_within_the_margin_but_a_candidate_does_not(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # "ref" answers like float everywhere (a standard tool's float graph): nothing is left to decide about it once
    # its non-inferiority is shown (look 2 of 5: 2,000 examples with no discordant pair); "same" is a candidate
    # with the same answers, still in contention, so it scores the whole split
    ev, variants, _ = _evaluate(tokenizer, monkeypatch, n=5000, extra=(VariantResult("ref", "float32", reference=True), VariantResult("same", "int8")))
    assert ev.stopped["ref"]["resolved"] == "non-inferior" and ev.stopped["ref"]["look"] == 2 and ev.stopped["ref"]["n"] == 2000
    assert ev.stopped["ref"]["statistic"] >= ev.stopped["ref"]["boundary"] > 0
    assert len(ev.correct["same"]) == 5000 and "same" not in ev.stopped
    assert next(v for v in variants if v.name == "ref").intervals["n"] == 2000
    assert ev.stopped["bad"]["resolved"] == "inferior"


def test_a_float_row_on_another_engine_stops_once_resolved_and_counts_as_a_float_baseline(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # "float-bf16@openvino" (the float model on another engine or precision) is never a candidate: once shown within
    # the margin it stops like a reference row, and the selection still counts it as a float baseline for speed
    from quant_workbench.selection import float_baselines

    extra = (VariantResult("float-bf16@openvino", "float32", runtime="openvino", inference_precision="bf16"), VariantResult("same", "int8"))
    ev, variants, _ = _evaluate(tokenizer, monkeypatch, n=5000, extra=extra)
    assert ev.stopped["float-bf16@openvino"]["resolved"] == "non-inferior" and ev.stopped["float-bf16@openvino"]["n"] == 2000
    assert "same" not in ev.stopped
    names, decisions = float_baselines(variants, ev.correct, 0.005, stopped=ev.stopped)
    assert names == ["float", "float-bf16@openvino"] and [d.status for d in decisions] == ["acceptable"]
