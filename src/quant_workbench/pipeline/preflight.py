"""Checks that run before any data, model or export work, so a run that cannot finish fails in seconds.

Each check raises a WorkbenchError naming the recipe field, the bad value and the fix: run ids and the
run folder's place, writable output and cache folders, the model source (local, cached, or a Hub id the
user allows), the execution provider, and batch x sequence length against the model's position limit
and this machine's memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.errors import ModelError, WorkbenchError

# Working memory per token of one forward pass: a few hidden-sized tensors alive at once (residual,
# attention output, LayerNorm output), the FFN's intermediate activation and one attention-score row per
# head. A deliberately rough lower bound (not measured per model): it only has to catch requests that are
# off by orders of magnitude, like batch 100000, before they reach the allocator or the OOM killer.
_LIVE_TENSORS = 3


def check_run_id(run_id: str | None) -> None:
    if run_id is None:
        return
    if run_id in ("", ".", "..") or any(sep in run_id for sep in ("/", "\\", os.sep, "\0")):
        raise WorkbenchError(
            f"--run-id {run_id!r} is not a folder name: a run id is one path segment, so the run folder stays inside "
            "output_dir/<recipe name>/.",
            "use letters, digits, '-', '_' or '.' (not '.' or '..' alone), e.g. --run-id trial-2",
        )


def check_run_dir(recipe: Recipe, run_dir: Path) -> None:
    """The resolved run folder must lie inside the resolved output_dir (symlinked parents included)."""
    out = Path(recipe.output_dir).resolve()
    resolved = run_dir.resolve()
    if resolved == out or out not in resolved.parents:
        raise WorkbenchError(
            f"run folder '{run_dir}' resolves to '{resolved}', outside output_dir '{out}'.",
            "use a plain recipe name and --run-id (one folder name each) and no symlink that leads out of output_dir",
        )


def check_writable(folder: Path | str, field: str, *, create: bool = True) -> None:
    """Create `folder` if needed and prove a file can be written in it, before hours of work depend on it.
    `create=False` (a dry run) creates nothing: the nearest existing folder must let us create it."""
    path = Path(folder)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        else:
            existing = next(p for p in (path, *path.parents) if p.exists())
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(existing))
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", str(existing))
    except OSError as exc:
        raise WorkbenchError(
            f"cannot write to output folder '{folder}' ({field}): {exc.strerror or exc}; the run would fail there after its work is done.",
            f"choose a writable folder with --set {field}=PATH (relative paths are under the current folder "
            f"'{Path.cwd()}') or fix its permissions",
        ) from exc


def hub_allowed() -> bool:
    """Downloads happen only when the user turned offline mode off (HF_HUB_OFFLINE=0); the CLI defaults it to 1."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("0", "false", "no", "")


def model_config(recipe: Recipe) -> dict[str, Any] | None:
    """The model's config.json (local folder or HF cache) checked now; None for a Hub id that will be downloaded."""
    spec = recipe.model
    location = spec.location
    local = Path(location)
    if local.exists():
        config_file = local / "config.json"
        if not config_file.is_file():
            return None  # models.load_model explains a folder without config.json
    else:
        looks_like_path = location.startswith((".", "/", "~")) or location.count("/") > 1 or spec.source.startswith("package:")
        if looks_like_path:
            return None  # models.load_model names the missing path
        cached = _cached_config(location, spec.revision)
        if cached is None:
            if hub_allowed():
                return None
            raise ModelError(
                f"model.source '{spec.source}' is not a local folder and is not in the Hugging Face cache; runs are "
                "offline unless you allow downloads, so it cannot be loaded.",
                "point model.source at a local model folder, or allow the download once with "
                "HF_HUB_OFFLINE=0 quantize RECIPE.yaml (it is cached afterwards)",
            )
        config_file = cached
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"the model's config.json '{config_file}' is not valid JSON: {exc}.",
            "restore the file from the model's original copy (or delete the folder and save the model again)",
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(f"the model's config.json '{config_file}' holds a {type(data).__name__}, not a JSON object.", "restore the file from the model's original copy")
    return data


def _cached_config(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return None
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def available_memory_bytes() -> int | None:
    """MemAvailable, or the cgroup limit minus usage when that is smaller (containers)."""
    best: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        usage = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            free = int(limit) - usage
            best = free if best is None else min(best, free)
    except (OSError, ValueError):
        pass
    return best


def forward_bytes(config: dict[str, Any], batch: int, seq: int) -> int:
    """Rough peak working memory of one float32 forward pass (see _LIVE_TENSORS)."""
    hidden = int(config.get("hidden_size", 768))
    inter = int(config.get("intermediate_size", 4 * hidden))
    heads = int(config.get("num_attention_heads", 12))
    per_token = _LIVE_TENSORS * hidden + inter + heads * seq
    return batch * seq * per_token * 4


def shapes(recipe: Recipe) -> list[tuple[str, int, int]]:
    """(recipe field, batch, seq) of every forward pass the run will make."""
    seq = recipe.model.max_seq_length
    out = [("quantization.calibration.batch_size", recipe.quantization.calibration.batch_size, seq)]
    if recipe.benchmark.enabled:
        out += [("benchmark.batch_sizes x benchmark.seq_lengths", b, s) for b in recipe.benchmark.batch_sizes for s in recipe.benchmark.seq_lengths]
    if recipe.search is not None and "latency" in recipe.search.objectives:
        out.append(("search.latency.batch_size", recipe.search.latency.batch_size, recipe.search.latency.seq_length or seq))
    return out


def check_exporter_bounds(recipe: Recipe) -> None:
    """Every shape the run feeds must lie inside the dynamic axes the ONNX graphs are exported for."""
    from quant_workbench.export.qdq import EXPORT_MAX_BATCH, EXPORT_MAX_SEQ, EXPORT_MIN_SEQ

    for field, batch, seq in shapes(recipe):
        if batch > EXPORT_MAX_BATCH or not EXPORT_MIN_SEQ <= seq <= EXPORT_MAX_SEQ:
            raise WorkbenchError(
                f"{field}: batch {batch} x sequence length {seq} is outside the exported graphs' dynamic axes "
                f"(batch 1-{EXPORT_MAX_BATCH}, sequence {EXPORT_MIN_SEQ}-{EXPORT_MAX_SEQ}).",
                f"use batches of at most {EXPORT_MAX_BATCH} and sequence lengths from {EXPORT_MIN_SEQ} to {EXPORT_MAX_SEQ}",
            )


def check_bounds(recipe: Recipe, config: dict[str, Any] | None, available: int | None = None) -> None:
    _check_model_bounds(recipe, config, available)
    check_exporter_bounds(recipe)


def _check_model_bounds(recipe: Recipe, config: dict[str, Any] | None, available: int | None) -> None:
    if config is None:
        return
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int):
        long = [(f, s) for f, _, s in shapes(recipe) if s > limit] + ([("model.max_seq_length", recipe.model.max_seq_length)] if recipe.model.max_seq_length > limit else [])
        if long:
            field, seq = long[-1]
            raise ModelError(
                f"{field}: sequence length {seq} exceeds the model's limit of {limit} positions (max_position_embeddings).",
                f"set model.max_seq_length and benchmark.seq_lengths to {limit} or less",
            )
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    field, batch, seq = max(shapes(recipe), key=lambda x: forward_bytes(config, x[1], x[2]))
    need = forward_bytes(config, batch, seq)
    if need > available:
        gib = 1 << 30
        # the largest batch at this length that fits, so the hint is a value the user can paste
        fits = max(1, available // max(1, forward_bytes(config, 1, seq)))
        raise WorkbenchError(
            f"{field}: batch {batch} x sequence length {seq} needs about {need / gib:.1f} GiB of working memory for one "
            f"forward pass (batch x seq x ({_LIVE_TENSORS} x hidden {config.get('hidden_size')} + intermediate "
            f"{config.get('intermediate_size')} + heads x seq) x 4 bytes), but only {available / gib:.1f} GiB is available.",
            f"use a batch of at most {fits} at length {seq} (e.g. {_smaller_batch(recipe, field, min(fits, 32))})",
        )


def _smaller_batch(recipe: Recipe, field: str, fits: int) -> str:
    """A --set for the field that asked for the batch (each shape of `shapes` names its own field)."""
    if field.startswith("benchmark."):
        kept = sorted({b for b in recipe.benchmark.batch_sizes if b <= fits} | {fits})
        return f"--set benchmark.batch_sizes=[{','.join(map(str, kept))}]"
    return f"--set {field}={fits}"


def check_provider(recipe: Recipe) -> None:
    if recipe.engine.runtime != "onnxruntime" or recipe.engine.provider == "cpu":
        return
    from quant_workbench.runtime.onnxruntime import session_providers

    session_providers(recipe.engine)  # names the missing execution provider and the fix


def run_preflight(recipe: Recipe, run_dir: Path, *, create: bool = True) -> None:
    """Everything that can be checked before the data stage, cheapest first (`create=False`: a dry run,
    which leaves no folder behind)."""
    check_run_dir(recipe, run_dir)
    check_writable(recipe.output_dir, "output_dir", create=create)
    check_writable(recipe.quantization.calibration.cache_dir, "quantization.calibration.cache_dir", create=create)
    check_provider(recipe)
    check_bounds(recipe, model_config(recipe))
