"""Run one recipe through the stages and return a RunResult.

recipe -> splits -> model -> plan -> float ONNX -> calibration stats (cached) -> per method: scales ->
Q/DQ ONNX -> engines -> metrics -> interleaved latency -> selection -> report.

Runs are resumable: the run folder is named after the resolved recipe's hash, every artifact is
written atomically, and an artifact whose `.key` sidecar matches the current inputs is reused.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .benchmark import benchmark_interleaved, speedup_intervals, speedups
from .data import Splits, load_splits
from .engine_graphs import EngineGraphs
from .engines import Engine, EngineFromOnnx, preflight_runtime
from .engines.onnxruntime import OrtEngine, optimized_op_counts
from .errors import WorkbenchError
from .evaluate import LinearProbe, run_outputs, score_classification, score_embedding
from .export import cosine_rows, end_to_end_allowance, export_onnx, per_layer_fidelity, qdq_summary
from .families import family_variants
from .io import artifact_is_current, atomic_path, hash_json, mark_artifact, write_json, write_text
from .machine import cpu_has_vnni
from .models import LoadedModel, load_model, to_torch, tokenize
from .quantize.apply import activation_quantizers, calibrate, prepare, set_scales
from .quantize.calibrate import HistogramCalibrator, load_stats, save_stats
from .quantize.select import QuantPlan, build_plan
from .quantize.smoothquant import (
    ChannelAmaxCollector,
    channel_amax_path,
    float_mode,
    load_channel_amax,
    save_channel_amax,
)
from .recipe import Recipe
from .report import results_table, write_report
from .results import RunResult, VariantResult
from .selection import Selection, select_variant
from .stats import prediction_statistics

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    progress: bool = True
    say: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, ctx: RunContext, name: str) -> None:
        self.ctx, self.name = ctx, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.ctx.say(f"[{self.name}]")

    def __exit__(self, *exc: object) -> None:
        self.ctx.timings[self.name] = round(self.ctx.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 2)


def recipe_hash(recipe: Recipe) -> str:
    # The deploy section only packages finished artifacts: changing it must not start a new run.
    data = recipe.model_dump(mode="json", exclude={"deploy"})
    if data.get("search") is None:
        data.pop("search", None)  # recipes without a search keep their run ids
    else:
        data["search"].pop("storage", None)  # where the study lives does not change the run
    return hash_json(data)


def run_dir_for(recipe: Recipe, run_id: str | None = None) -> Path:
    return Path(recipe.output_dir) / recipe.name / (run_id or recipe_hash(recipe)[:12])


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform()}
    vnni = cpu_has_vnni()
    if vnni is not None:
        info["int8_dot_product"] = vnni
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {
        "quant_workbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


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


def _example_inputs(loaded: LoadedModel, splits: Splits, n: int) -> dict[str, torch.Tensor]:
    texts = splits.evaluation.texts[:n]
    return to_torch(tokenize(loaded.tokenizer, texts, loaded.spec.max_seq_length, loaded.input_names))


def _forward_loop(loaded: LoadedModel, splits: Splits, batch_size: int, progress: bool) -> Callable[[torch.nn.Module], None]:
    texts = splits.calibration.texts

    def loop(model: torch.nn.Module) -> None:
        steps = range(0, len(texts), batch_size)
        for start in tqdm(steps, desc="calibrate", disable=not progress, leave=False):
            feed = tokenize(loaded.tokenizer, texts[start : start + batch_size], loaded.spec.max_seq_length, loaded.input_names)
            model(**to_torch(feed))

    return loop


def calibration_statistics(
    ctx: RunContext,
    loaded: LoadedModel,
    splits: Splits,
    plan: QuantPlan,
    *,
    extra_key: dict[str, Any] | None = None,
    channel_amax: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, HistogramCalibrator], dict[str, Any]]:
    """One pass over the calibration split, cached by model + data + quantizer layout.

    `extra_key` (e.g. the SmoothQuant alpha of a rewritten model) joins the cache key; without it the
    key is unchanged. A `channel_amax` dict is filled with every QuantLinear's per-input-channel abs
    max, collected in the same pass and cached beside the statistics (an older cache without it is
    refreshed once).
    """
    cal = ctx.recipe.quantization.calibration
    key_fields: dict[str, Any] = {
        # A fix in the model wrapper changes the activations, so statistics are per workbench version.
        "version": __version__,
        "model": loaded.fingerprint,
        "data": splits.fingerprint,
        "calibration_texts": len(splits.calibration),
        "layout": plan.layout(),
        "num_bins": cal.num_bins,
        "batch_size": cal.batch_size,
        "max_seq_length": loaded.spec.max_seq_length,
    }
    key = hash_json({**key_fields, **(extra_key or {})})
    cache = Path(cal.cache_dir) / f"{ctx.recipe.name}-{key[:16]}.npz"
    channels_file = channel_amax_path(cache)
    if channel_amax is not None and cache.exists():
        stored = load_channel_amax(channels_file, key)
        if stored is not None:  # else the statistics are recollected below, channels with them
            channel_amax.update(stored)
    info: dict[str, Any] = {"cache_key": key, "cache_file": str(cache), "samples": len(splits.calibration)}
    t0 = time.perf_counter()
    if cache.exists():
        try:
            calibrators, meta = load_stats(cache)
            if meta.get("key") == key and (channel_amax is None or channel_amax):
                info.update(cache_hit=True, seconds=round(time.perf_counter() - t0, 3))
                ctx.say(f"  calibration statistics from cache {cache}")
                return calibrators, info
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            log.warning("ignoring unreadable calibration cache %s: %s", cache, exc)
    loop = _forward_loop(loaded, splits, cal.batch_size, ctx.progress)
    with ChannelAmaxCollector(loaded.model) as channels:
        calibrators = calibrate(loaded.model, loop, num_bins=cal.num_bins)
    save_stats(cache, calibrators, {"key": key, "model": loaded.spec.source})
    save_channel_amax(channels_file, key, channels.amax)
    if channel_amax is not None:
        channel_amax.update(channels.amax)
    info.update(cache_hit=False, seconds=round(time.perf_counter() - t0, 3))
    return calibrators, info


def _size(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return total + (data.stat().st_size if data.exists() else 0)


def execute(
    recipe: Recipe, *, run_id: str | None = None, progress: bool = True, say: Callable[[str], None] = print, wait_lock_s: float = 0.0
) -> RunResult:
    """Preflight (before any data or export work), then the run under the run folder's lock (lock.py)."""
    from .io import remove_stale_temp_files
    from .lock import RunLock
    from .preflight import check_run_id, run_preflight

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
    ctx = RunContext(recipe, run_dir, progress, say)
    models_dir = run_dir / "models"
    t_start = time.perf_counter()
    preflight_runtime(recipe)  # engine.runtime: tensorrt without TensorRT or a GPU fails now
    if recipe.deploy is not None:  # a missing optional package fails now, not after the whole run
        from .deploy import preflight

        preflight(recipe.deploy)
    say(f"run folder: {run_dir}")
    write_text(run_dir / "recipe.resolved.yaml", recipe.to_yaml())
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)

    with ctx.stage("data"):
        splits = load_splits(recipe.data)
        say(f"  splits: {splits.sizes()} labels={splits.label_names}")
    with ctx.stage("model"):
        num_labels = len(splits.label_names) if recipe.model.task == "sequence-classification" else None
        loaded = load_model(recipe.model, num_labels=num_labels, label_names=splits.label_names if num_labels else None)
        plan = build_plan(loaded.model.hf, recipe.quantization)
        if recipe.search is not None and recipe.search.smoothquant_alphas:
            loaded.architecture.check_features(["smoothquant"])
        say(f"  {recipe.model.source}: {len(plan.enabled)} of {len(plan.points)} quantizable ops selected")
    training: dict[str, Any] = {}
    if recipe.finetune is not None:
        from .train import finetune_float

        with ctx.stage("finetune"):
            training["finetune"] = finetune_float(recipe, loaded, splits, progress=ctx.progress, say=say, plots_dir=run_dir / "plots")

    example = _example_inputs(loaded, splits, recipe.export.fidelity_samples)
    base_key = hash_json({"model": loaded.fingerprint, "opset": recipe.export.opset, "version": __version__})
    fidelity_float: dict[str, Any] = {}
    with ctx.stage("export float"):
        float_path = models_dir / "float.onnx"
        if not artifact_is_current(float_path, base_key):
            export_onnx(loaded.model, float_path, example, loaded.input_names, loaded.output_name, recipe.export.opset)
            mark_artifact(float_path, base_key)
        with torch.no_grad():
            ref = loaded.model(**example).numpy()
        with OrtEngine(float_path, recipe.engine, "float") as eng:
            got = eng({k: v.numpy() for k, v in example.items()})
        diff = float(np.abs(got - ref).max())
        fidelity_float = {"onnx_vs_pytorch_max_abs_diff": diff, "tolerance": recipe.export.float_tolerance, "passed": diff <= recipe.export.float_tolerance, "samples": len(ref)}
        if diff > recipe.export.float_tolerance:
            raise WorkbenchError(
                f"float ONNX disagrees with PyTorch: max abs diff {diff:.3g} > {recipe.export.float_tolerance}.",
                "the exporter mis-translated the model; try another export.opset or run with --debug",
            )

    graphs = EngineGraphs(recipe, models_dir, base_key, say)
    float_engine_path = float_path
    if graphs.wants_fused_float:
        with ctx.stage("fuse float"):
            float_engine_path, fidelity_float["engine_graph"] = graphs.fused_float(loaded, example, ref)
    references = []
    if recipe.reference_kinds:
        with ctx.stage("references"):  # built from the float model, before the quantizers go in
            references = graphs.references(loaded, splits, example, float_path, ref, splits.fingerprint)

    prepare(loaded.model.hf, plan, per_channel_weights=recipe.quantization.per_channel_weights)
    with ctx.stage("calibrate"):
        channel_amax: dict[str, torch.Tensor] = {}
        wants_channels = "int8-smoothquant" in recipe.quantization.families or bool(recipe.search and recipe.search.smoothquant_alphas)
        calibrators, cal_info = calibration_statistics(ctx, loaded, splits, plan, channel_amax=channel_amax if wants_channels else None)
        with atomic_path(run_dir / "calibration_stats.npz") as tmp:
            shutil.copyfile(cal_info["cache_file"], tmp)

    if recipe.search is not None:  # issue 4: sensitivity, fallback and an Optuna study reuse these statistics
        from .search.study import run_search

        return run_search(
            ctx, loaded, splits, plan, calibrators, cal_info, example, float_path, base_key, fidelity_float, t_start, channel_amax,
            engine_graphs=graphs, references=references,
        )

    float_artifacts = {"onnx": "models/float.onnx"}
    if float_engine_path != float_path:
        float_artifacts["engine_onnx"] = f"models/{float_engine_path.name}"
    variants: list[VariantResult] = [
        VariantResult(name="float", precision="float32", artifacts=float_artifacts, fidelity=fidelity_float, size_bytes=_size(float_path))
    ]
    engines_paths: dict[str, Path] = {"float": float_engine_path}
    cal_info["methods"] = {}
    # One family (int8 | int8 + SmoothQuant per alpha | fp8) after another, each with every method;
    # the generator puts the model into the family's state and undoes it (families.py).
    families = family_variants(
        recipe.quantization, loaded.model, example, calibrators, channel_amax,
        lambda extra: calibration_statistics(ctx, loaded, splits, plan, extra_key=extra),
        float_tolerance=recipe.export.float_tolerance, say=say,
    )
    for family, method in families:
        name = f"{family.prefix}-{method}"
        variant = VariantResult(name=name, precision=family.precision, calibration_method=method)
        variants.append(variant)
        if family.fidelity:
            cal_info.setdefault("families", {})[family.prefix] = family.fidelity
        try:
            with ctx.stage(f"quantize {name}"):
                if family.error:
                    raise WorkbenchError(family.error, "see the family's checks in the report")
                amax = set_scales(loaded.model, family.calibrators, method, percentile=recipe.quantization.calibration.percentile)
                scales_path = models_dir / f"{name}.scales.json"
                write_json(scales_path, {"method": method, "amax": amax})
                cal_info["methods"][method if family.prefix == "int8" else name] = {"quantizers": len(amax), "median_amax": float(np.median(list(amax.values()))) if amax else None}
                path = models_dir / f"{name}.qdq.onnx"
                key = hash_json({"base": base_key, "plan": plan.to_rows(), "amax": amax, "weights": recipe.quantization.per_channel_weights, **family.key})
                if not artifact_is_current(path, key):
                    export_onnx(loaded.model, path, example, loaded.input_names, loaded.output_name, recipe.export.opset)
                    mark_artifact(path, key)
                variant.artifacts = {"onnx": f"models/{path.name}", "scales": f"models/{scales_path.name}"}
                variant.size_bytes = _size(path)
                variant.fidelity = {**_qdq_fidelity(recipe, loaded, path, example), **family.fidelity}
                engine_path = graphs.for_variant(loaded, name, path, example, variant, alpha=family.alpha, fp8=family.kind == "fp8")
                variant.engine = optimized_op_counts(engine_path, recipe.engine)
                engines_paths[name] = engine_path
        except WorkbenchError as exc:
            variant.status, variant.error = "failed", str(exc)
            say(f"  {name} failed: {exc}")
        except Exception as exc:  # a broken trial is recorded, the run goes on
            log.debug("variant %s failed", name, exc_info=True)
            variant.status, variant.error = "failed", f"{type(exc).__name__}: {exc}"
            say(f"  {name} failed: {variant.error}")

    if "int8-dynamic" in recipe.quantization.families:
        dynamic = VariantResult(name="int8-dynamic", precision="int8", calibration_method="dynamic (run time)")
        variants.append(dynamic)
        try:
            with ctx.stage("quantize int8-dynamic"):
                engines_paths[dynamic.name] = graphs.dynamic_variant(loaded, example, ref, dynamic)
                dynamic.artifacts = {"onnx": f"models/{engines_paths[dynamic.name].name}"}
                dynamic.size_bytes = _size(engines_paths[dynamic.name])
                dynamic.engine = optimized_op_counts(engines_paths[dynamic.name], recipe.engine)
        except Exception as exc:  # a failed variant is recorded, the run goes on
            log.debug("int8-dynamic failed", exc_info=True)
            dynamic.status, dynamic.error = "failed", f"{type(exc).__name__}: {exc}"
            say(f"  int8-dynamic failed: {dynamic.error}")
    if recipe.qat is not None:
        _qat_variant(ctx, loaded, splits, calibrators, plan, base_key, variants, engines_paths, example, training, graphs)
    for variant, ref_path in references:
        variants.append(variant)
        if variant.status == "ok":
            engines_paths[variant.name] = ref_path

    with ctx.stage("evaluate"):
        correct = _evaluate(ctx, loaded, splits, variants, engines_paths)
    if recipe.benchmark.enabled:
        with ctx.stage("benchmark"):
            _benchmark(ctx, loaded, variants, engines_paths)

    selection = _select(variants, correct, recipe.selection.level)
    result = RunResult(
        **run_identity(recipe, run_dir, splits),
        calibration=cal_info,
        variants=variants,
        best_variant=selection.winner,
        selection_rule=selection.rule,
        selection=selection.to_dict(),
        timings_s={**ctx.timings, "total": round(time.perf_counter() - t_start, 2)},
        training=training,
    )
    with ctx.stage("report"):
        paths = write_report(result, run_dir)
        plan_rows = plan.to_rows()
        write_json(run_dir / "quant_plan.json", plan_rows)
    say("")
    say(results_table(result))
    say(f"\nreport: {paths['markdown']}")
    if recipe.deploy is not None:
        from .deploy import deploy_run

        with ctx.stage("deploy"):
            deploy_run(run_dir, recipe=recipe, result=result, say=say)
    return result


def _qat_variant(
    ctx: RunContext,
    loaded: LoadedModel,
    splits: Splits,
    calibrators: dict[str, HistogramCalibrator],
    plan: QuantPlan,
    base_key: str,
    variants: list[VariantResult],
    engines_paths: dict[str, Path],
    example: dict[str, torch.Tensor],
    training: dict[str, Any],
    graphs: EngineGraphs,
) -> None:
    """`qat` section: train from PTQ-initialised scales (train.qat_model), export and check like PTQ."""
    from dataclasses import replace

    from .train import qat_model

    recipe, name = ctx.recipe, "int8-qat"
    variant = VariantResult(name=name, precision="int8")
    variants.append(variant)
    try:
        with ctx.stage("qat"):
            model, info = qat_model(recipe, loaded, splits, calibrators, progress=ctx.progress, say=ctx.say, plots_dir=ctx.run_dir / "plots")
            training["qat"] = info
            variant.calibration_method = f"qat (init {info['init_method']})"
            amax = {n: float(q.amax) for n, q in activation_quantizers(model).items() if q.enabled}
            scales_path = ctx.run_dir / "models" / f"{name}.scales.json"
            write_json(scales_path, {"method": "qat", "init_method": info["init_method"], "amax": amax})
            path = ctx.run_dir / "models" / f"{name}.qdq.onnx"
            key = hash_json({"base": base_key, "plan": plan.to_rows(), "qat": info["cache_key"], "weights": recipe.quantization.per_channel_weights})
            if not artifact_is_current(path, key):
                export_onnx(model, path, example, loaded.input_names, loaded.output_name, recipe.export.opset)
                mark_artifact(path, key)
            variant.artifacts = {"onnx": f"models/{path.name}", "scales": f"models/{scales_path.name}"}
            variant.size_bytes = _size(path)
            qat_loaded = replace(loaded, model=model)
            variant.fidelity = _qdq_fidelity(recipe, qat_loaded, path, example)
            # QAT trained the weights: its fused graph is exported from the trained model, keyed by its checkpoint
            engine_path = graphs.for_variant(qat_loaded, name, path, example, variant, weights_key=info["cache_key"])
            variant.engine = optimized_op_counts(engine_path, recipe.engine)
            engines_paths[name] = engine_path
    except WorkbenchError as exc:
        variant.status, variant.error = "failed", str(exc)
        ctx.say(f"  {name} failed: {exc}")
    except Exception as exc:  # a broken trial is recorded, the run goes on
        log.debug("variant %s failed", name, exc_info=True)
        variant.status, variant.error = "failed", f"{type(exc).__name__}: {exc}"
        ctx.say(f"  {name} failed: {variant.error}")


def _qdq_fidelity(recipe: Recipe, loaded: LoadedModel, path: Path, example: dict[str, torch.Tensor]) -> dict[str, Any]:
    summary = qdq_summary(path)
    layers = per_layer_fidelity(path, loaded.model, example, lambda b: OrtEngine(b, recipe.engine, "layer"))
    with torch.no_grad():
        fake = loaded.model(**example).numpy()
        with float_mode(loaded.model):
            reference = loaded.model(**example).numpy()
    with OrtEngine(path, recipe.engine, path.stem) as eng:
        got = eng({k: v.numpy() for k, v in example.items()})
    cos = cosine_rows(got, fake)
    # Two correct implementations of one quantized model drift apart end to end in proportion to its
    # own quantization noise (a value on a rounding boundary lands one step apart, and that propagates
    # through later layers; ONNX Runtime's fused integer kernels round differently from fake quant).
    # The per-layer check (cosine >= 0.9999 per Linear) is what catches export bugs; end to end, the
    # ONNX model may differ from fake quant by up to half the fake-quant model's distance from float.
    noise = float(1.0 - cosine_rows(fake, reference).mean())
    allowed = end_to_end_allowance(noise, recipe.export.min_cosine)
    worst = min(layers, key=lambda x: x.cosine) if layers else None
    out = {
        "graph": summary,
        "per_layer": {
            "layers": len(layers),
            "min_cosine": worst.cosine if worst else None,
            "worst_layer": worst.module if worst else None,
            "max_abs_diff": max((x.max_abs_diff for x in layers), default=0.0),
            "passed": all(x.ok() for x in layers),
        },
        "end_to_end": {
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "threshold": 1.0 - allowed,
            "fake_quant_vs_float_cosine": 1.0 - noise, "passed": bool(1.0 - cos.mean() <= allowed), "samples": len(cos),
        },
    }
    if not out["per_layer"]["passed"] or not out["end_to_end"]["passed"]:
        raise WorkbenchError(
            f"Q/DQ ONNX {path.name} disagrees with the fake-quant model "
            f"(worst layer {out['per_layer']['worst_layer']} cosine {out['per_layer']['min_cosine']:.5f}, end-to-end mean cosine {cos.mean():.4f}, "
            f"allowed >= {1.0 - allowed:.4f}).",
            "this is an export bug; run with --debug and report it",
        )
    return out


def _evaluate(ctx: RunContext, loaded: LoadedModel, splits: Splits, variants: list[VariantResult], paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Score every ok variant; returns per-example correctness by name, for the paired tests of the selection."""
    recipe = ctx.recipe
    bs = recipe.quantization.calibration.batch_size
    maxlen = recipe.model.max_seq_length
    outputs: dict[str, np.ndarray] = {}
    for v in variants:
        if v.status != "ok":
            continue
        try:
            with EngineFromOnnx(paths[v.name], recipe, v.name, v.precision) as eng:
                outputs[v.name] = run_outputs(eng, splits.evaluation, loaded.tokenizer, loaded.input_names, maxlen, bs, f"evaluate {v.name}", ctx.progress)
                if v.name == "float" and recipe.model.task == "embedding":
                    probe_x = run_outputs(eng, splits.probe, loaded.tokenizer, loaded.input_names, maxlen, bs, "embed probe split", ctx.progress)
                v.engine = {**eng.describe(), **v.engine}
        except Exception as exc:
            v.status, v.error = "failed", f"evaluation failed: {exc}"
            outputs.pop(v.name, None)  # half-scored variants are not scored
    if "float" not in outputs:
        raise WorkbenchError("the float baseline could not be evaluated; nothing to compare against.", "see the error above")
    labels = splits.evaluation.labels
    if recipe.model.task == "embedding":
        probe = LinearProbe(seed=recipe.seed).fit(probe_x, splits.probe.labels)
        for v in variants:
            if v.name in outputs:
                v.metrics = score_embedding(probe, outputs[v.name], labels, outputs["float"])
        preds = {name: probe.predict(out) for name, out in outputs.items()}
    else:
        for v in variants:
            if v.name in outputs:
                v.metrics = score_classification(outputs[v.name], labels, outputs["float"])
        preds = {name: out.argmax(-1) for name, out in outputs.items()}
    level = recipe.selection.level
    for v in variants:
        if v.name in preds:
            v.intervals = prediction_statistics(preds[v.name], labels, None if v.name == "float" else preds["float"], level, seed=recipe.seed)
    return {name: pred == labels for name, pred in preds.items()}


def _benchmark(ctx: RunContext, loaded: LoadedModel, variants: list[VariantResult], paths: dict[str, Path]) -> None:
    spec = ctx.recipe.benchmark
    engines: dict[str, Engine] = {}
    for v in [v for v in variants if v.status == "ok"]:
        try:
            engines[v.name] = EngineFromOnnx(paths[v.name], ctx.recipe, v.name, v.precision, threads=spec.threads)
        except Exception as exc:  # e.g. a TensorRT build that fails at the benchmark's shapes: that variant fails, the rest is timed
            v.status, v.error = "failed", f"benchmark engine failed: {exc}"
            ctx.say(f"  {v.name} failed: {v.error}")
    ok = [v for v in variants if v.status == "ok"]
    if "float" not in engines:
        ctx.say("  benchmark skipped: the float baseline has no engine")
        return
    try:
        latency = benchmark_interleaved(dict(engines.items()), spec, loaded.input_names, loaded.vocab_size, progress=ctx.progress, level=ctx.recipe.selection.level)
    finally:
        engines.clear()
    ratios = speedups(latency, "float")
    intervals = speedup_intervals(latency, "float", ctx.recipe.selection.level)
    for v in ok:
        v.latency = latency.get(v.name, [])
        v.speedup_vs_float = ratios.get(v.name, {})
        v.speedup_interval_vs_float = intervals.get(v.name, {})
    capped = sorted({f"{s.key} ({s.stop}, {s.iterations} iterations)" for s in latency["float"] if s.stop in ("time cap", "iteration cap")})
    if capped:
        ctx.say(f"  benchmark stopped at its cap before the speed-up intervals reached ±{(spec.speedup_tolerance or 0) * 100:g} %: {', '.join(capped)}")


def _select(variants: list[VariantResult], correct: dict[str, np.ndarray], level: float) -> Selection:
    return select_variant(variants, correct, level)


def dry_run(recipe: Recipe, say: Callable[[str], None] = print) -> QuantPlan:
    """Resolve the recipe and the quantization plan without touching data or running anything."""
    loaded = load_model(recipe.model, num_labels=len(recipe.data.label_names) if recipe.data.label_names else None)
    plan = build_plan(loaded.model.hf, recipe.quantization)
    say("# resolved recipe")
    say(recipe.to_yaml())
    say(f"# quantization plan for {recipe.model.source} ({', '.join(recipe.quantization.families)}, activations per-tensor, "
        f"weights {'per-channel (output axis)' if recipe.quantization.per_channel_weights else 'per-tensor'})")
    say(plan.describe())
    cal = recipe.quantization.calibration
    say(f"# calibration: methods {', '.join(cal.methods)} from one pass over {recipe.data.calibration_samples} samples (batch {cal.batch_size})")
    say(f"# would write: {run_dir_for(recipe)}")
    return plan


def load_result(run_dir: Path) -> RunResult:
    return RunResult.from_dict(json.loads((run_dir / "report.json").read_text()))
