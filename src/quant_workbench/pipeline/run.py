"""Run one recipe: an ordered list of stages over one typed run state (pipeline/state.py).

    data -> model -> [finetune] -> export float (+ fused engine graph) -> [references] -> calibrate
    -> variants: PTQ schemes, [int8-dynamic], [search], [qat] -> evaluate -> [benchmark] -> select
    -> report -> [deploy]

Each stage reads what earlier stages put in the state and adds its own results; a bracketed stage
runs when its recipe section is present (`STAGES` says when). Every section composes with every
other; a combination that cannot work is rejected when the recipe is loaded (config/recipe.py).

Runs are resumable: the run folder is named after the resolved recipe's hash, every artifact is
written atomically, and an artifact whose `.key` sidecar matches the current inputs is reused.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quant_workbench import __version__
from quant_workbench.config.extensions import extension_digests
from quant_workbench.config.recipe import Recipe, accuracy_margin_for, drop_hash_neutral
from quant_workbench.core.artifacts import (
    atomic_path,
    cached,
    hash_json,
    onnx_size,
    write_json,
    write_text,
)
from quant_workbench.core.comparator import Comparator, max_abs_diff, numpy_feed, torch_runner
from quant_workbench.core.errors import ExportError, WorkbenchError
from quant_workbench.core.machine import hardware
from quant_workbench.core.results import RunResult, VariantResult, accuracy_reference
from quant_workbench.data.splits import Splits, load_splits
from quant_workbench.export.fidelity import qdq_fidelity
from quant_workbench.export.graphs import EngineGraphs
from quant_workbench.export.openvino import ScaleSource
from quant_workbench.export.qdq import EXPORT_LAYOUT, export_onnx, plan_names
from quant_workbench.measure.accuracy import evaluate_variants
from quant_workbench.measure.latency import Resolution, benchmark_variants
from quant_workbench.models.loading import load_model, to_torch, tokenize
from quant_workbench.pipeline.calibration import calibration_statistics
from quant_workbench.pipeline.engine_rows import (
    add_float_rows,
    add_variant_rows,
    display_order,
    mark_reference_row,
)
from quant_workbench.pipeline.sanity import (
    check_evaluation_size,
    check_head,
    check_tokenizer,
    check_vocabulary,
)
from quant_workbench.pipeline.state import RunState
from quant_workbench.quantize.apply import activation_quantizers, prepare, set_scales
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.plan import QuantPlan, build_plan
from quant_workbench.quantize.schemes import SmoothQuantInputs, scheme_variants
from quant_workbench.report.markdown import results_table, write_report
from quant_workbench.runtime import engine_summary, float_precision, preflight_runtime
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts
from quant_workbench.selection import (
    accuracy_decisions,
    candidates,
    compare_references,
    float_baselines,
    select_variant,
    speed_resolution,
)

log = logging.getLogger(__name__)


def recipe_hash(recipe: Recipe) -> str:
    # The deploy section only packages finished artifacts: changing it must not start a new run.
    data = drop_hash_neutral(recipe.model_dump(mode="json", exclude={"deploy"}))
    # an extension's code decides results, its location does not
    if recipe.extensions:
        data["extensions"] = extension_digests(recipe.extensions)
    if data.get("search") is None:
        data.pop("search", None)  # recipes without a search keep their run ids
    else:
        data["search"].pop("storage", None)  # where the study lives does not change the run
    return hash_json(data)


def run_dir_for(recipe: Recipe, run_id: str | None = None) -> Path:
    return Path(recipe.output_dir) / recipe.name / (run_id or recipe_hash(recipe)[:12])


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    out = {
        "quant_workbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    for optional in ("openvino", "nncf"):  # issue 17: recorded when installed
        with suppress(importlib.metadata.PackageNotFoundError):
            out[optional] = importlib.metadata.version(optional)
    return out


def run_identity(recipe: Recipe, run_dir: Path, splits: Splits) -> dict[str, Any]:
    """The RunResult fields that say which run this is: recipe, machine, versions, data."""
    return {
        "recipe_name": recipe.name,
        "run_id": run_dir.name,
        "task": recipe.model.task,
        "primary_metric": "accuracy",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions(),
        "hardware": hardware(),
        "recipe_hash": recipe_hash(recipe),
        "data": {
            "sizes": splits.sizes(),
            "label_names": splits.label_names,
            "fingerprint": splits.fingerprint,
            "source": recipe.data.files or (recipe.data.hub.name if recipe.data.hub else ""),
        },
    }


def execute(
    recipe: Recipe, *, run_id: str | None = None, progress: bool = True, say: Callable[[str], None] = print, wait_lock_s: float = 0.0
) -> RunResult:
    """Preflight (before any data or export work), then the run under the run folder's lock (core/lock.py)."""
    from quant_workbench.core.artifacts import remove_stale_temp_files
    from quant_workbench.core.lock import RunLock
    from quant_workbench.pipeline.preflight import check_run_id, run_preflight

    check_run_id(run_id)
    run_dir = run_dir_for(recipe, run_id)
    preflight_runtime(recipe)
    run_preflight(recipe, run_dir)
    fresh = not run_dir.exists()
    try:
        with RunLock(run_dir, wait_s=wait_lock_s):
            for stale in remove_stale_temp_files(run_dir, recipe.quantization.calibration.cache_dir):
                say(f"removed a killed writer's temp file {stale}")
            return _execute(recipe, run_dir=run_dir, progress=progress, say=say)
    except BaseException:
        # a run that failed before its first artifact leaves no folder holding only its resolved recipe
        if fresh and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"recipe.resolved.yaml", ".lock"}:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _execute(recipe: Recipe, *, run_dir: Path, progress: bool = True, say: Callable[[str], None] = print) -> RunResult:
    preflight_runtime(recipe)  # engine.runtime: tensorrt without TensorRT or a GPU fails now
    if recipe.deploy is not None:  # a missing optional package fails now, not after the whole run
        from quant_workbench.deploy import preflight

        preflight(recipe.deploy)
    say(f"run folder: {run_dir}")
    write_text(run_dir / "recipe.resolved.yaml", recipe.to_yaml())
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    state = RunState(recipe, run_dir, progress, say)
    for stage in STAGES:
        if stage.applies(recipe):
            stage.run(state)
    assert state.result is not None, "the report stage has not run"
    return state.result


# ---------------------------------------------------------------------------------------------
# the stages, in the order STAGES runs them


def data_stage(state: RunState) -> None:
    with state.stage("data"):
        state.splits = load_splits(state.recipe.data)
        state.say(f"  splits: {state.splits.sizes()} labels={state.splits.label_names}")
    too_small = check_evaluation_size(state.recipe, len(state.splits.evaluation))
    if too_small:
        state.warn(too_small)


def model_stage(state: RunState) -> None:
    recipe, splits = state.recipe, state.need_splits()
    with state.stage("model"):
        num_labels = len(splits.label_names) if recipe.model.task == "sequence-classification" else None
        loaded = load_model(recipe.model, num_labels=num_labels, label_names=splits.label_names if num_labels else None)
        # sanity gates (pipeline/sanity.py): a model that cannot mean anything stops here, before any export work
        check_tokenizer(recipe, loaded, splits)
        accepted = check_head(recipe, loaded)
        if accepted:
            state.warn(accepted)
        state.loaded, state.plan = loaded, build_plan(loaded.model.hf, recipe.quantization)
        if recipe.search is not None and recipe.search.smoothquant_alphas:
            loaded.architecture.check_features(["smoothquant"])
        state.say(f"  {recipe.model.source}: {len(state.plan.enabled)} of {len(state.plan.points)} quantizable ops selected")


def finetune_stage(state: RunState) -> None:
    from quant_workbench.pipeline.training import finetune_float

    with state.stage("finetune"):
        state.training["finetune"] = finetune_float(
            state.recipe, state.need_loaded(), state.need_splits(), progress=state.progress, say=state.say, plots_dir=state.run_dir / "plots"
        )


def export_float_stage(state: RunState) -> None:
    """float.onnx (checked against PyTorch), then the graph the float baseline runs as on this engine."""
    recipe, loaded, splits = state.recipe, state.need_loaded(), state.need_splits()
    models_dir = state.run_dir / "models"
    state.example = to_torch(tokenize(loaded.tokenizer, splits.evaluation.texts[: recipe.export.fidelity_samples], loaded.spec.max_seq_length, loaded.input_names))
    state.base_key = hash_json({"model": loaded.fingerprint, "opset": recipe.export.opset, "version": __version__, "export": EXPORT_LAYOUT})
    with state.stage("export float"):
        float_path = state.float_path = models_dir / "float.onnx"
        cached(float_path, state.base_key, lambda: export_onnx(loaded.model, float_path, state.example, loaded.input_names, loaded.output_name, recipe.export.opset))
        pytorch = Comparator(torch_runner(loaded.model), numpy_feed(state.example))
        state.float_reference = ref = pytorch.reference
        with OrtEngine(float_path, recipe.engine, "float") as eng:
            check = pytorch.check(eng, max_abs_diff(recipe.export.float_tolerance))
        state.fidelity_float = {"onnx_vs_pytorch_max_abs_diff": check.max_abs_diff, "tolerance": check.threshold, "passed": check.passed, "samples": check.samples}
        if not check.passed:
            raise ExportError(
                f"float ONNX disagrees with PyTorch: max abs diff {check.max_abs_diff:.3g} > {check.threshold}.",
                "the exporter mis-translated the model; try another export.opset or run with --debug",
            )
    graphs = state.graphs = EngineGraphs(recipe, models_dir, state.base_key, state.say)
    state.float_engine_path = float_path
    if graphs.wants_fused_float:
        with state.stage("fuse float"):
            fused, fused_info = graphs.fused_float(loaded, state.example, ref)
        if recipe.engine.ort_cpu:  # else ONNX Runtime is one of several engines: its float row runs the fused graph
            state.float_engine_path, state.fidelity_float["engine_graph"] = fused, fused_info
    artifacts = {"onnx": "models/float.onnx"}
    if state.float_engine_path != float_path:
        artifacts["engine_onnx"] = f"models/{state.float_engine_path.name}"
    float_variant = VariantResult(
        name="float", precision=float_precision(recipe), artifacts=artifacts, fidelity=state.fidelity_float, size_bytes=onnx_size(float_path)  # type: ignore[arg-type]
    )
    state.add_variant(float_variant, state.float_engine_path)
    add_float_rows(state, float_variant)  # issue 17: the float rows of the other engines / precisions


def references_stage(state: RunState) -> None:
    """The standard tools' rows, built from the float model before the quantizers go in."""
    assert state.float_reference is not None
    with state.stage("references"):
        splits = state.need_splits()
        built = state.need_graphs().references(state.need_loaded(), splits, state.example, state.need_float_path(), state.float_reference, splits.fingerprint)
    for variant, path in built:
        state.add_variant(variant, path if variant.status == "ok" else None)


def calibrate_stage(state: RunState) -> None:
    recipe, loaded, plan = state.recipe, state.need_loaded(), state.need_plan()
    prepare(loaded.model.hf, plan, per_channel_weights=recipe.quantization.per_channel_weights)
    with state.stage("calibrate"):
        wants_channels = "int8-smoothquant" in recipe.quantization.schemes or bool(recipe.search and recipe.search.smoothquant_alphas)
        state.calibrators, state.calibration = calibration_statistics(
            recipe, loaded, state.need_splits(), plan, progress=state.progress, say=state.say,
            channel_amax=state.channel_amax if wants_channels else None,
        )
        with atomic_path(state.run_dir / "calibration_stats.npz") as tmp:
            shutil.copyfile(state.calibration["cache_file"], tmp)
    state.calibration["methods"] = {}


def smoothquant_inputs(state: RunState) -> SmoothQuantInputs:
    """What a SmoothQuant scheme state is built from in this run (quantize/schemes.py SchemeState): the
    float-equivalence gate's example and tolerance, the per-channel statistics and another calibration pass
    of the rewritten model, cached by what it was rewritten with."""

    def recalibrate(extra: dict[str, Any]) -> tuple[dict[str, HistogramCalibrator], dict[str, Any]]:
        return calibration_statistics(
            state.recipe, state.need_loaded(), state.need_splits(), state.need_plan(), progress=state.progress, say=state.say, extra_key=extra
        )

    return SmoothQuantInputs(state.example, state.channel_amax, recalibrate, state.recipe.export.float_tolerance)


def ptq_applies(recipe: Recipe) -> bool:
    # A search explores formats and methods itself; PTQ schemes run beside it only when listed in compare.
    return recipe.search is None or bool(recipe.quantization.compare)


def ptq_stage(state: RunState) -> None:
    """One scheme (int8 | int8 + SmoothQuant per alpha | fp8) after another, each with every method;
    scheme_variants puts the model into the scheme's state and undoes it (quantize/schemes.py SchemeState)."""
    recipe, loaded, plan, say = state.recipe, state.need_loaded(), state.need_plan(), state.say
    models_dir = state.run_dir / "models"
    for scheme, applied, method in scheme_variants(recipe.quantization, loaded.model, state.calibrators, smoothquant_inputs(state), say=say):
        name = f"{scheme.prefix}-{method}"
        variant = VariantResult(name=name, precision=scheme.precision, calibration_method=method)
        state.add_variant(variant)
        if applied.fidelity:
            # report.json's key keeps its old name `families`: the schema and older reports stay readable
            state.calibration.setdefault("families", {})[scheme.prefix] = applied.fidelity
        with state.stage(f"quantize {name}"), _recorded_failure(variant, say):
            if applied.error:
                raise WorkbenchError(applied.error, "see the scheme's checks in the report")
            amax = set_scales(loaded.model, applied.calibrators, method, percentile=recipe.quantization.calibration.percentile)
            scales_path = models_dir / f"{name}.scales.json"
            write_json(scales_path, {"method": method, "amax": plan_names(amax)})
            state.calibration["methods"][method if scheme.prefix == "int8" else name] = {
                "quantizers": len(amax), "median_amax": float(np.median(list(amax.values()))) if amax else None
            }
            path = models_dir / f"{name}.qdq.onnx"
            key = hash_json({"base": state.base_key, "plan": plan.to_rows(), "amax": amax, "weights": recipe.quantization.per_channel_weights, **applied.key})
            cached(path, key, partial(export_onnx, loaded.model, path, state.example, loaded.input_names, loaded.output_name, recipe.export.opset))
            variant.artifacts = {"onnx": f"models/{path.name}", "scales": f"models/{scales_path.name}"}
            variant.size_bytes = onnx_size(path)
            variant.fidelity = {**qdq_fidelity(recipe, loaded, path, state.example), **applied.fidelity}
            scales = ScaleSource(applied.calibrators, method, recipe.quantization.calibration.percentile)
            graph_args: dict[str, Any] = {"alpha": scheme.alpha, "fp8": scheme.kind == "fp8", "plan": plan, "scales": scales}
            engine_path = state.need_graphs().for_variant(loaded, name, path, state.example, variant, **graph_args)
            variant.engine = engine_summary(engine_path, recipe)
            state.engine_paths[name] = engine_path

            def ort_graph(row: VariantResult, qdq: Path = path, kw: dict[str, Any] = graph_args) -> Path:
                return state.need_graphs().for_variant(loaded, row.name, qdq, state.example, row, runtime="onnxruntime", **kw)

            # issue 17: the variant's rows on the other engines / precisions
            add_variant_rows(state, variant, path, plan=plan, scales=scales, ort_graph=ort_graph)


def dynamic_stage(state: RunState) -> None:
    """int8-dynamic: the fused float graph through ONNX Runtime's quantize_dynamic, on the plan's Linears."""
    assert state.float_reference is not None
    dynamic = VariantResult(name="int8-dynamic", precision="int8", calibration_method="dynamic (run time)")
    state.add_variant(dynamic)
    with state.stage("quantize int8-dynamic"), _recorded_failure(dynamic, state.say):
        loaded = state.need_loaded()
        # the gate's yardstick: how far the static max-calibrated fake-quant model of the same Linears is from float
        set_scales(loaded.model, state.calibrators, "max", percentile=state.recipe.quantization.calibration.percentile)
        noise = Comparator(state.float_reference, numpy_feed(state.example)).measure(torch_runner(loaded.model)).distance
        path = state.need_graphs().dynamic_variant(loaded, state.example, state.float_reference, dynamic, quantization_noise=noise)
        dynamic.artifacts = {"onnx": f"models/{path.name}"}
        dynamic.size_bytes = onnx_size(path)
        dynamic.engine = optimized_op_counts(path, state.recipe.engine)
        state.engine_paths[dynamic.name] = path
        mark_reference_row(dynamic, state.recipe)  # ONNX Runtime CPU only: no rows on other engines


def search_stage(state: RunState) -> None:
    from quant_workbench.search.study import search_stage as run_search

    run_search(state, smoothquant_inputs(state))


def qat_stage(state: RunState) -> None:
    """`qat` section: train from PTQ-initialised scales (train.qat_model), export and check like PTQ."""
    from quant_workbench.pipeline.training import qat_model

    recipe, loaded, plan = state.recipe, state.need_loaded(), state.need_plan()
    name = "int8-qat"
    variant = VariantResult(name=name, precision="int8")
    state.add_variant(variant)
    with state.stage("qat"), _recorded_failure(variant, state.say):
        model, info = qat_model(recipe, loaded, state.need_splits(), state.calibrators, progress=state.progress, say=state.say, plots_dir=state.run_dir / "plots")
        state.training["qat"] = info
        variant.calibration_method = f"qat (init {info['init_method']})"
        amax = {n: float(q.amax) for n, q in activation_quantizers(model).items() if q.enabled}
        scales_path = state.run_dir / "models" / f"{name}.scales.json"
        write_json(scales_path, {"method": "qat", "init_method": info["init_method"], "amax": plan_names(amax)})
        path = state.run_dir / "models" / f"{name}.qdq.onnx"
        key = hash_json({"base": state.base_key, "plan": plan.to_rows(), "qat": info["cache_key"], "weights": recipe.quantization.per_channel_weights})
        cached(path, key, lambda: export_onnx(model, path, state.example, loaded.input_names, loaded.output_name, recipe.export.opset))
        variant.artifacts = {"onnx": f"models/{path.name}", "scales": f"models/{scales_path.name}"}
        variant.size_bytes = onnx_size(path)
        qat_loaded = replace(loaded, model=model)
        variant.fidelity = qdq_fidelity(recipe, qat_loaded, path, state.example)
        # QAT trained the weights: its fused graph is exported from the trained model, keyed by its checkpoint
        engine_path = state.need_graphs().for_variant(qat_loaded, name, path, state.example, variant, weights_key=info["cache_key"])
        variant.engine = engine_summary(engine_path, recipe)
        state.engine_paths[name] = engine_path
        add_variant_rows(state, variant, path, plan=plan, scales=None)  # QAT's own scales: its Q/DQ export runs as it is


def evaluate_stage(state: RunState) -> None:
    # the standard tools' rows come last in every table, whenever they were built; rows grouped by engine
    display_order(state.variants, state.recipe)
    with state.stage("evaluate"):
        ev = evaluate_variants(
            state.recipe, state.need_loaded(), state.need_splits(), state.variants, state.engine_paths, progress=state.progress, say=state.say,
        )
    state.correct, state.stopped, state.evaluation = ev.correct, ev.stopped, ev.record
    splits = state.need_splits()
    final = "final accuracies, intervals, the selection rule and the reference verdicts"
    if state.recipe.search is not None:
        final += " and the search criterion's final check"
    decisions: list[dict[str, Any]] = [{"decision": final, "split": "evaluation", "n": len(splits.evaluation)}]
    if state.recipe.search is not None:
        held_out = len(splits.selection)
        decisions.insert(0, {
            "decision": "search trials scored, compared with the criterion and chosen (sensitivity, fallback, study, its pick)",
            "split": "selection" if held_out else "evaluation", "n": held_out or len(splits.evaluation),
        })
    state.evaluation["decisions"] = decisions


def _margins(state: RunState) -> tuple[float, str]:
    reference = accuracy_reference(state.variants)
    return accuracy_margin_for(state.recipe, reference.metrics.get("accuracy") if reference is not None else None)


def benchmark_stage(state: RunState) -> None:
    """The interleaved benchmark; its selection shape runs until the speed comparisons among the variants
    acceptable on accuracy are resolved against the speed margin (or its cap)."""
    recipe = state.recipe
    margin, _ = _margins(state)
    reference = accuracy_reference(state.variants)
    contenders: list[str] = []
    floats: list[str] = []
    if reference is not None and reference.name in state.correct:
        scored = [v for v in candidates(state.variants) if v.name in state.correct]
        decisions = accuracy_decisions(scored, state.correct, reference.name, margin, recipe.selection.level, state.stopped)
        contenders = [d.name for d in decisions if d.status == "acceptable"]
        floats, _ = float_baselines(state.variants, state.correct, margin, recipe.selection.level, state.stopped, reference.name)
    baseline = reference.name if reference is not None else "float"

    def decide(samples: Mapping[str, Sequence[float]]) -> Resolution:
        # the speed baseline is the fastest float row within the accuracy margin (selection.speed_baseline),
        # judged on the rounds so far; the A/A control stays on the accuracy reference
        timed = [f for f in floats if samples.get(f)]
        base = min(timed, key=lambda f: (float(np.median(samples[f])), f != baseline)) if timed else baseline
        return speed_resolution(contenders, base, samples, recipe.selection.speed_margin, recipe.selection.level)

    with state.stage("benchmark"):
        state.benchmark = benchmark_variants(
            recipe, state.need_loaded(), state.variants, state.engine_paths, baseline=baseline, decide=decide, progress=state.progress, say=state.say,
        )
    state.benchmark["contenders"] = contenders


def select_stage(state: RunState) -> None:
    """The margin rule (selection.py); with a search, its criterion is the accuracy margin."""
    recipe = state.recipe
    spec = recipe.search
    margin, source = _margins(state)
    state.selection = select_variant(
        state.variants, state.correct, recipe.selection.level, accuracy_margin=margin, speed_margin=recipe.selection.speed_margin,
        margin_source=source, prefer=state.search_choice, stopped=state.stopped, criterion=spec.criterion.describe() if spec is not None else None,
    )
    compare_references(state.variants, state.correct, state.selection.winner, recipe.selection.level)
    float_variant = accuracy_reference(state.variants)
    if spec is not None and state.search is not None and float_variant is not None and "accuracy" in float_variant.metrics:
        from quant_workbench.search.study import criterion_at_lower_bound

        threshold = spec.criterion.threshold(float_variant.metrics["accuracy"])
        choice = state.variant(state.search_choice) if state.search_choice else None
        state.search.update(criterion_at_lower_bound(choice, float_variant.metrics["accuracy"], threshold))
        state.search["final_threshold"] = threshold
        state.search["final_float_accuracy"] = float_variant.metrics["accuracy"]


def report_stage(state: RunState) -> None:
    assert state.selection is not None
    result = state.result = RunResult(
        **run_identity(state.recipe, state.run_dir, state.need_splits()),
        calibration=state.calibration,
        variants=state.variants,
        best_variant=state.selection.winner,
        selection_rule=state.selection.rule,
        selection=state.selection.to_dict(),
        timings_s={**state.timings, "total": round(time.perf_counter() - state.started, 2)},
        training=state.training,
        search=state.search,
        warnings=[*state.warnings, *(w for w in (state.graphs.warnings if state.graphs else []) if w not in state.warnings)],
        benchmark=state.benchmark,
        evaluation=state.evaluation,
    )
    with state.stage("report"):
        if state.search is not None:
            write_json(state.run_dir / "search.json", state.search)
        paths = write_report(result, state.run_dir)
        write_json(state.run_dir / "quant_plan.json", state.quant_plan_rows if state.quant_plan_rows is not None else state.need_plan().to_rows())
    state.say("")
    state.say(results_table(result))
    state.say(f"\nreport: {paths['markdown']}")


def deploy_stage(state: RunState) -> None:
    from quant_workbench.deploy import deploy_run

    with state.stage("deploy"):
        deploy_run(state.run_dir, recipe=state.recipe, result=state.result, say=state.say)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunState], None]
    applies: Callable[[Recipe], bool] = lambda recipe: True


STAGES: tuple[Stage, ...] = (
    Stage("data", data_stage),
    Stage("model", model_stage),
    Stage("finetune", finetune_stage, lambda r: r.finetune is not None),
    Stage("export float", export_float_stage),
    Stage("references", references_stage, lambda r: bool(r.reference_kinds)),
    Stage("calibrate", calibrate_stage),
    Stage("ptq", ptq_stage, ptq_applies),
    Stage("int8-dynamic", dynamic_stage, lambda r: "int8-dynamic" in r.quantization.schemes and ptq_applies(r)),
    Stage("search", search_stage, lambda r: r.search is not None),
    Stage("qat", qat_stage, lambda r: r.qat is not None),
    Stage("evaluate", evaluate_stage),
    Stage("benchmark", benchmark_stage, lambda r: r.benchmark.enabled),
    Stage("select", select_stage),
    Stage("report", report_stage),
    Stage("deploy", deploy_stage, lambda r: r.deploy is not None),
)


@contextmanager
def _recorded_failure(variant: VariantResult, say: Callable[[str], None]) -> Iterator[None]:
    """A variant that fails while it is built is recorded as failed with its message; the run goes on."""
    try:
        yield
    except WorkbenchError as exc:
        variant.status, variant.error = "failed", str(exc)
        say(f"  {variant.name} failed: {exc}")
    except Exception as exc:  # a broken variant is recorded, the run goes on
        log.debug("variant %s failed", variant.name, exc_info=True)
        variant.status, variant.error = "failed", f"{type(exc).__name__}: {exc}"
        say(f"  {variant.name} failed: {variant.error}")


def dry_run(recipe: Recipe, say: Callable[[str], None] = print, run_id: str | None = None) -> QuantPlan:
    """Resolve the recipe and the quantization plan without touching data or running anything; the
    preflight and the model's sanity gates run first, so a dry run refuses what the real run would."""
    from quant_workbench.pipeline.preflight import check_run_id, run_preflight

    check_run_id(run_id)
    preflight_runtime(recipe)
    run_preflight(recipe, run_dir_for(recipe, run_id), create=False)
    loaded = load_model(recipe.model, num_labels=len(recipe.data.label_names) if recipe.data.label_names else None)
    check_vocabulary(recipe, loaded)
    accepted = check_head(recipe, loaded)
    plan = build_plan(loaded.model.hf, recipe.quantization)
    say("# resolved recipe")
    say(recipe.to_yaml())
    say(f"# quantization plan for {recipe.model.source} ({', '.join(recipe.quantization.schemes)}, activations per-tensor, "
        f"weights {'per-channel (output axis)' if recipe.quantization.per_channel_weights else 'per-tensor'})")
    say(plan.describe())
    cal = recipe.quantization.calibration
    say(f"# calibration: methods {', '.join(cal.methods)} from one pass over {recipe.data.calibration_samples} samples (batch {cal.batch_size})")
    for warning in (accepted, check_evaluation_size(recipe, recipe.data.eval_samples)):
        if warning:
            say(f"# warning: {warning}")
    say(f"# would write: {run_dir_for(recipe, run_id)}")
    return plan

