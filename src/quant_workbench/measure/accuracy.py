"""Task metrics: linear-probe accuracy for embeddings (MTEB classification protocol) and
accuracy / macro-F1 / agreement for classifiers; cosine similarity to the float outputs for both.
`evaluate_variants` is the run's evaluate stage: every variant through its engine on the same split,
in blocks of length-bucketed batches, with early stops for variants shown inferior at the margin."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from quant_workbench.config.recipe import Recipe, accuracy_margin_for
from quant_workbench.core.comparator import Runner, cosine_rows
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.core.results import FLOAT_PRECISIONS, VariantResult, accuracy_reference
from quant_workbench.data.splits import Splits, TextSet
from quant_workbench.measure.stats import (
    prediction_statistics,
    spending_boundaries,
    tango_statistic,
)
from quant_workbench.models.loading import LoadedModel, batches, tokenize
from quant_workbench.runtime import Engine, EngineFromOnnx


def run_outputs(
    runner: Runner,
    texts: TextSet,
    tokenizer: Any,
    input_names: Sequence[str],
    max_length: int,
    batch_size: int = 32,
    desc: str = "evaluate",
    progress: bool = True,
) -> np.ndarray:
    outs = []
    total = (len(texts) + batch_size - 1) // batch_size
    feeds = batches(tokenizer, texts.texts, batch_size, max_length, input_names)
    for feed in tqdm(feeds, total=total, desc=desc, disable=not progress, leave=False):
        outs.append(np.asarray(runner(feed), dtype=np.float32))
    return np.concatenate(outs, axis=0) if outs else np.zeros((0,), dtype=np.float32)


class LinearProbe:
    """Logistic regression on frozen float embeddings (MTEB's classification protocol).

    Trained once on the float model's embeddings of the probe split, then applied unchanged to each
    variant's embeddings of the evaluation split, so a drop measures what quantization did to the
    embedding space, not a re-fitted classifier.
    """

    def __init__(self, seed: int = 0, max_iter: int = 1000) -> None:
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(max_iter=max_iter, random_state=seed)

    def fit(self, embeddings: np.ndarray, labels: np.ndarray) -> LinearProbe:
        self.clf.fit(embeddings, labels)
        return self

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(self.clf.predict(embeddings))


def classification_metrics(pred: np.ndarray, labels: np.ndarray, float_pred: np.ndarray | None) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    out = {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, average="macro")),
    }
    if float_pred is not None:
        out["agreement"] = float((pred == float_pred).mean())
    return out


def fidelity_metrics(outputs: np.ndarray, float_outputs: np.ndarray) -> dict[str, float]:
    cos = cosine_rows(outputs, float_outputs)
    return {"cosine_to_float": float(cos.mean()), "min_cosine_to_float": float(cos.min())}


def score_embedding(
    probe: LinearProbe, embeddings: np.ndarray, labels: np.ndarray, float_embeddings: np.ndarray
) -> dict[str, float]:
    pred = probe.predict(embeddings)
    float_pred = probe.predict(float_embeddings)
    return {**classification_metrics(pred, labels, float_pred), **fidelity_metrics(embeddings, float_embeddings)}


def score_classification(logits: np.ndarray, labels: np.ndarray, float_logits: np.ndarray) -> dict[str, float]:
    pred = logits.argmax(-1)
    float_pred = float_logits.argmax(-1)
    return {**classification_metrics(pred, labels, float_pred), **fidelity_metrics(logits, float_logits)}


@dataclass
class Scorer:
    """How a split's outputs become predictions and metrics, the one way the run and the search's trials
    score: a linear probe on the float model's embeddings of the probe split (embedding models), else the
    argmax of the logits."""

    probe: LinearProbe | None = None

    @classmethod
    def fit(cls, recipe: Recipe, loaded: LoadedModel, splits: Splits, float_engine: Runner, progress: bool = False) -> Scorer:
        """For an embedding model, the probe trained on the float engine's embeddings of the probe split."""
        if recipe.model.task != "embedding":
            return cls()
        bs, maxlen = recipe.quantization.calibration.batch_size, recipe.model.max_seq_length
        probe_x = length_buckets(loaded.tokenizer, splits.probe, loaded.input_names, maxlen, bs).run(float_engine, "embed probe split", progress)
        return cls(LinearProbe(seed=recipe.seed).fit(probe_x, splits.probe.labels))

    def predict(self, out: np.ndarray) -> np.ndarray:
        return self.probe.predict(out) if self.probe is not None else out.argmax(-1)

    def metrics(self, out: np.ndarray, labels: np.ndarray, float_out: np.ndarray) -> dict[str, float]:
        if self.probe is not None:
            return score_embedding(self.probe, out, labels, float_out)
        return score_classification(out, labels, float_out)


@dataclass
class Buckets:
    """One split's texts tokenized once, in batches of similar length (little padding); `run` returns the
    outputs in the split's own order, so examples stay paired across variants."""

    order: np.ndarray  # split positions in the order the batches hold them (shortest first)
    feeds: list[dict[str, np.ndarray]]
    real_tokens: int
    padded_tokens: int

    def __len__(self) -> int:
        return int(self.order.size)

    def run(self, runner: Runner, desc: str = "evaluate", progress: bool = False) -> np.ndarray:
        outs = [np.asarray(runner(feed), dtype=np.float32) for feed in tqdm(self.feeds, desc=desc, disable=not progress, leave=False)]
        if not outs:
            return np.zeros((0,), dtype=np.float32)
        stacked = np.concatenate(outs, axis=0)
        back = np.empty_like(stacked)
        back[self.order] = stacked
        return back


def length_buckets(tokenizer: Any, texts: TextSet | Sequence[Any], input_names: Sequence[str], max_length: int, batch_size: int) -> Buckets:
    """Sort `texts` by token length and cut batches of `batch_size` (each padded to its own longest)."""
    items = list(texts.texts if isinstance(texts, TextSet) else texts)
    if not items:
        return Buckets(np.zeros(0, dtype=np.int64), [], 0, 0)
    if isinstance(items[0], tuple):
        enc = tokenizer([t[0] for t in items], [t[1] for t in items], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(items, truncation=True, max_length=max_length)
    lengths = np.asarray([len(ids) for ids in enc["input_ids"]], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    feeds = [tokenize(tokenizer, [items[i] for i in order[s : s + batch_size]], max_length, input_names) for s in range(0, len(items), batch_size)]
    padded = sum(int(f["input_ids"].size) for f in feeds)
    return Buckets(order, feeds, int(lengths.sum()), padded)


SEQUENTIAL_PROCEDURE = (
    "the evaluation split is scored in {looks} equal blocks, every variant on the same blocks in the same order; after "
    "each block but the last, a variant whose Tango score statistic of Δ vs {baseline} at -margin is at or below minus "
    "the look's boundary is shown inferior at the margin and stops being scored. Boundaries: Lan-DeMets Pocock-type alpha "
    "spending of one-sided level/2 = {half:g} over the looks (exact recursive integration), so the chance of stopping a "
    "variant that is within the margin is at most {half:g}. A candidate's non-inferiority is only claimed on the full split "
    "with the fixed-sample test, which stopping others for futility can only make more conservative; a row never "
    "selected (a reference row, the float model on another engine or precision) also stops once its statistic reaches plus the boundary (non-inferior, same spending), and its "
    "verdicts use the examples it was scored on. Candidates still in contention and {baseline} score the whole split; "
    "paired statistics use the examples both sides scored"
)


@dataclass
class Evaluation:
    """What the evaluate stage found: per-example correctness (a prefix of the split for a variant that
    stopped early), the early stops, and the record for report.json."""

    correct: dict[str, np.ndarray]
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def evaluate_variants(
    recipe: Recipe,
    loaded: LoadedModel,
    splits: Splits,
    variants: Sequence[VariantResult],
    paths: Mapping[str, Path],
    *,
    baseline: str = "float",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Evaluation:
    """Score every ok variant on the evaluation split through its engine, block by block (length-bucketed
    batches, outputs in split order), stopping a variant once it is shown inferior at the accuracy margin
    (SEQUENTIAL_PROCEDURE); fill metrics and intervals.

    A variant whose engine fails here is marked failed and left unscored (half-scored variants are not
    scored). The float reference scores the whole split (every paired comparison needs it).
    """
    t_start = time.perf_counter()
    bs = recipe.quantization.calibration.batch_size
    maxlen = recipe.model.max_seq_length
    level = recipe.selection.level
    split = splits.evaluation
    n_total = len(split)
    labels = split.labels
    ok = [v for v in variants if v.status == "ok"]
    reference = accuracy_reference(ok, baseline)
    engines: dict[str, Engine] = {}
    for v in ok:
        try:
            engines[v.name] = EngineFromOnnx(paths[v.name], recipe, v.name, v.precision, runtime=v.runtime, inference_precision=v.inference_precision)
            v.engine = {**engines[v.name].describe(), **v.engine}
        except Exception as exc:
            v.status, v.error = "failed", f"evaluation failed: {exc}"
    if reference is None or reference.name not in engines:
        raise WorkbenchError(f"the {baseline} baseline could not be evaluated; nothing to compare against.", "see the error above")
    looks = max(1, min(recipe.selection.looks, n_total))
    bounds = [int(x) for x in np.linspace(0, n_total, looks + 1).round()]
    fractions = [b / n_total for b in bounds[1:]]
    boundaries = spending_boundaries(fractions[:-1], level / 2.0) if looks > 1 else []
    seconds: dict[str, float] = dict.fromkeys(engines, 0.0)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in engines}
    scorer = Scorer()
    record: dict[str, Any] = {"split": "evaluation", "n": n_total, "looks": looks, "blocks": [[a, b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                              "boundaries": boundaries, "baseline": baseline}
    try:
        t = time.perf_counter()
        scorer = Scorer.fit(recipe, loaded, splits, engines[baseline], progress)
        if scorer.probe is not None:
            record["probe_seconds"] = round(time.perf_counter() - t, 2)
        predict = scorer.predict
        active = [name for name in engines]
        # rows never selected (the standard tools' rows, the float model on another engine or precision) have
        # nothing left to decide once their comparison with the baseline is resolved either way
        never_selected = {v.name: v.reference or (v.precision in FLOAT_PRECISIONS and v.name != baseline) for v in ok}
        stopped: dict[str, dict[str, Any]] = {}
        real = padded = 0
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            block = length_buckets(loaded.tokenizer, split.texts[lo:hi], loaded.input_names, maxlen, bs)
            real, padded = real + block.real_tokens, padded + block.padded_tokens
            for name in list(active):
                t = time.perf_counter()
                try:
                    parts[name].append(block.run(engines[name], f"evaluate {name} [{k + 1}/{looks}]", progress))
                except Exception as exc:
                    if name == baseline:
                        raise
                    v = next(x for x in ok if x.name == name)
                    v.status, v.error = "failed", f"evaluation failed: {exc}"
                    active.remove(name)
                    parts.pop(name, None)
                seconds[name] += time.perf_counter() - t
            if k == looks - 1:
                break
            # a look: which variants are shown inferior at the margin on the examples scored so far
            ref_correct = predict(np.concatenate(parts[baseline])) == labels[:hi]
            margin, _ = accuracy_margin_for(recipe, float(ref_correct.mean()))
            for name in [a for a in active if a != baseline]:
                mine = predict(np.concatenate(parts[name])) == labels[:hi]
                b = int(np.sum(mine & ~ref_correct))
                c = int(np.sum(~mine & ref_correct))
                stat = tango_statistic(b, c, hi, -margin)
                # a candidate stays in contention unless it is inferior
                resolved = "inferior" if stat <= -boundaries[k] else "non-inferior" if never_selected.get(name) and stat >= boundaries[k] else None
                if resolved is not None:
                    stopped[name] = {
                        "look": k + 1, "n": hi, "statistic": stat, "boundary": -boundaries[k] if resolved == "inferior" else boundaries[k],
                        "margin": margin, "delta": (b - c) / hi, "texts_saved": n_total - hi, "resolved": resolved,
                    }
                    active.remove(name)
                    say(f"  {name}: {resolved} at the {100 * margin:.2f} pt margin after {hi} examples (look {k + 1}/{looks}); stops being scored")
    finally:
        for eng in engines.values():
            eng.__exit__(None, None, None)
        engines.clear()
    outputs = {name: np.concatenate(p) for name, p in parts.items() if p}
    float_out = outputs[baseline]
    preds = {name: predict(out) for name, out in outputs.items()}
    for v in variants:
        if v.name not in outputs:
            continue
        out = outputs[v.name]
        n = len(out)
        v.metrics = scorer.metrics(out, labels[:n], float_out[:n])
        v.intervals = prediction_statistics(preds[v.name], labels, None if v.name == baseline else preds[baseline], level, seed=recipe.seed)
    margin, source = accuracy_margin_for(recipe, reference.metrics.get("accuracy"))
    record.update({
        "margin": margin, "margin_source": source,
        "procedure": SEQUENTIAL_PROCEDURE.format(looks=looks, baseline=baseline, half=level / 2) if looks > 1 else "every variant scores the whole split (selection.looks: 1)",
        "variants": {name: {"n": len(out), "seconds": round(seconds.get(name, 0.0), 2), "stopped": stopped.get(name)} for name, out in outputs.items()},
        "texts_scored": int(sum(len(out) for out in outputs.values())) + (len(splits.probe) if scorer.probe is not None else 0),
        "texts_saved": int(sum(s["texts_saved"] for s in stopped.values())),
        "batches": {"batch_size": bs, "real_tokens": real, "padded_tokens": padded, "order": "sorted by token length within each block"},
        "seconds": round(time.perf_counter() - t_start, 2),
    })
    return Evaluation({name: pred == labels[: len(pred)] for name, pred in preds.items()}, stopped, record)
