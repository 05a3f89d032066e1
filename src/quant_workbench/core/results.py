"""Results as plain, serializable data: the contract between evaluate/benchmark and report/deploy.

`RunResult.to_dict()` is exactly what `report.json` holds (schema documented in README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# A variant's precision: its Format for quantized variants; for float rows the precision the engine
# computes them in (float32 on ONNX Runtime CPU, fp16 for a TensorRT FP16 engine, bf16 where an engine
# runs float models in bfloat16).
Precision = Literal["float32", "fp16", "bf16", "int8", "fp8"]
FLOAT_PRECISIONS: tuple[str, ...] = ("float32", "fp16", "bf16")


# v2 (issue 10): intervals. LatencyStats gains p50_low_ms/p50_high_ms, samples_ms and stop; VariantResult
# gains reference, intervals and speedup_interval_vs_float. v1 files still load (the new fields default).
# v3 (issue 11): RunResult gains `search` (the search stage's summary, search.json), so a report rendered
# again from report.json alone (quantize deploy) keeps its Search section.
# v4 (issue 16): RunResult gains `benchmark` (seed, per-round orders, stops, the A/A control, session settings)
# and `evaluation` (blocks, looks, early stops, which split made which decision); LatencyStats gains the
# end-to-end samples of engines timed without their copies (TensorRT). `selection` is the margin rule's
# record and variants' `intervals` carry Tango intervals. v1-v3 files still load (the new fields default).
SCHEMA_VERSION = 4


@dataclass
class LatencyStats:
    batch_size: int
    seq_length: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_seq_per_s: float  # sequences per second at the median latency
    p50_low_ms: float | None = None  # bootstrap interval of p50 over iterations (stats.median_interval)
    p50_high_ms: float | None = None
    # per-iteration wall times in round order; runners timed in one benchmark share the index, which
    # is what pairs them for a speed-up interval (stats.ratio_interval)
    samples_ms: list[float] = field(default_factory=list)
    # why iterating stopped: "fixed" | "resolved" (every speed comparison that could change the selection is
    # resolved against the margin) | "tolerance" | "time cap" | "iteration cap"
    stop: str | None = None
    # engines timed without host<->device copies (TensorRT, CUDA events) keep the wall time with them here
    end_to_end_samples_ms: list[float] = field(default_factory=list)
    end_to_end_p50_ms: float | None = None

    @property
    def key(self) -> str:
        return f"b{self.batch_size}xs{self.seq_length}"


@dataclass
class VariantResult:
    name: str  # "float", "int8-max", "int8-entropy", ...
    precision: Precision
    calibration_method: str | None = None
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # accuracy, macro_f1, agreement, cosine_to_float
    fidelity: dict[str, Any] = field(default_factory=dict)
    latency: list[LatencyStats] = field(default_factory=list)
    speedup_vs_float: dict[str, float] = field(default_factory=dict)  # latency key -> float p50 / variant p50
    size_bytes: int | None = None
    engine: dict[str, Any] = field(default_factory=dict)  # provider, integer matmul count, ...
    artifacts: dict[str, str] = field(default_factory=dict)  # relative to the run folder
    # a standard tool's result shown for comparison: evaluated and timed like a variant, never selected
    reference: bool = False
    # stats.prediction_statistics: {"level", "n", "accuracy": [lo, hi], "macro_f1": [lo, hi], "vs_float": {...}}
    intervals: dict[str, Any] = field(default_factory=dict)
    speedup_interval_vs_float: dict[str, list[float]] = field(default_factory=dict)  # latency key -> [low, high]
    # issue 17: the engine that scores and times the row (engine.runtime, or one of engine.runtimes; the
    # name of a row on another than the reference engine ends in @<runtime>) and what that engine computes
    # the row's float parts in (OpenVINO's INFERENCE_PRECISION_HINT: f32 | bf16; "default" = the engine's
    # own choice, the reference rows of a standard path; None = the engine has no such choice)
    runtime: str | None = None
    inference_precision: str | None = None

    def latency_at(self, batch_size: int, seq_length: int) -> LatencyStats | None:
        return next((x for x in self.latency if x.batch_size == batch_size and x.seq_length == seq_length), None)


@dataclass
class RunResult:
    recipe_name: str
    run_id: str
    task: str
    primary_metric: str  # "accuracy"
    created_utc: str
    versions: dict[str, str]
    hardware: dict[str, Any]
    recipe_hash: str
    data: dict[str, Any]  # split sizes, label names, data hash
    calibration: dict[str, Any]  # cache key, cache hit, per-method amax summary, seconds
    variants: list[VariantResult]
    best_variant: str | None = None
    selection_rule: str = ""
    # selection.Selection.to_dict(): rule, level, accuracy / speed tie groups, reason (empty in v1 reports)
    selection: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # finetune / qat summaries (quant_workbench.pipeline.training)
    # filled after the run by later stages: "triton" (repository written by deploy), "tensorrt_engines"
    # (per variant: the engine inspector's layer summary), "triton_benchmark" (bench/triton_latency.py)
    deployment: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # search/study.py's summary when the recipe has a search section
    # what the run could do but the reader must know: an accepted untrained head, an evaluation split too
    # small to decide at the margin, a requested engine graph that did not run (issue 20)
    warnings: list[str] = field(default_factory=list)
    # benchmark.benchmark_variants' record: seed, per-round orders, stops and pending comparisons per shape,
    # the A/A control and the sessions' settings (empty before v4 and without a benchmark)
    benchmark: dict[str, Any] = field(default_factory=dict)
    # evaluate.evaluate_variants' record: blocks, looks and boundaries, early stops, splits and the decisions each made
    evaluation: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        variants = []
        for v in d.pop("variants"):
            v = dict(v)
            v["latency"] = [LatencyStats(**x) for x in v.get("latency", [])]
            variants.append(VariantResult(**v))
        # a v1 report says schema_version 1; the object read from it is still that version's content
        return cls(variants=variants, **d)


BASELINE = "float"


def variant_named(variants: Sequence[VariantResult], name: str) -> VariantResult | None:
    return next((v for v in variants if v.name == name), None)


def accuracy_reference(variants: Sequence[VariantResult], baseline: str = BASELINE) -> VariantResult | None:
    """The row every paired Δ accuracy is measured against (its examples, its predictions)."""
    return variant_named(variants, baseline)
