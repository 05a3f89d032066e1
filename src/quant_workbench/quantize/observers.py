"""One-pass activation calibration: running abs-max plus an abs-value histogram per quantizer.

A single forward pass over the calibration set fills one :class:`HistogramCalibrator` per
quantizer; every amax method (max / percentile / entropy / mse) is then computed from the stored
statistics, so switching methods, or re-running a sweep over methods, never re-runs the model.
The statistics are saved to one ``.npz`` (:func:`save_stats`) that is byte-for-byte reproducible.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from quant_workbench.config.catalog import CALIBRATORS
from quant_workbench.config.vocabulary import CalibMethod
from quant_workbench.core.errors import WorkbenchError

_FORMAT = "quant_workbench.calib_stats/1"
_FORMAT_KEY = "__format__"
_META_KEY = "__meta__"
_SEP = "::"
# Fixed zip timestamp: np.savez stamps entries with the current time, which would make two saves
# of identical statistics differ; 1980-01-01 is the earliest date the zip format can represent.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# Bins are merged pairwise once an extended histogram would exceed num_bins * this factor, so one
# huge outlier late in calibration cannot make the histogram (and the saved stats) grow unboundedly.
_MAX_EXTENSION_FACTOR = 128
# Larger tensors are binned in chunks to bound the temporary float/int copies to ~200 MB.
_COLLECT_CHUNK = 1 << 24
# Upper bound on amax candidates the mse search evaluates (each costs one pass over the nonzero
# bins); with the default 2048-bin working histogram every bin edge is a candidate.
_MSE_MAX_CANDIDATES = 2048
# Upper bound on entropy candidates; each is O(levels), so this is generous.
_ENTROPY_MAX_CANDIDATES = 4096
_FP8_E4M3_MAX = 448.0
# Smoothing constant of MXNet's / ONNX Runtime's _smooth_distribution (in counts, not probabilities).
_KL_SMOOTH_EPS = 1e-4


class CalibrationError(WorkbenchError, ValueError):
    """Calibration statistics are unusable (NaN/Inf seen, no data, or an all-zero range).

    Subclasses ``WorkbenchError`` so the CLI reports it as a user-fixable problem, and
    ``ValueError`` because it is fundamentally a bad-value condition for library callers.
    """


def _ignore_entry(quantizer: str) -> str:
    """The quantization.ignore entry that keeps a quantizer's op float: its module, as the plan names it."""
    module = quantizer.rsplit(".", 1)[0]
    return f"'{module.removeprefix('hf.')}'"


class HistogramCalibrator:
    """Collects running abs-max AND an abs-value histogram of every tensor it sees, in ONE pass,
    so that every method can be computed afterwards without re-running the model.

    Binning scheme: the bin width is fixed from the first non-zero batch (``first_max / num_bins``)
    and bins of the same width are appended when a later batch exceeds the covered range (as
    NVIDIA Model Optimizer's HistogramCalibrator does). Keeping the width fixed means earlier counts
    never have to be re-binned (re-binning a histogram into unaligned bins is lossy and order
    dependent), so the result is exact and deterministic for a given input order. If the extended
    histogram would exceed ``num_bins * 128`` bins, adjacent pairs are merged (width doubles):
    bin edges stay aligned at 0, so this coarsening is also exact.
    """

    def __init__(self, name: str, num_bins: int = 2048) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.name = name
        self.num_bins = int(num_bins)
        self.reset()

    def reset(self) -> None:
        self._hist: npt.NDArray[np.int64] | None = None
        self._width = 0.0
        self._amax = 0.0
        self._num_seen = 0
        # Zeros seen before any non-zero batch: no bin width exists yet to place them with.
        self._pending_zeros = 0

    # ------------------------------------------------------------------ collection
    @property
    def amax_max(self) -> float:
        return self._amax

    @property
    def num_collected(self) -> int:
        """Number of scalar values seen so far."""
        return self._num_seen

    @property
    def bin_width(self) -> float:
        return self._width

    @property
    def histogram(self) -> npt.NDArray[np.int64]:
        """A copy of the counts; bin ``i`` covers ``[i * bin_width, (i + 1) * bin_width)``."""
        if self._hist is None:
            return np.zeros(0, dtype=np.int64)
        return self._hist.copy()

    def collect(self, x: torch.Tensor) -> None:
        x = x.detach()
        n = x.numel()
        if n == 0:
            return
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        lo, hi = torch.aminmax(x)
        lo_f, hi_f = (float(v) for v in torch.stack([lo, hi]).cpu().tolist())
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
            raise CalibrationError(
                f"calibration saw NaN/Inf in {self.name} (batch min={lo_f}, max={hi_f}).",
                "the float model itself produces NaN/Inf on the calibration data (calibration runs in float32): check its "
                f"weights for NaN/Inf and the inputs; to keep just this op in float, add {_ignore_entry(self.name)} to quantization.ignore",
            )
        batch_amax = max(-lo_f, hi_f)
        self._num_seen += n
        self._amax = max(self._amax, batch_amax)
        if batch_amax == 0.0:
            if self._hist is None:
                self._pending_zeros += n
            else:
                self._hist[0] += n
            return
        if self._hist is None:
            self._width = batch_amax / self.num_bins
            self._hist = np.zeros(self.num_bins, dtype=np.int64)
            self._hist[0] += self._pending_zeros
            self._pending_zeros = 0
        else:
            self._ensure_range(batch_amax)
        assert self._hist is not None
        nbins = len(self._hist)
        flat = x.reshape(-1)
        counts = np.zeros(nbins, dtype=np.int64)
        for start in range(0, n, _COLLECT_CHUNK):
            chunk = flat[start : start + _COLLECT_CHUNK]
            # Truncation == floor for non-negative values; the clamp puts the range's closed top
            # edge (the max itself, or float rounding just above it) into the last bin, and runs
            # before the int cast so an overflowing quotient (denormal width) cannot wrap around.
            # int32 indices halve the memory traffic versus int64 (nbins <= num_bins * 128 fits).
            idx = chunk.abs().div_(self._width).clamp_(max=nbins - 1).to(torch.int32)
            counts += torch.bincount(idx, minlength=nbins).cpu().numpy().astype(np.int64, copy=False)
        self._hist += counts

    def _ensure_range(self, amax: float) -> None:
        assert self._hist is not None
        if amax <= len(self._hist) * self._width:
            return
        max_bins = self.num_bins * _MAX_EXTENSION_FACTOR
        need = self._bins_needed(amax)
        while need > max_bins:
            self._hist = _merge_bins(self._hist, 2)
            self._width *= 2.0
            need = self._bins_needed(amax)
        if need > len(self._hist):
            self._hist = np.concatenate([self._hist, np.zeros(need - len(self._hist), dtype=np.int64)])

    def _bins_needed(self, amax: float) -> int:
        need = math.ceil(amax / self._width)
        if need * self._width < amax:  # float rounding in the division
            need += 1
        return need

    # ------------------------------------------------------------------ amax
    def compute_amax(
        self,
        method: CalibMethod,
        *,
        percentile: float = 99.99,
        num_bits: int = 8,
        unsigned: bool = False,
        fp8: bool = False,
    ) -> float:
        amax_method = CALIBRATORS.get(method)  # an unknown name fails before the statistics are checked
        if self._num_seen == 0:
            raise CalibrationError(
                f"calibration collected no data for {self.name}.",
                "the module never ran during calibration (an unused branch); keep it float: add "
                f"{_ignore_entry(self.name)} to quantization.ignore",
            )
        if self._hist is None or self._amax == 0.0:
            raise CalibrationError(
                f"calibration saw only zeros for {self.name} ({self._num_seen} values), so no scale exists.",
                f"this input is always zero; keep it float: add {_ignore_entry(self.name)} to quantization.ignore",
            )
        # Histogram methods return bin edges; the top edge can lie a fraction of a bin above the
        # true max, and clipping at the true max is lossless, so never exceed it.
        return float(min(amax_method(self, percentile=percentile, num_bits=num_bits, unsigned=unsigned, fp8=fp8), self._amax))

    def _working_hist(self) -> tuple[npt.NDArray[np.int64], float]:
        """The histogram downsampled to at most ``num_bins`` bins.

        Entropy calibration is defined (TensorRT) on a ``num_bins`` histogram of [0, max]; an
        extended histogram is merged back to that resolution so the method and its cost do not
        depend on how often the range grew during collection.
        """
        assert self._hist is not None
        factor = -(-len(self._hist) // self.num_bins)
        if factor <= 1:
            return self._hist, self._width
        return _merge_bins(self._hist, factor), self._width * factor

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, npt.NDArray[Any] | float | int]:
        hist = self._hist if self._hist is not None else np.zeros(0, dtype=np.int64)
        return {
            "hist": hist.astype(np.int64, copy=True),
            "width": float(self._width),
            "amax": float(self._amax),
            "num_bins": int(self.num_bins),
            "num_seen": int(self._num_seen),
            "pending_zeros": int(self._pending_zeros),
        }

    @classmethod
    def from_state(cls, name: str, state: Mapping[str, Any]) -> HistogramCalibrator:
        missing = {"hist", "width", "amax", "num_bins", "num_seen", "pending_zeros"} - set(state)
        if missing:
            raise ValueError(f"calibrator state for {name} is missing {sorted(missing)}")
        calib = cls(name, num_bins=int(np.asarray(state["num_bins"])))
        hist = np.asarray(state["hist"], dtype=np.int64).reshape(-1)
        calib._hist = hist.copy() if hist.size else None
        calib._width = float(np.asarray(state["width"]))
        calib._amax = float(np.asarray(state["amax"]))
        calib._num_seen = int(np.asarray(state["num_seen"]))
        calib._pending_zeros = int(np.asarray(state["pending_zeros"]))
        return calib


# ---------------------------------------------------------------------- amax methods
# Declaration order is the recipe's default order of quantization.calibration.methods.


@CALIBRATORS.register("max")
def _max_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    return calib._amax


@CALIBRATORS.register("percentile")
def _percentile_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    assert calib._hist is not None
    return _percentile_edge(calib._hist, calib._width, percentile)


@CALIBRATORS.register("entropy")
def _kl_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    if fp8:
        raise ValueError(
            "entropy (KL) calibration models uniformly spaced integer levels and does not apply "
            "to fp8; use 'max', 'percentile' or 'mse' for fp8 quantizers"
        )
    hist, width = calib._working_hist()
    return _entropy_amax(hist, width, _num_levels(num_bits, unsigned))


@CALIBRATORS.register("mse")
def _min_mse_amax(calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float:
    hist, width = calib._working_hist()
    return _mse_amax(hist, width, num_bits=num_bits, unsigned=unsigned, fp8=fp8)


# ---------------------------------------------------------------------- histogram math
def _num_levels(num_bits: int, unsigned: bool) -> int:
    if num_bits < 2:
        raise ValueError(f"num_bits must be >= 2, got {num_bits}")
    return 1 << (num_bits - 1 + int(unsigned))


def _merge_bins(hist: npt.NDArray[np.int64], factor: int) -> npt.NDArray[np.int64]:
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
def save_stats(path: Path, calibrators: dict[str, HistogramCalibrator], meta: dict[str, str]) -> None:
    """Write all calibrators' statistics to one ``.npz``, atomically and reproducibly.

    Entries are written in sorted order with a fixed timestamp (np.savez would stamp wall-clock
    time), so identical statistics give identical bytes; a temp file in the target directory plus
    ``os.replace`` means readers never see a half-written file. The dict keys are the names stored
    (and restored by :func:`load_stats`); ``meta`` is stored as one sorted-key JSON string.
    """
    path = Path(path)
    arrays: dict[str, npt.NDArray[Any]] = {
        _FORMAT_KEY: np.array(_FORMAT),
        _META_KEY: np.array(json.dumps({str(k): str(v) for k, v in meta.items()}, sort_keys=True)),
    }
    for name, calib in calibrators.items():
        for field, value in calib.state().items():
            arrays[f"{name}{_SEP}{field}"] = np.asarray(value)

    path.parent.mkdir(parents=True, exist_ok=True)
    from quant_workbench.core.artifacts import make_shareable, temp_prefix

    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        make_shareable(tmp_name)  # mkstemp creates 0600; stats are an ordinary shareable artifact
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for key in sorted(arrays):
                    info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, arrays[key], allow_pickle=False)
                    zf.writestr(info, buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def load_stats(path: Path) -> tuple[dict[str, HistogramCalibrator], dict[str, str]]:
    path = Path(path)
    fields: dict[str, dict[str, npt.NDArray[Any]]] = {}
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.files)
        if _FORMAT_KEY not in keys or str(data[_FORMAT_KEY]) != _FORMAT:
            raise ValueError(f"{path} is not a quant-workbench calibration stats file ({_FORMAT})")
        meta_raw = json.loads(str(data[_META_KEY])) if _META_KEY in keys else {}
        for key in keys:
            if key in (_FORMAT_KEY, _META_KEY):
                continue
            if _SEP not in key:
                raise ValueError(f"{path}: unexpected entry {key!r}")
            name, field = key.rsplit(_SEP, 1)
            fields.setdefault(name, {})[field] = data[key]
    calibrators = {
        name: HistogramCalibrator.from_state(name, state) for name, state in sorted(fields.items())
    }
    meta = {str(k): str(v) for k, v in meta_raw.items()}
    return calibrators, meta


# ---------------------------------------------------------------------- weights
def per_channel_amax(weight: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Abs max over every dim except ``axis`` (float32, shape ``(weight.shape[axis],)``)."""
    w = weight.detach()
    if w.dim() == 0:
        raise ValueError("per_channel_amax needs a tensor with at least one dimension")
    axis = axis % w.dim()
    channels = w.shape[axis]
    if w.numel() == 0:
        raise ValueError(f"per_channel_amax got an empty tensor of shape {tuple(w.shape)}")
    flat = w.movedim(axis, 0).reshape(channels, -1)
    return flat.abs().amax(dim=1).to(torch.float32)
