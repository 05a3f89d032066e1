"""The run's calibration stage: one pass over the calibration split, cached by everything it depends on.

The observers (quantize/observers.py) know nothing of recipes or caches; this module feeds it the recipe's
calibration split and keeps the statistics on disk, so one pass serves every method, every layer
selection and every search trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from quant_workbench import __version__
from quant_workbench.config.recipe import Recipe
from quant_workbench.core.artifacts import hash_json
from quant_workbench.data.splits import Splits
from quant_workbench.models.loading import LoadedModel, to_torch, tokenize
from quant_workbench.quantize.apply import calibrate
from quant_workbench.quantize.observers import HistogramCalibrator, load_stats, save_stats
from quant_workbench.quantize.plan import QuantPlan
from quant_workbench.quantize.smoothquant import (
    ChannelAmaxCollector,
    channel_amax_path,
    load_channel_amax,
    save_channel_amax,
)

log = logging.getLogger(__name__)


def forward_loop(loaded: LoadedModel, splits: Splits, batch_size: int, progress: bool) -> Callable[[torch.nn.Module], None]:
    """The caller-owned data loop the calibrators observe (ModelOpt's `forward_loop` contract)."""
    texts = splits.calibration.texts

    def loop(model: torch.nn.Module) -> None:
        steps = range(0, len(texts), batch_size)
        for start in tqdm(steps, desc="calibrate", disable=not progress, leave=False):
            feed = tokenize(loaded.tokenizer, texts[start : start + batch_size], loaded.spec.max_seq_length, loaded.input_names)
            model(**to_torch(feed))

    return loop


def calibration_statistics(
    recipe: Recipe,
    loaded: LoadedModel,
    splits: Splits,
    plan: QuantPlan,
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
    extra_key: dict[str, Any] | None = None,
    channel_amax: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, HistogramCalibrator], dict[str, Any]]:
    """One pass over the calibration split, cached by model + data + quantizer layout.

    `extra_key` (e.g. the SmoothQuant alpha of a rewritten model) joins the cache key; without it the
    key is unchanged. A `channel_amax` dict is filled with every QuantLinear's per-input-channel abs
    max, collected in the same pass and cached beside the statistics (an older cache without it is
    refreshed once).
    """
    cal = recipe.quantization.calibration
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
    cache = Path(cal.cache_dir) / f"{recipe.name}-{key[:16]}.npz"
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
                say(f"  calibration statistics from cache {cache}")
                return calibrators, info
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            log.warning("ignoring unreadable calibration cache %s: %s", cache, exc)
    loop = forward_loop(loaded, splits, cal.batch_size, progress)
    with ChannelAmaxCollector(loaded.model) as channels:
        calibrators = calibrate(loaded.model, loop, num_bins=cal.num_bins)
    save_stats(cache, calibrators, {"key": key, "model": loaded.spec.source})
    save_channel_amax(channels_file, key, channels.amax)
    if channel_amax is not None:
        channel_amax.update(channels.amax)
    info.update(cache_hit=False, seconds=round(time.perf_counter() - t0, 3))
    return calibrators, info
