"""The one typed state a run's stages read and add to (pipeline/run.py lists the stages in order).

Each stage reads the fields earlier stages filled and adds its own; nothing flows backwards. The state
lives in its own module so that a stage defined elsewhere (the search, in search/study.py) can take it
without importing the run that calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.results import RunResult, VariantResult
from quant_workbench.data.splits import Splits
from quant_workbench.export.graphs import EngineGraphs
from quant_workbench.models.loading import LoadedModel
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.plan import QuantPlan
from quant_workbench.selection import Selection

log = logging.getLogger(__name__)


class StageTimer:
    """`with state.stage("name"):` announces a stage and adds its wall time to `state.timings`."""

    def __init__(self, timings: dict[str, float], say: Callable[[str], None], name: str) -> None:
        self.timings, self.say, self.name = timings, say, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.say(f"[{self.name}]")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # a stage entered twice (one per variant, say) accumulates
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 2)


@dataclass
class RunState:
    recipe: Recipe
    run_dir: Path
    progress: bool = True
    say: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    # data, model
    splits: Splits | None = None
    loaded: LoadedModel | None = None
    plan: QuantPlan | None = None
    training: dict[str, Any] = field(default_factory=dict)  # finetune / qat summaries
    # float export
    example: dict[str, torch.Tensor] = field(default_factory=dict)  # the fidelity checks' inputs
    float_reference: np.ndarray | None = None  # the float PyTorch model's outputs on `example`
    base_key: str = ""  # artifact key of the float model: every later artifact's key includes it
    float_path: Path | None = None
    float_engine_path: Path | None = None  # the graph the float baseline runs as (fused on ONNX Runtime CPU)
    fidelity_float: dict[str, Any] = field(default_factory=dict)
    graphs: EngineGraphs | None = None
    # calibration
    calibrators: dict[str, HistogramCalibrator] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # RunResult.calibration
    channel_amax: dict[str, torch.Tensor] = field(default_factory=dict)
    # variants: every stage that builds one appends it here and, when it can run, its engine graph
    variants: list[VariantResult] = field(default_factory=list)
    engine_paths: dict[str, Path] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # search.json: what the search stage found
    search_choice: str | None = None  # the variant the search selected (preferred in exact ties)
    search_threshold: float | None = None  # the search criterion's accuracy bound on the float model
    quant_plan_rows: list[dict[str, Any]] | None = None  # quant_plan.json (the selected plan)
    # evaluate, benchmark, select
    correct: dict[str, np.ndarray] = field(default_factory=dict)  # per-example correctness by variant (a prefix when stopped early)
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)  # variants the evaluation stopped early, and why
    evaluation: dict[str, Any] = field(default_factory=dict)  # RunResult.evaluation
    benchmark: dict[str, Any] = field(default_factory=dict)  # RunResult.benchmark
    selection: Selection | None = None
    result: RunResult | None = None  # what the report stage wrote; deploy packages it
    warnings: list[str] = field(default_factory=list)  # RunResult.warnings: the log's warnings, kept in the report

    def stage(self, name: str) -> StageTimer:
        return StageTimer(self.timings, self.say, name)

    def warn(self, text: str) -> None:
        """A warning line in the log and in the report (not only a table cell)."""
        log.warning(text)
        if text not in self.warnings:
            self.warnings.append(text)

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def add_variant(self, variant: VariantResult, engine_path: Path | None = None) -> None:
        self.variants.append(variant)
        if engine_path is not None:
            self.engine_paths[variant.name] = engine_path

    # typed access to what an earlier stage must have filled (a stage run out of order fails here, by name)
    def need_splits(self) -> Splits:
        assert self.splits is not None, "the data stage has not run"
        return self.splits

    def need_loaded(self) -> LoadedModel:
        assert self.loaded is not None, "the model stage has not run"
        return self.loaded

    def need_plan(self) -> QuantPlan:
        assert self.plan is not None, "the model stage has not run"
        return self.plan

    def need_float_path(self) -> Path:
        assert self.float_path is not None, "the float export stage has not run"
        return self.float_path

    def need_graphs(self) -> EngineGraphs:
        assert self.graphs is not None, "the float export stage has not run"
        return self.graphs
