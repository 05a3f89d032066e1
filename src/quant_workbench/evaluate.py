"""Task metrics: linear-probe accuracy for embeddings (MTEB classification protocol) and
accuracy / macro-F1 / agreement for classifiers; cosine similarity to the float outputs for both.
`evaluate_variants` is the run's evaluate stage: every variant through its engine on the same split."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .data import Splits, TextSet
from .engines import EngineFromOnnx
from .errors import WorkbenchError
from .export import cosine_rows
from .models import LoadedModel, batches
from .recipe import Recipe
from .results import VariantResult
from .stats import prediction_statistics

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


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


def evaluate_variants(
    recipe: Recipe, loaded: LoadedModel, splits: Splits, variants: Sequence[VariantResult], paths: Mapping[str, Path], *, progress: bool = True
) -> dict[str, np.ndarray]:
    """Score every ok variant on the evaluation split through its engine; fill metrics and intervals.

    Returns per-example correctness by variant name, which the selection's paired tests need. A variant
    whose engine fails here is marked failed and left unscored (half-scored variants are not scored).
    """
    bs = recipe.quantization.calibration.batch_size
    maxlen = recipe.model.max_seq_length
    outputs: dict[str, np.ndarray] = {}
    probe_x: np.ndarray | None = None
    for v in variants:
        if v.status != "ok":
            continue
        try:
            with EngineFromOnnx(paths[v.name], recipe, v.name, v.precision, runtime=v.runtime, inference_precision=v.inference_precision) as eng:
                outputs[v.name] = run_outputs(eng, splits.evaluation, loaded.tokenizer, loaded.input_names, maxlen, bs, f"evaluate {v.name}", progress)
                if v.name == "float" and recipe.model.task == "embedding":
                    probe_x = run_outputs(eng, splits.probe, loaded.tokenizer, loaded.input_names, maxlen, bs, "embed probe split", progress)
                v.engine = {**eng.describe(), **v.engine}
        except Exception as exc:
            v.status, v.error = "failed", f"evaluation failed: {exc}"
            outputs.pop(v.name, None)
    if "float" not in outputs:
        raise WorkbenchError("the float baseline could not be evaluated; nothing to compare against.", "see the error above")
    labels = splits.evaluation.labels
    if recipe.model.task == "embedding":
        assert probe_x is not None
        probe = LinearProbe(seed=recipe.seed).fit(probe_x, splits.probe.labels)
        for v in variants:
            if v.name in outputs:
                v.metrics = score_embedding(probe, outputs[v.name], labels, outputs["float"])
        preds = {name: probe.predict(out) for name, out in outputs.items()}
    else:
        for v in variants:
            if v.name in outputs:
                v.metrics = score_classification(outputs[v.name], labels, outputs["float"])
        preds = {name: out.argmax(-1) for name, out in outputs.items()}
    level = recipe.selection.level
    for v in variants:
        if v.name in preds:
            v.intervals = prediction_statistics(preds[v.name], labels, None if v.name == "float" else preds["float"], level, seed=recipe.seed)
    return {name: pred == labels for name, pred in preds.items()}
