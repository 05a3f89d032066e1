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

from quant_workbench.config.vocabulary import HF_PREFIX, CalibMethod
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.quantize.methods import AMAX_METHODS, merge_bins

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


class CalibrationError(WorkbenchError, ValueError):
    """Calibration statistics are unusable (NaN/Inf seen, no data, or an all-zero range).

    Subclasses ``WorkbenchError`` so the CLI reports it as a user-fixable problem, and
    ``ValueError`` because it is fundamentally a bad-value condition for library callers.
    """


def _ignore_entry(quantizer: str) -> str:
    """The quantization.ignore entry that keeps a quantizer's op float: its module, as the plan names it."""
    module = quantizer.rsplit(".", 1)[0]
    return f"'{module.removeprefix(HF_PREFIX)}'"


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
            self._hist = merge_bins(self._hist, 2)
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
        amax_method = AMAX_METHODS.get(method)  # an unknown name fails before the statistics are checked
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

    def working_histogram(self) -> tuple[npt.NDArray[np.int64], float]:
        """The histogram downsampled to at most ``num_bins`` bins.

        Entropy calibration is defined (TensorRT) on a ``num_bins`` histogram of [0, max]; an
        extended histogram is merged back to that resolution so the method and its cost do not
        depend on how often the range grew during collection.
        """
        assert self._hist is not None
        factor = -(-len(self._hist) // self.num_bins)
        if factor <= 1:
            return self._hist, self._width
        return merge_bins(self._hist, factor), self._width * factor

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
