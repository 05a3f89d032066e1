"""Quantization schemes and the one way a model is put into a scheme's state.

A scheme is an entry of `quantization.compare` (or `format` + `smoothquant`): a number format
(config/vocabulary.py `Format`: int8 | fp8) plus what is done to the model for it, a SmoothQuant rewrite
(one scheme per alpha). Its facts are declared in config/catalog.py `SCHEMES`; every calibrated scheme
gets one variant per calibration method, all in the same report.

:class:`SchemeState` is the modifier (llm-compressor's apply / undo lifecycle): `apply(model)` switches
the quantizers to the scheme's format and, for SmoothQuant, rewrites the weights behind the
float-equivalence gate and collects the statistics of the rewritten model again; it returns what a
model in that state needs (:class:`Applied`: the statistics, the fidelity summary, the cache key).
`undo()` puts the model back bit for bit. The PTQ stage (:func:`scheme_variants`), the search's trials
(search/sensitivity.py) and QAT (pipeline/training.py) all enter a scheme through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from quant_workbench.config.catalog import SCHEMES
from quant_workbench.config.recipe import CalibMethod, QuantSpec, SchemeName
from quant_workbench.config.vocabulary import Format, format_prefix
from quant_workbench.core.artifacts import hash_json
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.quantize.apply import quantizers, set_format
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.quantizer import QuantFormat
from quant_workbench.quantize.smoothquant import SmoothState, checked_smoothquant

# Another calibration pass of the same model in another state (a SmoothQuant rewrite), cached by its
# argument: (statistics, info with `cache_hit` and `cache_file`).
Recalibrate = Callable[[dict[str, Any]], tuple[dict[str, HistogramCalibrator], dict[str, Any]]]

# the scheme a SmoothQuant alpha outside `quantization.compare` belongs to (a search trial's)
_SMOOTHQUANT = "int8-smoothquant"


@dataclass(frozen=True)
class Scheme:
    """One scheme as a run builds it: its registered name, its format and, for SmoothQuant, one alpha."""

    name: SchemeName
    kind: Format
    alpha: float | None = None  # None: no SmoothQuant rewrite
    ffn_out: bool = False  # SmoothQuant also on FFN-out's input (smoothquant.ffn_out)

    @property
    def prefix(self) -> str:
        """Variant names are `<prefix>-<method>`: int8-mse, int8-sq0.5-mse, fp8-mse (a scheme's own name, or
        for SmoothQuant its precision and alpha)."""
        return format_prefix(self.kind if self.alpha is not None else self.name, self.alpha)

    @property
    def precision(self) -> Literal["int8", "fp8"]:
        return self.kind


def expand_schemes(spec: QuantSpec) -> list[Scheme]:
    """The calibrated schemes of a recipe, in order, one per SmoothQuant alpha."""
    out: list[Scheme] = []
    for name in spec.schemes:
        declared = SCHEMES.get(name)
        if not declared.calibrated:  # pipeline/run.py builds it (int8-dynamic: from the fused float graph)
            continue
        if declared.smoothquant:
            assert spec.smoothquant is not None  # the recipe validator guarantees it
            out += [Scheme(name, declared.precision, alpha=a, ffn_out=spec.smoothquant.ffn_out) for a in spec.smoothquant.alphas]
        else:
            out.append(Scheme(name, declared.precision))
    return out


def scheme_for(kind: Format, alpha: float | None, spec: QuantSpec) -> Scheme:
    """A scheme named by its format and SmoothQuant alpha rather than by `compare` (a search trial's, QAT's
    int8); SmoothQuant takes the recipe's `quantization.smoothquant.ffn_out` when that section is set."""
    if alpha is None:
        return Scheme(kind, kind)
    return Scheme(_SMOOTHQUANT, kind, alpha=alpha, ffn_out=spec.smoothquant is not None and spec.smoothquant.ffn_out)


@dataclass(frozen=True)
class SmoothQuantInputs:
    """What a SmoothQuant state is built from: the float-equivalence gate's example batch and tolerance
    (export.float_tolerance), the per-channel input statistics and the calibration pass to run again."""

    example: dict[str, torch.Tensor]
    channel_amax: dict[str, torch.Tensor]
    recalibrate: Recalibrate
    float_tolerance: float


@dataclass
class Applied:
    """What a model in a scheme's state needs."""

    calibrators: dict[str, HistogramCalibrator]  # the statistics that match the state
    fidelity: dict[str, Any] = field(default_factory=dict)  # merged into each variant's fidelity
    key: dict[str, Any] = field(default_factory=dict)  # joins each variant's ONNX cache key
    # set by scheme_variants when the state could not be entered: the scheme's variants fail with it
    error: str | None = None


class FloatEquivalenceError(WorkbenchError):
    """The gate every SmoothQuant state passes before it is used: in float, the rewrite must leave the model's
    outputs unchanged. `fidelity` holds the rewrite's summary and the failed check."""

    def __init__(self, state: SmoothState, check: dict[str, Any]) -> None:
        super().__init__(
            f"SmoothQuant (alpha {state.alpha:g}) changed the float model's outputs by {check['float_max_abs_diff']:.3g} > "
            f"{check['tolerance']:g}: the rewrite is not exact, so nothing is built on it"
        )
        self.fidelity = {"smoothquant": {**state.summary(), "float_equivalence": check}}


class SchemeState:
    """The modifier of one scheme: `apply(model)` puts a prepared model into the scheme's state and returns
    what the state needs; `undo()` restores the quantizer formats and the weights it changed, bit for bit.

    `calibrators` are the statistics of the unchanged model (they serve every format: statistics are format
    independent). A SmoothQuant scheme needs `smoothquant`; its groups are the Linears whose input quantizer
    is enabled when apply runs.
    """

    def __init__(self, scheme: Scheme, calibrators: dict[str, HistogramCalibrator], *, smoothquant: SmoothQuantInputs | None = None) -> None:
        self.scheme, self.calibrators, self.smoothquant = scheme, calibrators, smoothquant
        self._model: nn.Module | None = None
        self._formats: dict[str, QuantFormat] = {}
        self._smooth: SmoothState | None = None

    def apply(self, model: nn.Module) -> Applied:
        """Enter the state; on any failure (a failed gate: FloatEquivalenceError) the model is left as it was."""
        if self._model is not None:
            raise RuntimeError(f"scheme {self.scheme.prefix} is already applied; undo() first")
        self._model = model
        self._formats = {n: q.fmt for n, q in quantizers(model).items()}
        try:
            set_format(model, self.scheme.kind)
            key: dict[str, Any] = {"format": self.scheme.kind} if self.scheme.kind != "int8" else {}
            if self.scheme.alpha is None:
                return Applied(self.calibrators, key=key)
            return self._apply_smoothquant(model, self.scheme.alpha, key)
        except BaseException:
            self.undo()
            raise

    def undo(self) -> None:
        """Leave the state (a no-op when it is not applied)."""
        if self._model is None:
            return
        if self._smooth is not None:
            self._smooth.restore()
            self._smooth = None
        for name, q in quantizers(self._model).items():
            fmt = self._formats.get(name)
            if fmt is not None and q.fmt != fmt:
                q.set_format(fmt)
        self._model, self._formats = None, {}

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[Applied]:
        """The model in the scheme's state for the duration of the block."""
        state = self.apply(model)
        try:
            yield state
        finally:
            self.undo()

    def _apply_smoothquant(self, model: nn.Module, alpha: float, key: dict[str, Any]) -> Applied:
        sq = self.smoothquant
        if sq is None or not sq.channel_amax:
            raise WorkbenchError("SmoothQuant needs per-channel statistics and a calibration pass; none were given.")
        self._smooth, check = checked_smoothquant(model, sq.example, sq.channel_amax, alpha, sq.float_tolerance, ffn_out=self.scheme.ffn_out)
        smooth = self._smooth
        if not check["passed"]:
            raise FloatEquivalenceError(smooth, check)
        calibrators, info = sq.recalibrate({"smoothquant": {"alpha": alpha, "groups": [g.describe() for g in smooth.groups]}})
        factors = {n: s.tolist() for n, s in sorted(smooth.factors.items())}
        fidelity = {
            "smoothquant": {
                **smooth.summary(),
                "float_equivalence": check,
                "input_range": _input_range(smooth, self.calibrators, calibrators),
                "calibration_cache": info.get("cache_file"),
                "calibration_cache_hit": info.get("cache_hit"),
            }
        }
        return Applied(calibrators, fidelity=fidelity, key={**key, "smoothquant": {"alpha": alpha, "factors": hash_json(factors)}})


def _input_range(smooth: SmoothState, before: dict[str, HistogramCalibrator], after: dict[str, HistogramCalibrator]) -> dict[str, Any]:
    """How much the rewrite shrank the smoothed Linears' input ranges (the point of SmoothQuant)."""
    ratios: list[float] = []
    amax_before: list[float] = []
    amax_after: list[float] = []
    for g in smooth.groups:
        for lin in g.linears:
            qname = f"{lin}.input_quantizer"
            if qname in before and qname in after and after[qname].amax_max > 0:
                amax_before.append(before[qname].amax_max)
                amax_after.append(after[qname].amax_max)
                ratios.append(amax_before[-1] / amax_after[-1])
    return {
        "max_amax_before": max(amax_before, default=0.0),
        "max_amax_after": max(amax_after, default=0.0),
        "median_reduction": float(np.median(ratios)) if ratios else None,
        "reduced_inputs": sum(r > 1.0 for r in ratios),
        "inputs": len(ratios),
    }


class MemoisedRecalibrate:
    """A Recalibrate that collects each distinct state's statistics once per run: the search's trials enter
    the same SmoothQuant alpha many times. `passes` counts the passes that were not read from the cache."""

    def __init__(self, recalibrate: Recalibrate) -> None:
        self._recalibrate = recalibrate
        self._done: dict[str, tuple[dict[str, HistogramCalibrator], dict[str, Any]]] = {}
        self.passes = 0

    def __call__(self, extra: dict[str, Any]) -> tuple[dict[str, HistogramCalibrator], dict[str, Any]]:
        key = hash_json(extra)
        if key not in self._done:
            self._done[key] = self._recalibrate(extra)
            self.passes += 0 if self._done[key][1].get("cache_hit") else 1
        return self._done[key]

    def __len__(self) -> int:
        return len(self._done)


def scheme_variants(
    spec: QuantSpec,
    model: nn.Module,
    calibrators: dict[str, HistogramCalibrator],
    smoothquant: SmoothQuantInputs,
    *,
    say: Callable[[str], None] = print,
) -> Iterator[tuple[Scheme, Applied, CalibMethod]]:
    """Yield (scheme, applied state, method) with the model in that scheme's state while they are consumed
    (pipeline/run.py's PTQ loop). A scheme that cannot be entered yields its methods with `applied.error`
    set, so its variants are recorded as failed and the run goes on."""
    methods: list[CalibMethod] = list(spec.calibration.methods)
    for scheme in expand_schemes(spec):
        modifier = SchemeState(scheme, calibrators, smoothquant=smoothquant)
        if scheme.alpha is not None:
            say(f"[smoothquant alpha {scheme.alpha:g}]")
        try:
            applied = modifier.apply(model)
        except FloatEquivalenceError as exc:
            applied = Applied({}, fidelity=exc.fidelity, error=exc.message)
        except Exception as exc:  # the scheme's variants are recorded as failed; the run goes on
            applied = Applied({}, error=f"{scheme.prefix} could not be prepared: {type(exc).__name__}: {exc}")
        try:
            for method in methods:
                yield scheme, applied, method
        finally:
            modifier.undo()
