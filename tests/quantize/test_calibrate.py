from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from quant_workbench.quantize.methods import entropy_divergences, mse_errors
from quant_workbench.quantize.observers import (
    CalibrationError,
    HistogramCalibrator,
    load_stats,
    per_channel_amax,
    save_stats,
)

METHODS = ("max", "percentile", "entropy", "mse")


def _gauss_with_outliers(seed: int = 0, n: int = 200_000, outlier: float = 200.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:5] = torch.tensor([1.0, -1.0, 0.8, 0.75, -0.6]) * outlier
    return x


def _smooth_distribution(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """MXNet / ONNX Runtime _smooth_distribution, in float64; None where they would assert/give up."""
    is_zeros = (p == 0).astype(np.float64)
    is_nonzeros = (p != 0).astype(np.float64)
    n_zeros = is_zeros.sum()
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        return None
    eps1 = eps * float(n_zeros) / float(n_nonzeros)
    hist = p.astype(np.float64) + eps * is_zeros + (-eps1) * is_nonzeros
    if (hist <= 0).sum() != 0:
        return None
    return hist


def _reference_entropy(hist: np.ndarray, num_levels: int) -> tuple[list[int], list[float]]:
    """Per-bin python port of pytorch-quantization's _compute_amax_entropy (stride 1),
    with MXNet/ONNX Runtime smoothing of P and Q before the KL."""
    bins = np.array(hist, dtype=np.float64)
    bins[0] = bins[1]
    divergences: list[float] = []
    arguments: list[int] = []
    for i in range(num_levels, len(bins) + 1):
        new_density_counts = np.zeros(num_levels, dtype=np.float64)
        space = np.linspace(0, i, num=num_levels + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = np.array(bins[:i])
        reference_density[-1] += np.sum(bins[i:])
        p_smooth = _smooth_distribution(reference_density)
        q_smooth = _smooth_distribution(new_density)
        if p_smooth is None or q_smooth is None:
            divergences.append(float("inf"))
        else:
            divergences.append(float(scipy_entropy(p_smooth, q_smooth)))
        arguments.append(i)
    return arguments, divergences


def _last_argmin(values: np.ndarray) -> int:
    return len(values) - 1 - int(np.argmin(values[::-1]))


# ---------------------------------------------------------------------------- max / percentile
def test_max_on_known_tensors() -> None:
    c = HistogramCalibrator("layer.max")
    c.collect(torch.tensor([0.5, -3.0, 2.0]))
    c.collect(torch.tensor([[1.0, 2.5], [-0.25, 0.0]]))
    assert c.amax_max == 3.0
    assert c.compute_amax("max") == 3.0
    c.collect(torch.tensor([-7.5], dtype=torch.float16))
    assert c.compute_amax("max") == 7.5
    assert c.num_collected == 8
    assert int(c.histogram.sum()) == 8


def test_percentile_uniform_1_to_100() -> None:
    c = HistogramCalibrator("pct", num_bins=2048)
    c.collect(torch.arange(1, 101, dtype=torch.float32))
    width = 100.0 / 2048
    assert c.compute_amax("percentile", percentile=99.0) == pytest.approx(99.0, abs=width)
    assert c.compute_amax("percentile", percentile=50.0) == pytest.approx(50.0, abs=width)
    # p=100 must land on the max itself (top edge clamped to the true max)
    assert c.compute_amax("percentile", percentile=100.0) == 100.0
    with pytest.raises(ValueError):
        c.compute_amax("percentile", percentile=0.0)


def test_percentile_hand_built_histogram() -> None:
    c = HistogramCalibrator.from_state(
        "hand",
        {
            "hist": np.array([10, 0, 80, 9, 1], dtype=np.int64),
            "width": 0.5,
            "amax": 2.5,
            "num_bins": 5,
            "num_seen": 100,
            "pending_zeros": 0,
        },
    )
    assert c.compute_amax("percentile", percentile=10.0) == 0.5  # cdf hits 10/100 in bin 0
    assert c.compute_amax("percentile", percentile=10.5) == 1.5  # bin 1 is empty -> bin 2
    assert c.compute_amax("percentile", percentile=90.0) == 1.5
    assert c.compute_amax("percentile", percentile=99.0) == 2.0
    assert c.compute_amax("percentile", percentile=99.5) == 2.5


def test_extension_keeps_count_and_max() -> None:
    c = HistogramCalibrator("ext", num_bins=64)
    a = torch.linspace(-1.0, 1.0, 1001)
    b = torch.tensor([3.3, -0.1, 2.0])
    c.collect(a)
    width = c.bin_width
    assert width == pytest.approx(1.0 / 64)
    assert len(c.histogram) == 64
    c.collect(b)
    hist = c.histogram
    assert c.bin_width == width  # width fixed, bins appended
    assert len(hist) == int(np.ceil(3.3 / width))
    assert int(hist.sum()) == 1004
    assert c.amax_max == pytest.approx(3.3)
    assert c.compute_amax("max") == pytest.approx(3.3)
    # the first batch's counts are untouched by the extension
    fresh = HistogramCalibrator("ext2", num_bins=64)
    fresh.collect(a)
    np.testing.assert_array_equal(hist[:64], fresh.histogram + np.bincount([6, 128, 211], minlength=212)[:64])
    assert hist[-1] == 1  # 3.3 sits in the last appended bin
    assert c.compute_amax("percentile", percentile=100.0) == pytest.approx(3.3)


def test_huge_extension_is_coarsened_exactly() -> None:
    c = HistogramCalibrator("coarse", num_bins=16)
    c.collect(torch.tensor([1.0, 0.5]))
    c.collect(torch.tensor([10_000.0]))
    hist = c.histogram
    assert len(hist) <= 16 * 128
    assert int(hist.sum()) == 3
    assert c.compute_amax("max") == 10_000.0


def test_leading_zero_batches_are_counted() -> None:
    c = HistogramCalibrator("zeros_first", num_bins=32)
    c.collect(torch.zeros(10))
    c.collect(torch.tensor([1.0, 2.0]))
    c.collect(torch.zeros(3))
    hist = c.histogram
    assert int(hist.sum()) == 15
    assert hist[0] == 13


# ---------------------------------------------------------------------------- entropy
def _entropy_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    n = 260
    bell = np.round(1e5 * np.exp(-0.5 * (np.arange(n) / 40.0) ** 2)).astype(np.int64)
    dense = bell + rng.integers(0, 50, size=n)
    sparse = dense.copy()
    sparse[rng.random(n) < 0.4] = 0  # zero bins inside the bulk: nonzero smoothing shifts
    outliers = np.zeros(n, dtype=np.int64)  # bulk in 20 bins plus a sparse tail: P's last bin often empty
    outliers[:20] = rng.integers(1, 1000, size=20)
    outliers[[150, 200, 259]] = [1, 2, 1]
    return [dense, sparse, outliers]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("levels", [128, 32])
def test_entropy_vectorized_matches_reference(case: int, levels: int) -> None:
    hist = _entropy_cases()[case]
    ref_args, ref_div = _reference_entropy(hist, levels)
    cand, div = entropy_divergences(hist, levels)
    np.testing.assert_array_equal(cand, ref_args)
    ref = np.array(ref_div)
    np.testing.assert_array_equal(np.isinf(div), np.isinf(ref))
    finite = np.isfinite(ref)
    assert finite.any()
    np.testing.assert_allclose(div[finite], ref[finite], rtol=1e-9, atol=1e-12)
    assert cand[_last_argmin(div)] == ref_args[_last_argmin(ref)]


@pytest.mark.parametrize("small", [1.5e-4, 3e-4])
def test_entropy_non_integer_histogram_paths(small: float) -> None:
    # Tiny fractional bins push eps1/h past the Taylor-series cutoff (1.5e-4) or close to it
    # (3e-4), and make some candidates invalid; both must still match the reference.
    rng = np.random.default_rng(1)
    hist = np.ones(200)
    hist[rng.random(200) < 0.5] = 0.0
    hist[[5, 40, 77]] = small
    hist[1] = 2.0
    ref_args, ref_div = _reference_entropy(hist, 32)
    cand, div = entropy_divergences(hist, 32)
    ref = np.array(ref_div)
    np.testing.assert_array_equal(np.isinf(div), np.isinf(ref))
    finite = np.isfinite(ref)
    # cumsum differences of non-integer counts cancel; integer counts (real histograms) are exact
    np.testing.assert_allclose(div[finite], ref[finite], rtol=1e-9, atol=1e-9)
    assert cand[_last_argmin(div)] == ref_args[_last_argmin(ref)]


def test_entropy_without_smoothing_would_be_stuck() -> None:
    # Thresholds between the bulk and the outliers have an empty last bin; they must stay
    # finite (smoothing) so the search can clip the outliers.
    hist = _entropy_cases()[2]
    cand, div = entropy_divergences(hist, 128)
    assert np.isfinite(div).all()
    assert cand[_last_argmin(div)] < 150


def test_entropy_clips_outliers_and_is_fast() -> None:
    c = HistogramCalibrator("ent", num_bins=2048)
    c.collect(_gauss_with_outliers())
    assert len(c.histogram) == 2048
    start = time.perf_counter()
    amax = c.compute_amax("entropy")
    elapsed = time.perf_counter() - start
    assert amax < 0.1 * c.amax_max  # 200 -> a few sigma
    assert 2.0 < amax < 20.0
    assert elapsed < 1.0, f"entropy took {elapsed:.3f}s"


def test_entropy_on_extended_histogram() -> None:
    c = HistogramCalibrator("ent_ext", num_bins=2048)
    g = torch.Generator().manual_seed(5)
    c.collect(torch.randn(50_000, generator=g))
    c.collect(torch.randn(50_000, generator=g) * 20)  # extends well past the first range
    assert len(c.histogram) > 2048
    amax = c.compute_amax("entropy")
    assert 0 < amax <= c.amax_max


def test_entropy_rejects_fp8() -> None:
    c = HistogramCalibrator("ent_fp8")
    c.collect(torch.randn(1000))
    with pytest.raises(ValueError, match="fp8"):
        c.compute_amax("entropy", fp8=True)


# ---------------------------------------------------------------------------- mse
def _brute_mse(values: np.ndarray, weights: np.ndarray, amax: float, qmax: int) -> float:
    total = 0.0
    scale = amax / qmax
    for v, w in zip(values, weights, strict=True):
        q = min(round(v / scale), qmax)
        total += w * (q * scale - v) ** 2
    return total


def test_mse_tiny_histogram_matches_brute_force() -> None:
    hist = np.array([0, 50, 30, 0, 5, 0, 0, 1], dtype=np.int64)
    width = 0.25
    centers = (np.arange(len(hist)) + 0.5) * width
    qmax = 3  # num_bits=3 keeps rounding error visible relative to clipping error
    c = HistogramCalibrator.from_state(
        "tiny",
        {"hist": hist, "width": width, "amax": 2.0, "num_bins": 8, "num_seen": 86, "pending_zeros": 0},
    )
    amax = c.compute_amax("mse", num_bits=3)
    candidates = np.arange(1, len(hist) + 1) * width
    brute = np.array([_brute_mse(centers, hist, a, qmax) for a in candidates])
    np.testing.assert_allclose(mse_errors(hist, width, candidates, num_bits=3), brute, rtol=1e-12)
    assert amax == pytest.approx(candidates[_last_argmin(brute)])
    assert brute[list(candidates).index(amax)] == pytest.approx(brute.min())
    assert amax < 2.0  # the lone top-bin value is not worth a coarse grid for everything else


def test_mse_clips_outliers() -> None:
    # Squared error punishes clipping hard: outliers must be moderate (20 sigma) and rare for
    # clipping to win over int8 rounding error of the 200k-value bulk.
    c = HistogramCalibrator("mse", num_bins=2048)
    c.collect(_gauss_with_outliers(seed=1, outlier=20.0))
    start = time.perf_counter()
    amax = c.compute_amax("mse")
    elapsed = time.perf_counter() - start
    assert 3.0 < amax < 0.8 * c.amax_max
    assert elapsed < 1.0, f"mse took {elapsed:.3f}s"
    hist, width = c.histogram, c.bin_width
    edges = np.arange(1, len(hist) + 1) * width
    errs = mse_errors(hist, width, edges)
    assert mse_errors(hist, width, [amax])[0] <= errs.min() * (1 + 1e-12)
    assert mse_errors(hist, width, [amax])[0] < mse_errors(hist, width, [c.amax_max])[0]
    amax_fp8 = c.compute_amax("mse", fp8=True)
    assert 0 < amax_fp8 <= c.amax_max


def test_mse_fp8_matches_torch_cast() -> None:
    hist = np.array([100, 40, 10, 3, 0, 1], dtype=np.int64)
    width = 0.3
    centers = (np.arange(len(hist)) + 0.5) * width
    amax = 1.2
    scale = amax / 448.0
    q = torch.tensor(np.minimum(centers / scale, 448.0), dtype=torch.float64).to(torch.float8_e4m3fn)
    expected = float(((q.double().numpy() * scale - centers) ** 2 * hist).sum())
    got = mse_errors(hist, width, [amax], fp8=True)[0]
    assert got == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_raise_with_name(bad: float) -> None:
    c = HistogramCalibrator("encoder.layer.3.attn.q_proj.input")
    c.collect(torch.randn(10))
    x = torch.randn(100)
    x[17] = bad
    with pytest.raises(CalibrationError, match=r"NaN/Inf in encoder\.layer\.3\.attn\.q_proj\.input"):
        c.collect(x)
    assert isinstance(CalibrationError("x"), ValueError)


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_and_empty_raise(method: str) -> None:
    c = HistogramCalibrator("token_type_embeddings.out")
    with pytest.raises(CalibrationError, match="token_type_embeddings.out"):
        c.compute_amax(method)
    c.collect(torch.zeros(4, 8))
    with pytest.raises(CalibrationError, match="always zero") as info:
        c.compute_amax(method)
    assert "token_type_embeddings.out" in str(info.value)
    assert "quantization.ignore" in str(info.value)  # the real field (issue 20, finding 8)


def test_unknown_method() -> None:
    c = HistogramCalibrator("m")
    c.collect(torch.ones(3))
    with pytest.raises(ValueError, match="unknown calibration method"):
        c.compute_amax("minmax")


# ---------------------------------------------------------------------------- determinism / persistence
def _filled_calibrators() -> dict[str, HistogramCalibrator]:
    g = torch.Generator().manual_seed(7)
    calibs = {name: HistogramCalibrator(name, num_bins=512) for name in ("b.input", "a.input", "c::odd")}
    for step in range(3):
        for k, calib in enumerate(calibs.values()):
            calib.collect(torch.randn(64, 33, generator=g) * (1 + step + k))
    return calibs


def test_collect_is_deterministic() -> None:
    one, two = _filled_calibrators(), _filled_calibrators()
    for name in one:
        s1, s2 = one[name].state(), two[name].state()
        assert s1.keys() == s2.keys()
        for key in s1:
            np.testing.assert_array_equal(np.asarray(s1[key]), np.asarray(s2[key]))
        for method in METHODS:
            assert one[name].compute_amax(method) == two[name].compute_amax(method)


def test_save_load_round_trip_and_identical_bytes(tmp_path: Path) -> None:
    calibs = _filled_calibrators()
    meta = {"model": "bert-tiny", "dataset": "sst2", "samples": "128"}
    p1, p2 = tmp_path / "a" / "stats.npz", tmp_path / "stats2.npz"
    save_stats(p1, calibs, meta)
    time.sleep(1.1)  # a wall-clock zip timestamp would now differ
    save_stats(p2, _filled_calibrators(), meta)
    assert p1.read_bytes() == p2.read_bytes()
    assert [p.name for p in p1.parent.iterdir()] == ["stats.npz"]  # no temp file left behind

    loaded, loaded_meta = load_stats(p1)
    assert loaded_meta == meta
    assert sorted(loaded) == sorted(calibs)
    for name, calib in calibs.items():
        assert loaded[name].name == name
        assert loaded[name].num_bins == calib.num_bins
        for method in METHODS:
            for kw in ({}, {"num_bits": 4}, {"unsigned": True}):
                want = calib.compute_amax(method, **kw)
                assert loaded[name].compute_amax(method, **kw) == want
        # continuing collection after a reload behaves like never having stopped
        extra = torch.linspace(-50, 50, 301)
        calib.collect(extra)
        loaded[name].collect(extra)
        np.testing.assert_array_equal(calib.histogram, loaded[name].histogram)


def test_load_rejects_foreign_npz(tmp_path: Path) -> None:
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a quant-workbench"):
        load_stats(p)


# ---------------------------------------------------------------------------- weights / speed
def test_per_channel_amax() -> None:
    w = torch.tensor([[1.0, -4.0, 2.0], [-0.5, 0.25, 0.0]])
    assert torch.equal(per_channel_amax(w), torch.tensor([4.0, 0.5]))
    assert torch.equal(per_channel_amax(w, axis=1), torch.tensor([1.0, 4.0, 2.0]))
    assert torch.equal(per_channel_amax(w, axis=-1), torch.tensor([1.0, 4.0, 2.0]))
    conv = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4) - 12
    out = per_channel_amax(conv, axis=1)
    assert out.dtype == torch.float32
    manual = [max(abs(float(v)) for v in conv[:, c, :].flatten()) for c in range(3)]
    assert out.tolist() == manual


def test_collect_speed() -> None:
    x = torch.randn(32, 128, 1536)
    c = HistogramCalibrator("speed")
    c.collect(x)  # warm-up; also fixes the bin width
    start = time.perf_counter()
    c.collect(x)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"collect took {elapsed * 1e3:.1f} ms"
    assert int(c.histogram.sum()) == 2 * x.numel()
