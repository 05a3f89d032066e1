"""The comparator behind every "artifact vs model" check, on tiny numpy runners whose answers are known:
agreeing and disagreeing candidates, all-zero rows and tensors, the edge of each threshold."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from quant_workbench.core.comparator import (
    Comparator,
    Feed,
    Runner,
    cosine_rows,
    layer_cosine,
    max_abs_diff,
    mean_cosine,
    numpy_feed,
    row_metrics,
    tensor_cosine,
    tensor_metrics,
    torch_runner,
)

FEED: Feed = {"x": np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0], [0.0, 0.0, 1.0]], dtype=np.float32)}


def _scaled(factor: float) -> Runner:
    return lambda feed: feed["x"] * np.float32(factor)


def test_cosine_rows_is_per_sample_and_ignores_scale() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[0.0, 2.0], [-2.0, -2.0], [6.0, 8.0]], dtype=np.float32)
    np.testing.assert_allclose(cosine_rows(a, b), [0.0, -1.0, 1.0], atol=1e-12)
    # rows are everything after the first axis
    assert cosine_rows(np.ones((2, 3, 4)), np.ones((2, 3, 4))).shape == (2,)


def test_an_all_zero_row_has_cosine_zero_with_anything() -> None:
    zero = np.zeros((1, 3), dtype=np.float32)
    assert cosine_rows(zero, zero)[0] == 0.0
    assert cosine_rows(zero, np.ones((1, 3), dtype=np.float32))[0] == 0.0


def test_cosine_rows_is_symmetric_to_the_last_bit() -> None:
    """A fake-quant model's distance from float is measured with either one as the reference."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 37)).astype(np.float32), rng.normal(size=(8, 37)).astype(np.float32)
    assert np.array_equal(cosine_rows(a, b), cosine_rows(b, a))


def test_tensor_cosine_both_all_zero_agree_one_all_zero_does_not() -> None:
    zero = np.zeros((2, 3), dtype=np.float32)
    assert tensor_cosine(zero, zero) == 1.0
    assert tensor_cosine(zero, np.ones((2, 3), dtype=np.float32)) == 0.0
    assert tensor_cosine(np.ones((2, 3), dtype=np.float32), zero) == 0.0
    # the whole tensor is one vector: rows pointing different ways still average into one cosine
    got = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert tensor_cosine(got, np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)) == pytest.approx(1 / np.sqrt(2))


def test_the_reference_runs_once_for_every_candidate() -> None:
    calls: list[str] = []

    def reference(feed: Feed) -> np.ndarray:
        calls.append("reference")
        return feed["x"]

    comparator = Comparator(reference, FEED)
    for factor in (1.0, 2.0, -1.0):
        comparator.check(_scaled(factor), mean_cosine(0.01))
    comparator.measure(_scaled(3.0))
    assert calls == ["reference"]
    assert comparator.reference is not None and np.array_equal(comparator.reference, FEED["x"])


def test_an_agreeing_candidate_passes_and_a_disagreeing_one_fails() -> None:
    comparator = Comparator(lambda feed: feed["x"], FEED)
    same = comparator.check(lambda feed: feed["x"].copy(), mean_cosine(1e-6))
    assert same.passed and same.mean_cosine == pytest.approx(1.0) and same.max_abs_diff == 0.0 and same.samples == 3
    flipped = comparator.check(lambda feed: -feed["x"], mean_cosine(1e-6))
    assert not flipped.passed and flipped.mean_cosine == pytest.approx(-1.0) and flipped.min_cosine == pytest.approx(-1.0)
    assert flipped.max_abs_diff == pytest.approx(6.0)  # 2 x the largest element
    # scaled outputs point the same way (cosine passes) but differ element by element (max abs diff fails)
    doubled = _scaled(2.0)
    assert comparator.check(doubled, mean_cosine(1e-6)).passed
    assert not comparator.check(doubled, max_abs_diff(1e-3)).passed


def test_min_cosine_is_the_worst_row() -> None:
    got = FEED["x"].copy()
    got[1] = -got[1]
    m = Comparator(FEED["x"]).measure(got)
    assert m.min_cosine == pytest.approx(-1.0) and m.mean_cosine == pytest.approx(1 / 3)
    assert m.distance == pytest.approx(2 / 3)


def test_mean_cosine_threshold_edge() -> None:
    """distance <= allowed passes: exactly at the allowance passes, one ulp tighter fails."""
    ref = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    got = np.array([[4.0, 3.0], [1.0, 0.0]], dtype=np.float32)
    distance = row_metrics(got, ref).distance
    assert 0 < distance < 1
    at = Comparator(ref).check(got, mean_cosine(distance))
    assert at.passed and at.threshold == 1.0 - distance
    assert not Comparator(ref).check(got, mean_cosine(float(np.nextafter(distance, 0.0)))).passed


def test_max_abs_diff_threshold_edge() -> None:
    ref = np.zeros((2, 2), dtype=np.float32)
    got = ref.copy()
    got[1, 0] = 0.5
    at = Comparator(ref).check(got, max_abs_diff(0.5))
    assert at.passed and at.max_abs_diff == 0.5 and at.threshold == 0.5
    assert not Comparator(ref).check(got, max_abs_diff(float(np.nextafter(0.5, 0.0)))).passed


def test_layer_cosine_threshold_edge_and_all_zero_layers() -> None:
    ref = np.array([[3.0, 4.0]], dtype=np.float32)
    got = np.array([[4.0, 3.0]], dtype=np.float32)
    cos = tensor_cosine(got, ref)
    at = Comparator(ref).check(got, layer_cosine(cos))
    assert at.passed and at.samples == 1 and at.mean_cosine == at.min_cosine == cos and at.threshold == cos
    assert not Comparator(ref).check(got, layer_cosine(float(np.nextafter(cos, 1.0)))).passed
    # every input of a Linear rounds to zero in both implementations: they agree
    zero = np.zeros((2, 4), dtype=np.float32)
    assert Comparator(zero).check(zero.copy(), layer_cosine(0.9999)).passed
    assert not Comparator(zero).check(np.full((2, 4), 1e-3, dtype=np.float32), layer_cosine(0.9999)).passed


def test_mismatch_fraction_counts_elements_off_by_more_than_a_thousandth_of_the_largest() -> None:
    ref = np.array([[10.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    got = ref.copy()
    got[0, 1] += 0.02  # > 1e-3 x 10
    got[1, 0] += 0.005  # < 1e-3 x 10
    assert tensor_metrics(got, ref).mismatch_fraction == 0.25
    assert row_metrics(got, ref).mismatch_fraction == 0.25
    # an all-zero reference: the tolerance is 1e-3 (of 1.0)
    assert tensor_metrics(np.full((2, 2), 2e-3, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)).mismatch_fraction == 1.0


def test_outputs_of_another_shape_are_an_error_not_broadcast() -> None:
    comparator = Comparator(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        comparator.check(np.ones((1, 3), dtype=np.float32), max_abs_diff(1.0))


def test_a_runner_needs_a_feed() -> None:
    with pytest.raises(ValueError, match="feed"):
        Comparator(lambda feed: feed["x"])


def test_a_comparison_is_a_report_dict() -> None:
    """The verdict is a plain bool and every metric a plain number: json can write them into report.json."""
    check = Comparator(FEED["x"]).check(FEED["x"] * np.float32(1.5), layer_cosine(0.9999))
    assert type(check.passed) is bool
    assert json.loads(json.dumps(asdict(check)))["passed"] is True


def test_torch_runner_runs_the_model_as_it_is_at_each_call() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)

    class Keyword(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x)

    example = {"x": torch.from_numpy(FEED["x"])}
    runner = torch_runner(Keyword())
    out = runner(numpy_feed(example))
    with torch.no_grad():
        np.testing.assert_array_equal(out, model(example["x"]).numpy())
    with torch.no_grad():
        model.weight.mul_(2.0)
    assert not np.array_equal(runner(numpy_feed(example)), out)  # the state at the call, not at creation
