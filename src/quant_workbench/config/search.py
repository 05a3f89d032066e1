"""The recipe's `search` section (imported by config/recipe.py; depends on pydantic and config/vocabulary.py only)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from quant_workbench.config.catalog import SCHEMES
from quant_workbench.config.vocabulary import CALIB_METHODS, CalibMethod, Format, Strict, format_label

SearchMethod = CalibMethod
GroupKind = Literal["layer", "kind"]
Objective = Literal["accuracy", "latency", "size"]


_GROUP_KINDS: tuple[GroupKind, ...] = ("layer", "kind")
_OBJECTIVES: tuple[Objective, ...] = ("accuracy", "latency")
_DEFAULT_FORMATS: tuple[Format, ...] = ("int8",)




class CriterionSpec(Strict):
    """Accuracy criterion vs float: exactly one of relative (fraction of float accuracy) or absolute drop."""

    relative: float | None = Field(None, ge=0, lt=1, description="allowed drop as a fraction of float accuracy (0.01 = 1 %)")
    absolute: float | None = Field(None, ge=0, lt=1, description="allowed drop in accuracy points (0.005 = 0.5 pt)")

    @model_validator(mode="after")
    def _one(self) -> CriterionSpec:
        if (self.relative is None) == (self.absolute is None):
            raise ValueError("give exactly one of criterion.relative or criterion.absolute")
        return self

    def threshold(self, float_accuracy: float) -> float:
        if self.relative is not None:
            return float_accuracy * (1.0 - self.relative)
        assert self.absolute is not None
        return float_accuracy - self.absolute

    def describe(self) -> str:
        if self.relative is not None:
            return f"accuracy drop <= {self.relative * 100:g} % of float (relative)"
        return f"accuracy drop <= {self.absolute:g} (absolute)"


class LatencyTarget(Strict):
    """Where a trial's latency is measured (interleaved with float on the recipe's engine)."""

    batch_size: int = Field(1, ge=1)
    seq_length: int | None = Field(None, ge=1, description="default: model.max_seq_length")
    warmup: int = Field(2, ge=0)
    iterations: int = Field(10, ge=1)
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = all cores")


class SearchSpec(Strict):
    methods: list[SearchMethod] = Field(default_factory=lambda: list(CALIB_METHODS), min_length=1)
    percentiles: list[float] = Field(default_factory=lambda: [99.9, 99.99, 99.999], min_length=1)
    groups: list[GroupKind] = Field(default_factory=lambda: list(_GROUP_KINDS), min_length=1, description="layer = per encoder layer; kind = per op kind")
    criterion: CriterionSpec = Field(default_factory=lambda: CriterionSpec(relative=0.01))
    objectives: list[Objective] = Field(default_factory=lambda: list(_OBJECTIVES), min_length=1)
    latency: LatencyTarget = Field(default_factory=LatencyTarget)
    sensitivity: bool = True
    fallback: bool = Field(True, description="greedy float fallback from all-quantized (needs sensitivity)")
    analysis_method: SearchMethod | None = Field(None, description="calibration method of sensitivity + fallback; default: first of methods")
    max_trials: int = Field(20, ge=0, description="Optuna trials (finished ones, all workers together)")
    timeout_s: float | None = Field(None, gt=0, description="stop starting new trials after this many seconds (this worker)")
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///<run dir>/study.db")
    study_name: str | None = Field(None, description="default: <recipe name>-<run id>")
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    seed: int = 0
    check_fidelity: bool = Field(False, description="run the export fidelity checks on every trial (slower)")
    formats: list[Format] = Field(
        default_factory=lambda: list(_DEFAULT_FORMATS), min_length=1,
        description="quantization formats the study may pick per trial (fp8 = E4M3; needs export.opset >= 19); sensitivity and fallback use int8",
    )
    smoothquant_alphas: list[float] = Field(
        default_factory=list,
        description="INT8 trials may also apply SmoothQuant with one of these alphas (or none); one extra calibration pass per alpha, cached",
    )

    @field_validator("methods", "percentiles", "groups", "objectives", "formats", "smoothquant_alphas")
    @classmethod
    def _unique(cls, v: list[object]) -> list[object]:
        if len(set(v)) != len(v):
            raise ValueError("entries must not repeat")
        return v

    @field_validator("percentiles")
    @classmethod
    def _pct(cls, v: list[float]) -> list[float]:
        if any(not 50.0 < p < 100.0 for p in v):
            raise ValueError("percentiles must lie in (50, 100)")
        return v

    @field_validator("smoothquant_alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError("SmoothQuant alphas must lie in [0, 1]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if "int8" not in self.formats:
            raise ValueError("search.formats must include int8: sensitivity and fallback run on INT8 (add int8; fp8 stays a study dimension)")
        if "fp8" in self.formats and not self.fp8_methods:
            rejected = ", ".join(SCHEMES.get("fp8").rejects_methods)
            raise ValueError(f"search.formats has fp8 but search.methods has only {rejected}, which FP8 cannot use; add another method (e.g. max or mse)")
        if self.smoothquant_alphas and "int8" not in self.formats:
            raise ValueError("search.smoothquant_alphas apply to INT8 trials, but search.formats has no int8")
        if "accuracy" not in self.objectives:
            raise ValueError("search.objectives must include accuracy")
        if self.fallback and not self.sensitivity:
            raise ValueError("search.fallback orders groups by sensitivity; set search.sensitivity: true or fallback: false")
        return self

    @property
    def method_for_analysis(self) -> SearchMethod:
        return self.analysis_method or self.methods[0]

    @property
    def fp8_methods(self) -> list[SearchMethod]:
        """The methods the fp8 scheme accepts (its declaration in config/catalog.py says which it rejects and why)."""
        return [m for m in self.methods if m not in SCHEMES.get("fp8").rejects_methods]


def scheme_label(config: dict[str, Any]) -> str:
    """INT8, INT8 + SmoothQuant 0.5, FP8 E4M3: the format dimension of a search configuration."""
    return format_label(config.get("format", "int8"), config.get("alpha"))
