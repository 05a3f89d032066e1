"""The calibration methods (quantization.calibration.methods): one clipping range per quantizer from the
histogram its observer collected (quantize/observers.py), registered in AMAX_METHODS under its name in
the catalog (config/catalog.py CALIBRATORS, which the recipe validates against). A new method is one
function registered here and its name in the catalog (docs/extending.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from quant_workbench.core.registry import Registry

if TYPE_CHECKING:
    from quant_workbench.quantize.observers import HistogramCalibrator


class AmaxMethod(Protocol):
    """Clipping range of one quantizer from its collected statistics."""

    def __call__(self, calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float: ...


# calibration method name (config/catalog.py CALIBRATORS) -> its amax function
AMAX_METHODS: Registry[AmaxMethod] = Registry("calibration method")

# Upper bound on amax candidates the mse search evaluates (each costs one pass over the nonzero
# bins); with the default 2048-bin working histogram every bin edge is a candidate.
_MSE_MAX_CANDIDATES = 2048
# Upper bound on entropy candidates; each is O(levels), so this is generous.
_ENTROPY_MAX_CANDIDATES = 4096
_FP8_E4M3_MAX = 448.0
# Smoothing constant of MXNet's / ONNX Runtime's _smooth_distribution (in counts, not probabilities).
_KL_SMOOTH_EPS = 1e-4


@AMAX_METHODS.register("max")
def _max_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    return calib.amax_max


@AMAX_METHODS.register("percentile")
def _percentile_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    return _percentile_edge(calib.histogram, calib.bin_width, percentile)


@AMAX_METHODS.register("entropy")
def _kl_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    if fp8:
        raise ValueError(
            "entropy (KL) calibration models uniformly spaced integer levels and does not apply "
            "to fp8; use 'max', 'percentile' or 'mse' for fp8 quantizers"
        )
    hist, width = calib.working_histogram()
    return _entropy_amax(hist, width, _num_levels(num_bits, unsigned))


@AMAX_METHODS.register("mse")
def _min_mse_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    hist, width = calib.working_histogram()
    return _mse_amax(hist, width, num_bits=num_bits, unsigned=unsigned, fp8=fp8)


# ---------------------------------------------------------------------- histogram math
def _num_levels(num_bits: int, unsigned: bool) -> int:
    if num_bits < 2:
        raise ValueError(f"num_bits must be >= 2, got {num_bits}")
    return 1 << (num_bits - 1 + int(unsigned))


def merge_bins(hist: npt.NDArray[np.int64], factor: int) -> npt.NDArray[np.int64]:
    pad = (-len(hist)) % factor
    if pad:
        hist = np.concatenate([hist, np.zeros(pad, dtype=hist.dtype)])
    merged: npt.NDArray[np.int64] = hist.reshape(-1, factor).sum(axis=1, dtype=np.int64)
    return merged


def _percentile_edge(hist: npt.NDArray[np.int64], width: float, percentile: float) -> float:
    cum = np.cumsum(hist, dtype=np.int64)
    # Compare counts, not a float CDF, so e.g. p=100 hits the last non-empty bin exactly.
    threshold = percentile / 100.0 * float(cum[-1])
    idx = int(np.searchsorted(cum, threshold, side="left"))
    idx = min(idx, len(hist) - 1)
    return (idx + 1) * width


def entropy_divergences(
    hist: npt.ArrayLike, num_levels: int = 128, start_bin: int | None = None, stride: int = 1
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Smoothed KL(P || Q) for every candidate threshold ``i`` (keep bins ``[0, i)``).

    P and Q are built exactly as in pytorch-quantization's / Model Optimizer's
    ``_compute_amax_entropy`` (TensorRT legacy entropy calibration): ``bins[0]`` is replaced by
    ``bins[1]`` (the exact-zero spike of ReLU/padding outputs would otherwise dominate P), P is
    ``bins[:i]`` with the outlier mass ``bins[i:]`` added to its last bin, and Q is ``bins[:i]``
    quantized into ``num_levels`` groups and spread evenly back over each group's nonzero bins.

    Both are then smoothed as MXNet / ONNX Runtime do (``_smooth_distribution``, eps = 1e-4 counts:
    zero bins get eps, nonzero bins give up ``eps * n_zero / n_nonzero`` so the mass is kept),
    and KL is scipy.stats.entropy of the two (normalized). Without smoothing, any threshold whose
    last bin is empty while outliers exist has Q = 0 where P > 0, i.e. KL = inf, so for the sparse
    tails typical of transformer activations the search could only stop right above an outlier.
    A candidate whose smoothing would make a bin non-positive (MXNet asserts there) gets inf.

    Vectorized instead of per-bin loops: group ``k`` of candidate ``i`` is the contiguous bin range
    ``[ceil(k*i/L), ceil((k+1)*i/L))`` (exactly ``np.digitize`` over ``linspace(0, i, L+1)``, since L
    is a power of two), so group masses ``S_k`` and nonzero counts ``N_k`` are cumsum differences.
    With ``e = eps1`` of P, ``T*KL + T log(T/c)`` equals

        sum_{j<i-1, h_j>0} (h_j - e) log(h_j - e) + P'_last log P'_last
        - sum_k (S_k - N_k e) log(S_k/N_k - e_Q) - (last-bin correction for the outlier mass),

    (empty bins contribute eps*log(eps/eps) = 0). The first sum depends on ``e``, which differs per
    candidate, so it is evaluated as the Taylor series of ``x log x`` around each ``h_j``, whose
    coefficients are prefix sums of ``h^-m``: for counts ``h_j >= 1`` while ``e = 1e-4 * zeros /
    nonzeros <= 0.21`` on 2048 bins, so a few dozen terms reach double precision. Candidates where
    ``e / min(h)`` exceeds 1/2 (only possible for fractional histograms) fall back to a direct sum.
    Exact up to rounding for integer counts (their cumsums are exact); fractional histograms lose
    some digits to cumsum differences. Cost: O(#candidates * (L + terms)).
    Returns ``(candidates, divergences)``.
    """
    bins = np.array(hist, dtype=np.float64).reshape(-1)
    n = len(bins)
    if n > 1:
        bins[0] = bins[1]
    start = num_levels if start_bin is None else start_bin
    cand = np.arange(max(start, 1), n + 1, max(stride, 1), dtype=np.int64)
    if cand.size == 0:
        return cand, np.zeros(0, dtype=np.float64)
    total = float(bins.sum())
    if total <= 0.0:
        return cand, np.full(cand.shape, np.inf)
    eps = _KL_SMOOTH_EPS

    zero = np.zeros(1)
    positive = bins > 0
    safe = np.where(positive, bins, 1.0)
    log_h = np.where(positive, np.log(safe), 0.0)
    cs = np.concatenate([zero, np.cumsum(bins)])
    nz = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(positive, dtype=np.int64)])
    hlogh = np.concatenate([zero, np.cumsum(bins * log_h)])
    logh1 = np.concatenate([zero, np.cumsum(np.where(positive, log_h + 1.0, 0.0))])
    prefmin = np.concatenate([[np.inf], np.minimum.accumulate(np.where(positive, bins, np.inf))])

    rows = np.arange(len(cand))
    levels = np.arange(num_levels + 1, dtype=np.int64)
    bounds = (levels[None, :] * cand[:, None] + (num_levels - 1)) // num_levels  # ceil(k*i/L)
    group_mass = np.diff(cs[bounds], axis=1)
    group_nz = np.diff(nz[bounds], axis=1)
    has_group = group_nz > 0
    group_mean = group_mass / np.where(has_group, group_nz, 1)

    c = cs[cand]
    # The tail sum is taken directly (not T - c) so "are there outliers" is an exact test.
    out = np.concatenate([np.cumsum(bins[::-1])[::-1], zero])[cand]
    last = bins[cand - 1]
    p_last = last + out
    nz_q = nz[cand]
    zeros_q = cand - nz_q
    zeros_p = zeros_q - ((last == 0) & (out > 0))
    e_p = eps * zeros_p / (cand - zeros_p)
    e_q = eps * zeros_q / np.maximum(nz_q, 1)
    min_p = np.minimum(prefmin[cand - 1], np.where(p_last > 0, p_last, np.inf))
    min_q = np.where(has_group, group_mean, np.inf).min(axis=1)
    valid = (nz_q > 0) & (e_p < min_p) & (e_q < min_q)

    # sum_{j<i-1, h_j>0} (h_j - e) log(h_j - e), e = e_p: Taylor series in e around each h_j.
    head_min = prefmin[cand - 1]
    ratio = np.where(np.isfinite(head_min), e_p / np.where(np.isfinite(head_min), head_min, 1.0), 0.0)
    use_series = valid & (ratio <= 0.5)
    head = hlogh[cand - 1] - e_p * logh1[cand - 1]
    r_max = float(ratio[use_series].max()) if use_series.any() else 0.0
    if r_max > 0.0:
        terms = int(min(64, max(2, math.ceil(math.log(1e-18) / math.log(r_max)))))
        powers = np.arange(1, terms, dtype=np.float64)  # m - 1 for m = 2..terms
        inv_pow = np.where(positive[None, :], safe[None, :] ** -powers[:, None], 0.0)
        inv_cs = np.concatenate([np.zeros((len(powers), 1)), np.cumsum(inv_pow, axis=1)], axis=1)
        m = powers + 1.0
        coef = (e_p[:, None] ** m[None, :]) / (m * (m - 1.0))[None, :]
        head = head + (coef * inv_cs[:, cand - 1].T).sum(axis=1)
    for r in np.nonzero(valid & ~use_series)[0]:
        h_head = bins[: int(cand[r]) - 1]
        h_head = h_head[h_head > 0] - e_p[r]
        head[r] = float((h_head * np.log(h_head)).sum())

    with np.errstate(divide="ignore", invalid="ignore"):
        p_last_s = np.where(p_last > 0, p_last - e_p, eps)
        plogp = head + p_last_s * np.log(np.where(valid, p_last_s, 1.0))
        q_vals = np.where(has_group, group_mean - e_q[:, None], 1.0)
        q_term = ((group_mass - group_nz * e_p[:, None]) * np.log(np.where(valid[:, None], q_vals, 1.0))).sum(
            axis=1
        )
        last_group = ((cand - 1) * num_levels) // cand
        q_last = q_vals[rows, last_group]
        # Bin i-1 was counted in q_term with weight h_{i-1} - e_p; its real P' also holds the
        # outliers. If it is empty, Q' there is eps and only the outliers' P' sits on it.
        correction = np.where(
            last > 0,
            out * np.log(np.where(valid & (last > 0), q_last, 1.0)),
            p_last_s * math.log(eps),
        )
        kl = (plogp - q_term - correction) / total - math.log(total) + np.log(np.where(c > 0, c, 1.0))
    kl = np.where(valid, kl, np.inf)
    # KL is non-negative; tiny negative values are cancellation residue of the expansion above.
    kl = np.maximum(kl, 0.0)
    return cand, kl.astype(np.float64)


def _entropy_amax(hist: npt.NDArray[np.int64], width: float, num_levels: int) -> float:
    n = len(hist)
    if n <= num_levels:
        # Every bin gets its own level: no clipping threshold can beat keeping the full range.
        return n * width
    stride = max(1, -(-(n - num_levels + 1) // _ENTROPY_MAX_CANDIDATES))
    cand, kl = entropy_divergences(hist, num_levels, stride=stride)
    if not np.isfinite(kl).any():
        return n * width
    # Last argmin, as pytorch-quantization does: on ties prefer the larger range (less clipping).
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return int(cand[best]) * width


def mse_errors(
    hist: npt.ArrayLike,
    width: float,
    candidates: npt.ArrayLike,
    *,
    num_bits: int = 8,
    unsigned: bool = False,
    fp8: bool = False,
) -> npt.NDArray[np.float64]:
    """Expected squared quantize-dequantize error of the histogram mass for each candidate amax.

    Bin centers stand in for the values of a bin (weighted by count). Integer: scale = amax/qmax,
    round-half-even, clip at qmax (only magnitudes matter since the grid is symmetric). fp8 e4m3:
    scale = amax/448 and rounding is torch's float8_e4m3fn cast.
    """
    counts = np.asarray(hist, dtype=np.float64).reshape(-1)
    amaxes = np.asarray(candidates, dtype=np.float64).reshape(-1)
    keep = np.nonzero(counts)[0]  # empty bins contribute nothing; skipping them is the main speedup
    weights = counts[keep]
    centers = (keep.astype(np.float64) + 0.5) * width
    qmax = _FP8_E4M3_MAX if fp8 else float((1 << (num_bits - 1 + int(unsigned))) - 1)
    errors = np.empty(len(amaxes), dtype=np.float64)
    rows_per_chunk = max(1, (1 << 21) // max(len(keep), 1))
    for lo in range(0, len(amaxes), rows_per_chunk):
        scale = amaxes[lo : lo + rows_per_chunk, None] / qmax
        scaled = np.minimum(centers[None, :] / scale, qmax)
        if fp8:
            # Cast straight from float64: going through float32 first could double-round.
            import torch  # only fp8 needs it: its cast is the reference rounding

            q = torch.from_numpy(scaled).to(torch.float8_e4m3fn).to(torch.float64).numpy()
        else:
            q = np.rint(scaled)
        diff = q * scale - centers[None, :]
        errors[lo : lo + rows_per_chunk] = (diff * diff) @ weights
    return errors


def _mse_amax(
    hist: npt.NDArray[np.int64], width: float, *, num_bits: int, unsigned: bool, fp8: bool
) -> float:
    n = len(hist)
    stride = max(1, -(-n // _MSE_MAX_CANDIDATES))
    # Count down from the top edge so the full range (amax = max) is always a candidate.
    cand = np.arange(n, 0, -stride, dtype=np.int64)[::-1]
    errors = mse_errors(hist, width, cand * width, num_bits=num_bits, unsigned=unsigned, fp8=fp8)
    best = len(errors) - 1 - int(np.argmin(errors[::-1]))
    return int(cand[best]) * width


# ---------------------------------------------------------------------- persistence
