"""The one comparator behind every "artifact vs model" check, after Polygraphy's Comparator: runners and a
compare function.

A runner maps named numpy inputs to one output array: an engine (runtime/: every Engine is one), a PyTorch
model in whatever state it is in when called (`torch_runner`), an ONNX subgraph. A `Comparator` runs the
reference once on a feed and checks candidates against its outputs; a compare function measures a
candidate's outputs against the reference's (`Metrics`) and gives the verdict (`Comparison`). Either side
may also be outputs already computed (an array), such as the float model's, computed once per run.

The run's checks (float ONNX vs PyTorch, Q/DQ ONNX vs fake quant per layer and end to end, the engine graphs
vs fake quant or float, OpenVINO, the SmoothQuant rewrite vs float) each turn a Comparison into their own
report.json dict; no other module has a cosine or max-abs-diff formula of its own (the evaluation's cosine to
float, measure/accuracy.py, is cosine_rows too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

Feed = dict[str, np.ndarray]
Runner = Callable[[Feed], np.ndarray]
Outputs = Runner | np.ndarray


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (row: everything after the first axis) of `a` with the same row of
    `b`, in float64; an all-zero row has cosine 0 with anything."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12))


def tensor_cosine(got: np.ndarray, ref: np.ndarray) -> float:
    """Cosine similarity of two whole tensors, each read as one vector. Two all-zero tensors agree (1.0: every
    input of a quantized Linear can round to zero in both implementations); one all-zero tensor against a
    non-zero one does not (0.0)."""
    denom = float(np.linalg.norm(got) * np.linalg.norm(ref))
    return float(np.sum(got.astype(np.float64) * ref) / denom) if denom > 0 else float(not np.any(got) and not np.any(ref))


@dataclass(frozen=True)
class Metrics:
    """A candidate's outputs measured against the reference's."""

    mean_cosine: float  # over samples: rows (`row_metrics`), or the whole tensor as one sample (`tensor_metrics`)
    min_cosine: float
    max_abs_diff: float
    mismatch_fraction: float  # elements off by more than 1e-3 of the reference's largest magnitude
    samples: int

    @property
    def distance(self) -> float:
        """1 - mean cosine: how far apart the two are (a fake-quant model's distance from float is its quantization noise)."""
        return 1.0 - self.mean_cosine


@dataclass(frozen=True)
class Comparison(Metrics):
    """Metrics plus the verdict of a compare function: the bound it held them to, and whether they passed."""

    threshold: float  # a cosine floor (cosine checks) or the largest allowed element difference (max_abs_diff)
    passed: bool


def _elementwise(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs diff, mismatch fraction); raises when the shapes differ (no broadcasting one into the other)."""
    if got.shape != ref.shape:
        raise ValueError(f"the candidate's output has shape {got.shape}, the reference's {ref.shape}")
    diff = np.abs(got - ref)
    tol = 1e-3 * float(np.abs(ref).max() or 1.0)
    return float(diff.max()), float((diff > tol).mean())


def row_metrics(got: np.ndarray, ref: np.ndarray) -> Metrics:
    """Each sample (row) compared on its own: mean and worst row cosine (cosine_rows)."""
    largest, mismatch = _elementwise(got, ref)
    cos = cosine_rows(got, ref)
    return Metrics(float(cos.mean()), float(cos.min()), largest, mismatch, len(cos))


def tensor_metrics(got: np.ndarray, ref: np.ndarray) -> Metrics:
    """The whole tensor as one sample (tensor_cosine): one layer's output on a batch."""
    largest, mismatch = _elementwise(got, ref)
    cos = tensor_cosine(got, ref)
    return Metrics(cos, cos, largest, mismatch, 1)


@dataclass(frozen=True)
class Compare:
    """A compare function: (candidate's outputs, reference's outputs) -> the metrics (`measure`) held to
    `threshold` by `passes`. The threshold is known before anything runs: a check that cannot run still reports it."""

    measure: Callable[[np.ndarray, np.ndarray], Metrics]
    threshold: float
    passes: Callable[[Metrics], bool]

    def __call__(self, got: np.ndarray, ref: np.ndarray) -> Comparison:
        m = self.measure(got, ref)
        return Comparison(**asdict(m), threshold=self.threshold, passed=bool(self.passes(m)))


def mean_cosine(allowed: float) -> Compare:
    """Passes when the mean row cosine is at most `allowed` below 1 (distance <= allowed); the threshold is the
    cosine floor 1 - allowed."""
    return Compare(row_metrics, 1.0 - allowed, lambda m: m.distance <= allowed)


def max_abs_diff(tolerance: float) -> Compare:
    """Passes when no element differs by more than `tolerance` (the threshold); row cosines are measured beside."""
    return Compare(row_metrics, tolerance, lambda m: m.max_abs_diff <= tolerance)


def layer_cosine(floor: float) -> Compare:
    """Passes when the whole-tensor cosine (tensor_metrics) is at least `floor` (the threshold)."""
    return Compare(tensor_metrics, floor, lambda m: m.mean_cosine >= floor)


class Comparator:
    """The reference's outputs on one feed, computed once, and the candidates' checks against them.

    `reference` and each candidate are runners (run on `feed`) or outputs already computed (arrays)."""

    def __init__(self, reference: Outputs, feed: Feed | None = None) -> None:
        self.feed = feed
        self.reference = self._outputs(reference)

    def _outputs(self, side: Outputs) -> np.ndarray:
        if isinstance(side, np.ndarray):
            return side
        if self.feed is None:
            raise ValueError("a runner needs the comparator's feed")
        return np.asarray(side(self.feed))

    def check(self, candidate: Outputs, compare: Compare) -> Comparison:
        """Run `candidate` on the feed (unless it is outputs) and compare it with the reference."""
        return compare(self._outputs(candidate), self.reference)

    def measure(self, candidate: Outputs) -> Metrics:
        """Row metrics of `candidate` against the reference, without a verdict (a quantization noise, a reference row)."""
        return row_metrics(self._outputs(candidate), self.reference)


def numpy_feed(example: dict[str, torch.Tensor]) -> Feed:
    """A batch of PyTorch tensors as a runner's feed (no copy: the arrays share the tensors' memory)."""
    return {k: v.numpy() for k, v in example.items()}


def torch_runner(model: torch.nn.Module) -> Runner:
    """A PyTorch model (called with the feed as keyword tensors, no autograd) as a runner; it runs in whatever
    state the model is in at each call (fake quant, float_mode, a SmoothQuant rewrite)."""
    import torch

    def run(feed: Feed) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
        return out

    return run
