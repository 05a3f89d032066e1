"""Evaluate one configuration end to end, per-group sensitivity, and the greedy float fallback.

A configuration = calibration method (+ percentile) x which layer groups stay float. Evaluating it
toggles the prepared model's quantizers (no re-swap), sets scales from the cached calibration
statistics (never a new calibration pass), exports the Q/DQ ONNX (the real artifact), scores it on
ONNX Runtime and times it interleaved with float at the search's batch x sequence. Results are kept
per configuration key under `search/trials/`, so a repeated or resumed configuration costs nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quant_workbench.config.recipe import BenchmarkSpec, Recipe
from quant_workbench.core.artifacts import (
    artifact_is_current,
    cached,
    hash_json,
    onnx_size,
    write_json,
)
from quant_workbench.core.results import VariantResult
from quant_workbench.data.splits import Splits
from quant_workbench.export.fidelity import qdq_fidelity
from quant_workbench.export.graphs import EngineGraphs
from quant_workbench.export.qdq import export_onnx, plan_names
from quant_workbench.measure.accuracy import (
    Scorer,
    length_buckets,
)
from quant_workbench.measure.latency import aa_name, benchmark_interleaved, speedup
from quant_workbench.measure.stats import interval_metrics, prediction_statistics, ratio_interval
from quant_workbench.models.loading import LoadedModel
from quant_workbench.quantize.apply import apply_flags, set_scales
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.plan import QuantPlan
from quant_workbench.quantize.schemes import (
    MemoisedRecalibrate,
    Scheme,
    SchemeState,
    SmoothQuantInputs,
    scheme_for,
)
from quant_workbench.runtime import EngineFromOnnx
from quant_workbench.search.groups import LayerGroup, build_groups, only_groups, with_fallback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    method: str
    percentile: float | None = None  # only for method "percentile"
    float_groups: tuple[str, ...] = ()  # groups kept float on top of the recipe's plan
    only: tuple[str, ...] = ()  # non-empty: quantize only these groups (sensitivity)
    format: str = "int8"  # int8 | fp8
    alpha: float | None = None  # SmoothQuant migration strength (int8 only); None = off

    def label(self) -> str:
        m = f"{self.method}{self.percentile:g}" if self.method == "percentile" and self.percentile is not None else self.method
        if self.alpha is not None:
            m = f"sq{self.alpha:g} {m}"
        if self.format != "int8":
            m = f"{self.format} {m}"
        if self.only:
            return f"{m} only[{'+'.join(self.only)}]"
        return f"{m} float[{'+'.join(self.float_groups)}]" if self.float_groups else f"{m} all-{self.format}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "percentile": self.percentile, "float_groups": list(self.float_groups), "only": list(self.only),
            "format": self.format, "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, c: dict[str, Any]) -> Config:
        return cls(c["method"], c.get("percentile"), tuple(c.get("float_groups", ())), tuple(c.get("only", ())), c.get("format", "int8"), c.get("alpha"))


@dataclass
class TrialRecord:
    source: str  # baseline | sensitivity-only | sensitivity-float | fallback | study
    config: Config
    status: str = "ok"  # ok | failed
    error: str | None = None
    key: str = ""
    accuracy: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    p50_ms: float | None = None
    float_p50_ms: float | None = None
    speedup: float | None = None
    size_bytes: int | None = None
    quantized_ops: int = 0
    float_modules: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # relative to the run folder
    seconds: dict[str, float] = field(default_factory=dict)
    meets: bool | None = None
    trial_number: int | None = None
    reused: bool = False
    # the speed-up's interval (median per-round ratio float / trial, block bootstrap over rounds) and the
    # A/A control timed in the same loop (a second float session: should read 1.00)
    speedup_low: float | None = None
    speedup_high: float | None = None
    aa_ratio: float | None = None
    split: str = "evaluation"  # the split the trial was scored on (selection when the recipe holds one out)

    @property
    def relative_latency(self) -> float | None:
        """Latency relative to float, both timed interleaved in the same loop: the latency objective.

        Absolute milliseconds of configurations timed minutes apart drift with machine load (and differ
        between the machines of several workers); the ratio to float measured alongside does not. It is
        1 / the median per-round speed-up when that was measured, else p50 / float p50 (older records).
        """
        if self.speedup:
            return 1.0 / self.speedup
        if self.p50_ms is None or not self.float_p50_ms:
            return None
        return self.p50_ms / self.float_p50_ms

    def log_half_width(self) -> float:
        """Half the width of the speed-up interval on the log scale (0 when none was measured)."""
        if self.speedup_low and self.speedup_high and self.speedup_low > 0:
            return 0.5 * (math.log(self.speedup_high) - math.log(self.speedup_low))
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        d["label"] = self.config.label()
        d["relative_latency"] = self.relative_latency
        return d


class TrialRunner:
    """Evaluates configurations against the float baseline; every result is recorded in `records`."""

    def __init__(
        self,
        recipe: Recipe,
        loaded: LoadedModel,
        splits: Splits,
        plan: QuantPlan,
        calibrators: dict[str, HistogramCalibrator],
        example: dict[str, torch.Tensor],
        float_path: Path,
        base_key: str,
        run_dir: Path,
        *,
        smoothquant: SmoothQuantInputs | None = None,
        progress: bool = False,
        say: Callable[[str], None] = print,
        engine_graphs: EngineGraphs | None = None,
    ) -> None:
        assert recipe.search is not None
        self.recipe, self.spec = recipe, recipe.search
        self.loaded, self.splits, self.plan = loaded, splits, plan
        self.calibrators, self.example, self.float_path, self.base_key = calibrators, example, float_path, base_key
        self.run_dir, self.progress, self.say = run_dir, progress, say
        # each SmoothQuant alpha's statistics are collected (or read from the cache) once for every trial
        self.recalibration: MemoisedRecalibrate | None = None
        self.smoothquant: SmoothQuantInputs | None = None
        if smoothquant is not None:
            self.recalibration = MemoisedRecalibrate(smoothquant.recalibrate)
            self.smoothquant = replace(smoothquant, recalibrate=self.recalibration)
        self.trials_dir = run_dir / "search" / "trials"
        # Trials are timed as they would ship on this engine (export/graphs.py): the fused float baseline
        # and each configuration's engine graph, built in the trials folder from its own Q/DQ export.
        self.trial_graphs: EngineGraphs | None = None
        self.float_engine_path = float_path
        if engine_graphs is not None and engine_graphs.mode != "qdq":
            self.trial_graphs = engine_graphs.sharing_float(self.trials_dir)
            self.float_engine_path = engine_graphs.fused_float_path or float_path
        self.groups: list[LayerGroup] = build_groups(plan, self.spec.groups)
        self.records: list[TrialRecord] = []
        self.exports = 0
        lat = self.spec.latency
        # Trials keep a fixed iteration count (speedup_tolerance None): an adaptive benchmark per trial
        # would multiply the study's cost; the recipe's final benchmark adapts.
        self.bench_spec = BenchmarkSpec(
            batch_sizes=[lat.batch_size], seq_lengths=[lat.seq_length or recipe.model.max_seq_length], warmup=lat.warmup, iterations=lat.iterations, threads=lat.threads,
            speedup_tolerance=None, max_iterations=max(lat.iterations, 1000),
        )
        t0 = time.perf_counter()
        bs = recipe.quantization.calibration.batch_size
        maxlen = recipe.model.max_seq_length
        # Trials are scored and chosen on the held-out selection split when the recipe has one, so the
        # evaluation split that reports the winner (and checks the criterion) is one the search never saw.
        self.split_name = "selection" if len(splits.selection) else "evaluation"
        self.split = splits.selection if len(splits.selection) else splits.evaluation
        self.buckets = length_buckets(loaded.tokenizer, self.split, loaded.input_names, maxlen, bs)  # tokenized once for every trial
        # the float baseline every trial is scored and timed against is the graph the run's float variant runs
        # as (the fused one on ONNX Runtime CPU), so the criterion's threshold is the final evaluation's
        with EngineFromOnnx(self.float_engine_path, recipe, "float", "float32") as eng:
            self.float_out = self.buckets.run(eng, "evaluate float", progress)
            self.scorer = Scorer.fit(recipe, loaded, splits, eng, progress)  # the evaluate stage's scoring
        self.float_metrics = self._score(self.float_out)
        self.float_accuracy = self.float_metrics["accuracy"]
        self.threshold = self.spec.criterion.threshold(self.float_accuracy)
        self.float_seconds = round(time.perf_counter() - t0, 3)

    def _score(self, out: np.ndarray) -> dict[str, float]:
        labels = self.split.labels
        metrics = self.scorer.metrics(out, labels, self.float_out)
        pred, float_pred = self.scorer.predict(out), self.scorer.predict(self.float_out)
        return {**metrics, **interval_metrics(prediction_statistics(pred, labels, float_pred, self.recipe.selection.level, seed=self.recipe.seed))}

    def plan_for(self, config: Config) -> QuantPlan:
        if config.only:
            return only_groups(self.plan, self.groups, config.only)
        return with_fallback(self.plan, self.groups, config.float_groups)

    def evaluate(self, config: Config, source: str, *, trial_number: int | None = None) -> TrialRecord:
        """Export, score and time one configuration. Errors are recorded (status failed), not raised."""
        rec = TrialRecord(source=source, config=config, trial_number=trial_number, split=self.split_name)
        t0 = time.perf_counter()
        try:
            self._evaluate(config, rec)
        except Exception as exc:  # a broken configuration is recorded, the search goes on
            log.debug("configuration %s failed", config.label(), exc_info=True)
            rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"
            self.say(f"  {config.label()} failed: {rec.error}")
        rec.seconds["total"] = round(time.perf_counter() - t0, 3)
        if rec.accuracy is not None:
            rec.meets = rec.accuracy >= self.threshold - 1e-12
        self.records.append(rec)
        return rec

    def scheme(self, config: Config) -> Scheme:
        """The configuration's scheme: its format and SmoothQuant alpha, with the recipe's smoothquant.ffn_out."""
        return scheme_for(config.format, config.alpha, self.recipe.quantization)  # type: ignore[arg-type]

    @contextmanager
    def _scheme_state(self, config: Config) -> Iterator[dict[str, HistogramCalibrator]]:
        """The model in the configuration's scheme state while it is evaluated (quantize/schemes.py SchemeState,
        as the PTQ variants are); yields the calibration statistics that match that state."""
        scheme = self.scheme(config)
        if scheme.alpha is not None:
            # SmoothQuant groups are chosen on the recipe's whole plan, so a trial's float fallback does
            # not change the rewrite (it is exact in float either way) nor the statistics collected for it.
            apply_flags(self.loaded.model.hf, self.plan)
        with SchemeState(scheme, self.calibrators, smoothquant=self.smoothquant).applied(self.loaded.model) as applied:
            yield applied.calibrators

    def _evaluate(self, config: Config, rec: TrialRecord) -> None:
        with self._scheme_state(config) as calibrators:
            self._evaluate_in_state(config, rec, calibrators)

    def _evaluate_in_state(self, config: Config, rec: TrialRecord, calibrators: dict[str, HistogramCalibrator]) -> None:
        t_start = time.perf_counter()
        recipe, loaded = self.recipe, self.loaded
        plan = self.plan_for(config)
        apply_flags(loaded.model.hf, plan)
        pct = config.percentile if config.percentile is not None else recipe.quantization.calibration.percentile
        amax = set_scales(loaded.model, calibrators, config.method, percentile=pct)
        ffn_out = self.scheme(config).ffn_out
        enabled = [p.module for p in plan.enabled]
        rec.quantized_ops = len(enabled)
        rec.float_modules = [p.module for p in plan.points if not p.enabled and p.reason.startswith("fallback")]
        rec.key = key = hash_json(
            {
                "base": self.base_key, "enabled": enabled, "amax": amax, "weights": recipe.quantization.per_channel_weights,
                "latency": self.spec.latency.model_dump(),
                # the int8 key is unchanged from earlier versions, so their trial results stay reusable
                **({"format": config.format} if config.format != "int8" else {}),
                **({"smoothquant": config.alpha} if config.alpha is not None else {}),
                **({"smoothquant_ffn_out": True} if ffn_out else {}),  # FFN-out smoothed too: other weights
                **({"engine_graph": self.trial_graphs.identity()} if self.trial_graphs is not None else {}),
                # scored on the held-out selection split (trials scored on the evaluation split keep their old keys)
                **({"scored_on": f"selection:{self.splits.fingerprint}"} if self.split_name == "selection" else {}),
                "timing": "random order, A/A",
            }
        )[:16]
        path = self.trials_dir / f"{key}.qdq.onnx"
        result_file = self.trials_dir / f"{key}.json"
        rel = lambda p: str(p.relative_to(self.run_dir))  # noqa: E731
        rec.artifacts = {"onnx": rel(path), "scales": rel(self.trials_dir / f"{key}.scales.json"), "plan": rel(self.trials_dir / f"{key}.plan.json")}
        stored = _stored_result(result_file) if artifact_is_current(path, key) else None
        if stored is not None:  # evaluated before (this run or a killed one), and the ONNX verifies
            for name in ("accuracy", "metrics", "p50_ms", "float_p50_ms", "speedup", "size_bytes"):
                setattr(rec, name, stored[name])
            for name in ("speedup_low", "speedup_high", "aa_ratio"):
                setattr(rec, name, stored.get(name))
            if stored.get("engine_onnx"):
                rec.artifacts["engine_onnx"] = stored["engine_onnx"]
            rec.seconds["first_evaluation"] = stored["seconds"].get("total", 0.0)
            rec.reused = True
            return
        write_json(self.trials_dir / f"{key}.scales.json", {"method": config.method, "percentile": pct, "format": config.format, "smoothquant_alpha": config.alpha, "amax": plan_names(amax)})
        write_json(self.trials_dir / f"{key}.plan.json", plan.to_rows())
        t = time.perf_counter()
        if cached(path, key, lambda: export_onnx(loaded.model, path, self.example, loaded.input_names, loaded.output_name, recipe.export.opset)):
            self.exports += 1
        rec.seconds["export"] = round(time.perf_counter() - t, 3)
        rec.size_bytes = onnx_size(path)
        fidelity: dict[str, Any] = {}
        if self.spec.check_fidelity:
            t = time.perf_counter()
            fidelity = qdq_fidelity(recipe, loaded, path, self.example)
            rec.seconds["fidelity"] = round(time.perf_counter() - t, 3)
        engine_path = path
        trial = VariantResult(name=key, precision="fp8" if config.format == "fp8" else "int8", fidelity=fidelity)
        if self.trial_graphs is not None:
            t = time.perf_counter()
            engine_path = self.trial_graphs.for_variant(loaded, key, path, self.example, trial, alpha=config.alpha, fp8=config.format == "fp8")
            rec.artifacts["engine_onnx"] = rel(engine_path)
            rec.seconds["engine_graph"] = round(time.perf_counter() - t, 3)
        if engine_path == path and not fidelity:
            # Gate: what this trial runs is its Q/DQ export itself (engine.int8_graph qdq, FP8, or no faster graph
            # passed its check), and nothing has checked it yet: check it now, as every PTQ variant's is.
            t = time.perf_counter()
            qdq_fidelity(recipe, loaded, path, self.example)  # ExportError: the trial is recorded failed, with why
            rec.seconds["fidelity"] = round(time.perf_counter() - t, 3)
        with EngineFromOnnx(engine_path, recipe, key, config.format) as eng:
            t = time.perf_counter()
            out = self.buckets.run(eng, f"evaluate {config.label()}", self.progress)
            rec.metrics = self._score(out)
            rec.accuracy = rec.metrics["accuracy"]
            rec.seconds["evaluate"] = round(time.perf_counter() - t, 3)
            if "latency" in self.spec.objectives:
                t = time.perf_counter()
                threads = self.spec.latency.threads or None
                # the run's benchmark design at trial scale: a fresh random order per round, sessions that do not
                # spin, and an A/A control (a second float session) in the same loop
                with (
                    EngineFromOnnx(self.float_engine_path, recipe, "float", "float32", threads=threads) as f_eng,
                    EngineFromOnnx(self.float_engine_path, recipe, "float", "float32", threads=threads) as aa_eng,
                    EngineFromOnnx(engine_path, recipe, key, config.format, threads=threads) as t_eng,
                ):
                    lat = benchmark_interleaved(
                        {"float": f_eng, aa_name("float"): aa_eng, "trial": t_eng}, self.bench_spec, loaded.input_names, loaded.vocab_size,
                        progress=False, seed=recipe.seed,
                    )
                f_st, t_st, aa_st = lat["float"][0], lat["trial"][0], lat[aa_name("float")][0]
                rec.p50_ms, rec.float_p50_ms = t_st.p50_ms, f_st.p50_ms
                rec.speedup = speedup(f_st, t_st)
                r = ratio_interval(f_st.samples_ms, t_st.samples_ms, recipe.selection.level)
                rec.speedup_low, rec.speedup_high = r.low, r.high
                rec.aa_ratio = speedup(f_st, aa_st)
                rec.seconds["benchmark"] = round(time.perf_counter() - t, 3)
        rec.seconds["total"] = round(time.perf_counter() - t_start, 3)
        names = ("accuracy", "metrics", "p50_ms", "float_p50_ms", "speedup", "size_bytes", "seconds", "speedup_low", "speedup_high", "aa_ratio")
        write_json(result_file, {**{n: getattr(rec, n) for n in names}, "engine_onnx": rec.artifacts.get("engine_onnx")})

    def check(self, config: Config, rec: TrialRecord) -> dict[str, Any]:
        """The full Q/DQ fidelity check (per layer and end to end) of a configuration the search hands to the
        run, with the model put back in that configuration's state; raises ExportError when it fails."""
        with self._scheme_state(config) as calibrators:
            plan = self.plan_for(config)
            apply_flags(self.loaded.model.hf, plan)
            pct = config.percentile if config.percentile is not None else self.recipe.quantization.calibration.percentile
            set_scales(self.loaded.model, calibrators, config.method, percentile=pct)
            return qdq_fidelity(self.recipe, self.loaded, self.run_dir / rec.artifacts["onnx"], self.example)


def _stored_result(result_file: Path) -> dict[str, Any] | None:
    """A trial's stored scores, or None when missing or unreadable (then the trial is evaluated again)."""
    try:
        stored = json.loads(result_file.read_text())
        if isinstance(stored, dict) and isinstance(stored.get("seconds"), dict) and all(
            n in stored for n in ("accuracy", "metrics", "p50_ms", "float_p50_ms", "speedup", "size_bytes")
        ):
            return stored
    except (OSError, ValueError) as exc:
        if result_file.exists():
            log.warning("re-evaluating: unreadable trial result %s: %s", result_file, exc)
    return None


@dataclass
class SensitivityRow:
    group: LayerGroup
    only_quantized: TrialRecord
    only_float: TrialRecord
    score: float = 0.0

    def to_dict(self, float_accuracy: float, all_int8_accuracy: float | None) -> dict[str, Any]:
        oq, of = self.only_quantized, self.only_float
        return {
            **self.group.to_dict(),
            "accuracy_only_quantized": oq.accuracy,
            "drop_only_quantized": None if oq.accuracy is None else float_accuracy - oq.accuracy,
            "cosine_only_quantized": oq.metrics.get("cosine_to_float"),
            "accuracy_only_float": of.accuracy,
            "gain_only_float": None if of.accuracy is None or all_int8_accuracy is None else of.accuracy - all_int8_accuracy,
            "score": self.score,
        }


def sensitivity(runner: TrialRunner, method: str, percentile: float | None, all_int8: TrialRecord) -> list[SensitivityRow]:
    """Per group: quantize only it, and keep only it float. Ranked most sensitive first.

    score = (float accuracy - accuracy with only this group quantized)
          + (accuracy with only this group float - accuracy all-INT8)
          + the same two effects on the output's mean cosine to float (1 - cos_only_int8) + (cos_only_float - cos_all_int8).
    Accuracy on an evaluation split moves in steps of 1/N and is noisy; the cosine terms (same scale as
    accuracy points on real models: 0.97-0.99) keep the ranking stable where accuracies tie.
    """
    rows: list[SensitivityRow] = []
    for g in runner.groups:
        oq = runner.evaluate(Config(method, percentile, only=(g.name,)), "sensitivity-only")
        of = runner.evaluate(Config(method, percentile, float_groups=(g.name,)), "sensitivity-float")
        rows.append(SensitivityRow(g, oq, of))
    fa, aa = runner.float_accuracy, all_int8.accuracy
    for r in rows:
        drop = fa - r.only_quantized.accuracy if r.only_quantized.accuracy is not None else 1.0
        gain = r.only_float.accuracy - aa if r.only_float.accuracy is not None and aa is not None else 0.0
        cos_q = r.only_quantized.metrics.get("cosine_to_float", 0.0) if r.only_quantized.metrics else 0.0
        cos_f = r.only_float.metrics.get("cosine_to_float", 0.0) if r.only_float.metrics else 0.0
        cos_all = all_int8.metrics.get("cosine_to_float", 0.0) if all_int8.metrics else 0.0
        r.score = float(drop + gain + (1.0 - cos_q) + (cos_f - cos_all))
    rows.sort(key=lambda r: r.score, reverse=True)
    return rows


@dataclass
class FallbackResult:
    steps: list[TrialRecord]
    final: TrialRecord
    float_groups: list[str]
    meets: bool

    def to_dict(self) -> dict[str, Any]:
        return {"float_groups": self.float_groups, "meets": self.meets, "final": self.final.to_dict(), "steps": [s.to_dict() for s in self.steps]}


def auto_fallback(runner: TrialRunner, ranking: Sequence[str], method: str, percentile: float | None, start: TrialRecord) -> FallbackResult:
    """From all-INT8 (`start`), put the most sensitive groups back in float until the criterion holds,
    then try re-quantizing each fallen-back group (least sensitive first) and keep it INT8 if the
    criterion still holds. Every evaluated configuration is returned in `steps`."""
    steps = [start]
    current: list[str] = []
    rec = start
    for g in ranking:
        if rec.meets:
            break
        current.append(g)
        rec = runner.evaluate(Config(method, percentile, float_groups=tuple(current)), "fallback")
        steps.append(rec)
    if rec.meets:
        for g in reversed(list(current)):
            if len(current) == 0:
                break
            trial = [x for x in current if x != g]
            r = runner.evaluate(Config(method, percentile, float_groups=tuple(trial)), "fallback")
            steps.append(r)
            if r.meets:
                current, rec = trial, r
    ok = [s for s in steps if s.meets]
    final = rec if rec.meets else max((s for s in steps if s.accuracy is not None), key=lambda s: s.accuracy or 0.0, default=rec)
    if not rec.meets and ok:
        final = ok[-1]
    return FallbackResult(steps, final, list(final.config.float_groups), bool(final.meets))
