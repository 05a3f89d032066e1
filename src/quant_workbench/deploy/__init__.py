"""Deployment: Triton model repositories (and TensorRT engines) for a finished run.

`deploy_run(run_dir)` is what `quantize deploy RUN_DIR` and a recipe's `deploy:` section call: it
reads the run's report.json and resolved recipe, builds the engines a target compiles (TensorRT plans
for the `tensorrt` target), writes the repository (see deploy/triton.py) and validates it. Each
target named in the catalog (config/catalog.py DEPLOY_TARGETS) has its builder registered in TARGETS
(deploy/targets.py) by deploy/triton.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from quant_workbench.config.recipe import DeploySpec, Recipe, load_recipe
from quant_workbench.core.artifacts import content_problem
from quant_workbench.core.errors import OptionalDependencyError
from quant_workbench.core.results import RunResult
from quant_workbench.deploy.targets import TARGETS
from quant_workbench.deploy.triton import (
    DeployError,
    Repository,
    resolve_variants,
    validate_repository,
    write_repository,
)

__all__ = ["DeployError", "Repository", "deploy_run", "preflight", "validate_repository", "write_repository"]


def preflight(spec: DeploySpec, build_engines: bool = True) -> None:
    """Fail fast (before a long run) when an optional package the deploy section needs is missing."""
    from quant_workbench.deploy.triton import model_config_pb2

    model_config_pb2()
    for target in spec.targets if build_engines else []:
        check = TARGETS.get(target).preflight
        if check is not None:
            check()


def _shipped(run_dir: Path, rel: str) -> Path:
    """A run artifact the repository will carry, checked byte for byte against what the run wrote and
    checked (its `.key` sidecar's sha256): a file damaged or edited since is never shipped."""
    path = run_dir / rel
    problem = content_problem(path)
    if problem is not None:
        raise DeployError(
            f"'{path}' cannot be deployed: {problem}.",
            f"re-run the recipe that wrote '{run_dir}' (the same command; it rebuilds the file and records its hash), "
            "then deploy again",
        )
    return path


def deploy_run(
    run_dir: Path | str,
    out: Path | str | None = None,
    *,
    recipe: Recipe | None = None,
    result: RunResult | None = None,
    build_engines: bool = True,
    say: Callable[[str], None] = print,
    variants: list[str] | None = None,
) -> Repository:
    """`variants` (quantize deploy --variants) overrides the recipe's deploy.variants."""
    run_dir = Path(run_dir)
    if result is None:
        from quant_workbench.report.schema import load_report

        result = load_report(run_dir)
    if recipe is None:
        resolved = run_dir / "recipe.resolved.yaml"
        if not resolved.is_file():
            raise DeployError(f"'{run_dir}' has no recipe.resolved.yaml.", "re-run the recipe to recreate the run folder")
        recipe = load_recipe(resolved)
    spec = recipe.deploy or DeploySpec()
    if variants:
        spec = spec.model_copy(update={"variants": list(dict.fromkeys(variants))})
    preflight(spec, build_engines)

    files: dict[str, Path] = {}
    cpu_files: dict[str, Path] = {}  # what ONNX Runtime CPU ran in the run: the fused engine graphs
    engine_rels: dict[str, str] = {}
    for v in result.variants:
        onnx_rel = v.artifacts.get("onnx")
        if v.status == "ok" and onnx_rel and (run_dir / onnx_rel).exists():
            files[v.name] = run_dir / onnx_rel
            graph = v.fidelity.get("engine_graph") if isinstance(v.fidelity, dict) else None
            engine_rel = v.artifacts.get("engine_onnx") or (graph.get("path") if isinstance(graph, dict) and graph.get("graph") != "qdq" else None)
            if engine_rel:
                engine_rels[v.name] = str(engine_rel)
    # only what is shipped must be intact; a damaged file of a variant nobody asked for is no reason to stop
    for name in resolve_variants(spec.variants, result.best_variant, files):
        files[name] = _shipped(run_dir, str(files[name].relative_to(run_dir)))
        if name in engine_rels:
            cpu_files[name] = _shipped(run_dir, engine_rels[name])
    precision = {v.name: v.precision for v in result.variants}
    rows = {v.name: (v.runtime, v.inference_precision) for v in result.variants}  # issue 17: each row's engine
    engines: dict[tuple[str, str], Path] = {}
    notes: dict[tuple[str, str], str] = {}
    compiling = [(t, TARGETS.get(t)) for t in spec.targets if build_engines and TARGETS.get(t).build_engine is not None]
    if compiling:
        from quant_workbench.core.errors import WorkbenchError

        for name in resolve_variants(spec.variants, result.best_variant, files):
            for target, backend in compiling:
                assert backend.build_engine is not None
                label = backend.engine_label or target
                say(f"  building {label} engine for {name}")
                try:
                    engines[(name, target)] = backend.build_engine(recipe, spec, files[name], run_dir / "engines", name, precision.get(name))
                except WorkbenchError as exc:  # this engine failed; the rest of the repository is still written
                    if isinstance(exc, OptionalDependencyError):
                        raise
                    notes[(name, target)] = f"engine build failed: {exc}"
                    say(f"  {name}: {label} engine build failed: {exc}")

    try:
        repo = write_repository(
            run_dir,
            recipe,
            files,
            precision,
            result.best_variant,
            result.task,
            out=Path(out) if out is not None else None,
            spec=spec,
            engines=engines,
            notes=notes,
            cpu_files=cpu_files,
            rows=rows,
        )
    except OSError as exc:  # a full disk, a folder that vanished: nothing was moved into place
        raise DeployError(
            f"writing the Triton repository failed: {exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}.",
            "free space or fix permissions where the repository goes (--out), then deploy again",
        ) from exc
    validate_repository(repo.path)
    say(f"  Triton model repository: {repo.path}")
    if (run_dir / "report.json").is_file():  # the run's report shows what was deployed and how engines came out
        from quant_workbench.report.markdown import update_report
        from quant_workbench.runtime.tensorrt import build_summary

        summaries = {name: build_summary(plan) for (name, _), plan in engines.items()}
        trt_layers = {name: info for name, info in summaries.items() if info is not None}
        update_report(run_dir, "triton", {
            "path": str(repo.path),
            "models": [{"ensemble": m.ensemble, "name": m.name, "kind": m.kind, "note": m.note} for m in repo.models],
            "failed_engines": {f"{n}/{t}": note for (n, t), note in notes.items()},
        })
        if trt_layers:
            update_report(run_dir, "tensorrt_engines", trt_layers)
    for m in repo.models:
        say(f"    {m.ensemble:<28} text -> {m.name} ({m.kind}){'  ' + m.note if m.note else ''}")
    return repo
