"""Helpers behind the shared fixtures of tests/conftest.py: the tiny random BERT (config, vocabulary,
save_pretrained), the synthetic labelled rows, and the small recipe dict.

Import them from here (`from tiny_fixtures import TINY_SEQ, make_rows`), not from `conftest`: with more
than one conftest.py under tests/ (tests/deploy has its own), `import conftest` resolves to whichever
conftest pytest imported last.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Words whose presence decides the label (so a probe on the embeddings can beat chance).
LABEL_WORDS = {
    "positive": ["good", "great", "happy", "love", "nice", "joy", "best", "fun"],
    "negative": ["bad", "awful", "sad", "hate", "worst", "angry", "poor", "ugly"],
    "neutral": ["table", "chair", "report", "meeting", "window", "paper", "train", "road"],
}
LABELS = list(LABEL_WORDS)
TINY_MAX_POSITIONS = 64
TINY_SEQ = 32


def _filler_words(n: int = 300) -> list[str]:
    """Deterministic lowercase pseudo-words (two or three syllables)."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
    vowels = ["a", "e", "i", "o", "u"]
    syll = [c + v for c, v in itertools.product(onsets, vowels)]
    rng = random.Random(1234)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        w = "".join(rng.choice(syll) for _ in range(rng.choice((2, 3))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


FILLER = _filler_words()
VOCAB = SPECIAL_TOKENS + sorted({w for ws in LABEL_WORDS.values() for w in ws}) + FILLER


def tiny_bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    kwargs: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(VOCAB),
        max_position_embeddings=TINY_MAX_POSITIONS,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def save_tiny_tokenizer(folder: Path) -> None:
    # transformers 5 exports the name only at run time (an alias of BertTokenizer, the fast one there)
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(vocab_file))  # transformers 5.x
    if len(tok) != len(VOCAB):  # transformers 4.x spelling
        tok = BertTokenizerFast(vocab_file=str(vocab_file))
    assert len(tok) == len(VOCAB)
    tok.save_pretrained(str(folder))


def save_tiny_model(folder: Path, classifier: bool) -> Path:
    from transformers import BertForSequenceClassification, BertModel, PreTrainedModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model: PreTrainedModel
    if classifier:
        # class ids in the order the data loader gives labels without data.label_names (sorted)
        names = sorted(LABELS)
        cfg = tiny_bert_config(num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(tiny_bert_config())
    model.eval()
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    return folder


def make_rows(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """Synthetic sentences: a few filler words plus 1-2 words of the label's class; unique texts."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(rows) < n:
        label = LABELS[len(rows) % 3]
        words = rng.sample(FILLER, rng.randint(3, 8)) + rng.sample(LABEL_WORDS[label], rng.randint(1, 2))
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return rows


def recipe_dict(
    out: Path,
    model_dir: Path,
    csv_path: Path,
    *,
    task: str = "embedding",
    methods: list[str] | None = None,
    name: str = "tiny",
) -> dict[str, Any]:
    """A small, fast recipe for the tiny models (a plain dict: tests mutate it before validating)."""
    return {
        "name": name,
        "seed": 0,
        "output_dir": str(out / "reports"),
        "model": {"source": str(model_dir), "task": task, "max_seq_length": TINY_SEQ, "pooling": "mean"},
        "data": {
            "format": "csv",
            "files": [str(csv_path)],
            "text_columns": ["text"],
            "label_column": "label",
            "calibration_samples": 32,
            "probe_samples": 120,
            "eval_samples": 60,
            "seed": 0,
        },
        "quantization": {
            "calibration": {
                "methods": methods or ["max"],
                "batch_size": 16,
                "num_bins": 2048,
                "cache_dir": str(out / "calibration"),
            },
        },
        "export": {"opset": 18, "fidelity_samples": 8},
        "engine": {"provider": "cpu", "graph_optimization": "all", "threads": 1},
        # a fixed 3 rounds (no adaptive length): unit tests check the mechanism, not the speed-up
        "benchmark": {"batch_sizes": [1, 2], "seq_lengths": [16], "warmup": 1, "iterations": 3, "threads": 1, "speedup_tolerance": None},
    }


def ort_qdq(x: Any, scale: Any, axis: int | None = None, *, fp8: bool = False) -> Any:
    """ONNX QuantizeLinear -> DequantizeLinear run in ONNX Runtime: int8 zero point 0 (opset 18) or a
    float8e4m3fn zero point (opset 19). The reference the fake-quant ops are checked against."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    s = numpy_helper.from_array(np.asarray(scale, np.float32), "s")
    shape = list(np.asarray(scale).shape)
    if fp8:
        z = helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, shape, np.zeros(np.asarray(scale).size).tolist())
    else:
        z = numpy_helper.from_array(np.zeros(shape, np.int8), "z")
    kw: dict[str, Any] = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [s, z],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19 if fp8 else 18)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])
