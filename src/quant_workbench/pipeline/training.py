"""Float fine-tuning and quantization-aware training (QAT) of sequence classifiers.

    finetune_float(recipe, loaded, splits)          # `finetune` section: train the float model (cached)
    qat_model(recipe, loaded, splits, calibrators)  # `qat` section: PTQ-initialised scales, then fake-quant training

Both run the same `Trainer`: AdamW (no decay on biases / LayerNorm), linear warm-up then linear decay,
gradient clipping, validation every `eval_every` steps on a split carved from the probe split (so it
never touches the calibration or the test split), early stopping, best checkpoint kept.

Checkpoints live in `<checkpoint_dir>/<kind>-<key>/`, the key hashing model + data + recipe section:
`last.pt` (model, optimizer, scheduler, step, RNG states, history; written atomically at every
validation) lets an interrupted run resume; `best.pt` is the best model by validation metric;
`result.json` marks a finished training, so the next run loads `best.pt` instead of training again.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from quant_workbench import __version__
from quant_workbench.config.recipe import (
    CalibMethod,
    DistillationSpec,
    FinetuneSpec,
    QatSpec,
    Recipe,
    TrainSpec,
)
from quant_workbench.core.artifacts import atomic_path, hash_json, write_json
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.data.splits import Splits, TextSet
from quant_workbench.measure.accuracy import classification_metrics
from quant_workbench.models import EncoderWithHead
from quant_workbench.models.loading import LoadedModel, batches, to_torch, tokenize
from quant_workbench.quantize.apply import activation_quantizers, quantizers, set_scales, strip_quantization
from quant_workbench.quantize.observers import HistogramCalibrator, per_channel_amax
from quant_workbench.quantize.quantizer import TensorQuantizer
from quant_workbench.quantize.schemes import SchemeState, scheme_for

log = logging.getLogger(__name__)

DEFAULT_FLOAT_LR = 5e-5
CHECKPOINT_VERSION = 1


class TrainingError(WorkbenchError):
    pass


# ---------------------------------------------------------------------------------------------
# data and losses


def train_validation(splits: Splits, validation_samples: int) -> tuple[TextSet, TextSet]:
    """Training and validation sets, both cut from the probe split (disjoint from calibration and test).

    The probe split is already a seeded random sample, so its first `validation_samples` rows are too.
    """
    probe = splits.probe
    n = validation_samples
    val = TextSet(texts=probe.texts[:n], labels=probe.labels[:n])
    train = TextSet(texts=probe.texts[n:], labels=probe.labels[n:])
    return train, val


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    weight: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(1-w)*CE(student, labels) + w*T^2*KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    ce = F.cross_entropy(student_logits.float(), labels)
    if teacher_logits is None or weight == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - weight) * ce + weight * t * t * kl


def hidden_mse(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over layers of the MSE between student and teacher hidden states."""
    losses = [F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher, strict=True)]
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# quantizer helpers for QAT


def refresh_weight_scales(model: nn.Module) -> None:
    """Weight ranges follow the weights while they train (per-channel max, as PTQ computes them)."""
    with torch.no_grad():
        for name, q in quantizers(model).items():
            if not name.endswith(".weight_quantizer") or not q.enabled:
                continue
            weight = model.get_submodule(name.rsplit(".", 1)[0]).get_parameter("weight").detach()
            axis = q.fmt.axis
            q.set_amax(per_channel_amax(weight, axis) if axis is not None else weight.abs().max())


def _lsq_forward(self: TensorQuantizer, x: torch.Tensor) -> torch.Tensor:
    if not self.enabled or self.calibrating or self.export_mode:
        return TensorQuantizer.forward(self, x)
    scale = self.learned_scale
    assert isinstance(scale, torch.Tensor)
    # LSQ's gradient scale 1/sqrt(N * Qp) keeps the step-size updates comparable to the weights'.
    grad_factor = 1.0 / math.sqrt(x.numel() * self.fmt.qmax)
    zero = torch.zeros(1, device=x.device, dtype=torch.float32)
    out: torch.Tensor = torch._fake_quantize_learnable_per_tensor_affine(
        x.float(), scale.abs().clamp_min(1e-8), zero, self.fmt.qmin, self.fmt.qmax, grad_factor
    )
    return out.to(x.dtype)


def make_amax_learnable(model: nn.Module) -> list[str]:
    """Give every enabled per-tensor activation quantizer a learnable scale (LSQ straight-through)."""
    names = []
    for name, q in activation_quantizers(model).items():
        if q.enabled and q.fmt.axis is None and q.is_calibrated:
            q.learned_scale = nn.Parameter(q._scale.detach().clone().reshape(1))
            q.learn_amax = True
            q.forward = types.MethodType(_lsq_forward, q)  # type: ignore[method-assign]
            names.append(name)
    return names


def freeze_learned_amax(model: nn.Module) -> dict[str, float]:
    """Copy learned scales into the quantizers' amax buffers and drop the learnable parameters."""
    out = {}
    for name, q in activation_quantizers(model).items():
        if getattr(q, "learn_amax", False) and hasattr(q, "learned_scale"):
            learned = q.learned_scale
            assert isinstance(learned, torch.Tensor)
            scale = learned.detach().abs().clamp_min(1e-8)
            q.set_amax(scale.reshape(()) * q.fmt.max_representable)
            del q.learned_scale
            del q.forward
            q.learn_amax = False
            out[name] = float(q.amax)
    return out


# ---------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    kind: str
    key: str
    checkpoint: str
    cache_hit: bool = False
    resumed_from_step: int | None = None
    steps: int = 0
    total_steps: int = 0
    best_step: int | None = None
    best_validation: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        evals = [h for h in self.history if "validation" in h]
        return {
            "kind": self.kind,
            "cache_key": self.key,
            "checkpoint": self.checkpoint,
            "cache_hit": self.cache_hit,
            "resumed_from_step": self.resumed_from_step,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "best_step": self.best_step,
            "best_validation": self.best_validation,
            "validations": len(evals),
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 2),
        }


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "LayerNorm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Trainer:
    """One training run of `model.hf` (a HF sequence classifier) with checkpoints under `folder`."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        input_names: list[str],
        max_length: int,
        train_set: TextSet,
        val_set: TextSet,
        spec: TrainSpec,
        *,
        kind: str,
        key: str,
        learning_rate: float,
        teacher: nn.Module | None = None,
        distillation: DistillationSpec | None = None,
        before_step: Callable[[nn.Module], None] | None = None,
        on_step: Callable[[Trainer], None] | None = None,
        progress: bool = True,
        device: torch.device | None = None,
    ) -> None:
        if len(train_set) == 0:
            raise TrainingError(f"{kind}: the training split is empty.", "raise data.probe_samples above data.validation_samples")
        self.model, self.tokenizer, self.input_names, self.max_length = model, tokenizer, input_names, max_length
        self.train_set, self.val_set, self.spec = train_set, val_set, spec
        self.kind, self.key, self.lr = kind, key, learning_rate
        self.teacher, self.distillation = teacher, distillation
        self.before_step, self.on_step, self.progress = before_step, on_step, progress
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.folder = Path(spec.checkpoint_dir) / f"{kind}-{key[:16]}"
        self.steps_per_epoch = math.ceil(len(train_set) / spec.batch_size)
        epochs = spec.epochs if spec.epochs is not None else 1.0
        self.total_steps = spec.max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))
        self.warmup_steps = int(spec.warmup_ratio * self.total_steps)
        self.model.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
        torch.manual_seed(spec.seed)
        self.optimizer = torch.optim.AdamW(_param_groups(model, spec.weight_decay), lr=learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.history: list[dict[str, float]] = []
        self.resumed_from: int | None = None
        self.autocast = self.device.type == "cuda" and spec.mixed_precision and kind == "finetune"

    # -- paths --------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    @property
    def result_path(self) -> Path:
        return self.folder / "result.json"

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))

    # -- cache and resume ---------------------------------------------------------------------
    def cached(self) -> dict[str, Any] | None:
        if not (self.result_path.is_file() and self.best_path.is_file()):
            return None
        try:
            info: dict[str, Any] = json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("key") == self.key else None

    def load_best(self) -> None:
        state = torch.load(self.best_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)

    def try_resume(self) -> bool:
        if not self.last_path.is_file():
            return False
        try:
            ckpt = torch.load(self.last_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # an unreadable checkpoint is never trusted
            log.warning("ignoring unreadable checkpoint %s: %s", self.last_path, exc)
            return False
        if ckpt.get("key") != self.key or ckpt.get("version") != CHECKPOINT_VERSION:
            return False
        self.model.load_state_dict(ckpt["model"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.best_metric, self.best_step = ckpt["best_metric"], ckpt["best_step"]
        self.bad_evals = int(ckpt["bad_evals"])
        self.history = list(ckpt["history"])
        _set_rng_state(ckpt["rng"])
        self.resumed_from = self.step
        return True

    def save_last(self) -> None:
        _save(
            {
                "version": CHECKPOINT_VERSION,
                "key": self.key,
                "kind": self.kind,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
                "bad_evals": self.bad_evals,
                "history": self.history,
                "rng": _rng_state(),
            },
            self.last_path,
        )

    # -- data ---------------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.spec.seed, epoch]).permutation(len(self.train_set))
        idx = order[index * self.spec.batch_size : (index + 1) * self.spec.batch_size]
        texts = [self.train_set.texts[i] for i in idx]
        feed = to_torch(tokenize(self.tokenizer, texts, self.max_length, self.input_names))
        labels = torch.from_numpy(self.train_set.labels[idx])
        return {k: v.to(self.device) for k, v in feed.items()}, labels.to(self.device)

    def _forward(self, net: nn.Module, feed: dict[str, torch.Tensor], hidden: bool) -> Any:
        hf: Any = getattr(net, "hf", net)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return hf(**feed, output_hidden_states=hidden)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        preds = []
        for feed in batches(self.tokenizer, self.val_set.texts, 64, self.max_length, self.input_names):
            out = self._forward(self.model, {k: v.to(self.device) for k, v in to_torch(feed).items()}, False)
            preds.append(out.logits.float().argmax(-1).cpu().numpy())
        return classification_metrics(np.concatenate(preds), self.val_set.labels, None)

    # -- training -----------------------------------------------------------------------------
    def _evaluate_and_checkpoint(self, pbar: Any) -> bool:
        """Validate, keep the best model, write last.pt; True when early stopping says stop."""
        if len(self.val_set):
            if self.before_step is not None:
                self.before_step(self.model)  # e.g. weight scales that follow the weights
            metrics = self.validate()
            value = metrics[self.spec.metric]
            self.history.append({"step": float(self.step), "validation": value})
            if self.best_metric is None or value > self.best_metric:
                self.best_metric, self.best_step, self.bad_evals = value, self.step, 0
                _save(self.model.state_dict(), self.best_path)
            else:
                self.bad_evals += 1
            pbar.set_postfix_str(f"{self.spec.metric} {value:.4f} (best {self.best_metric:.4f} @ {self.best_step})")
        self.save_last()
        patience = self.spec.early_stopping_patience
        return bool(len(self.val_set) and patience is not None and self.bad_evals >= patience)

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        hit = self.cached()
        if hit is not None:
            self.load_best()
            self.model.to("cpu").eval()
            return TrainResult(
                kind=self.kind, key=self.key, checkpoint=str(self.folder), cache_hit=True,
                steps=int(hit["steps"]), total_steps=int(hit["total_steps"]), best_step=hit.get("best_step"),
                best_validation=hit.get("best_validation"), stopped_early=bool(hit.get("stopped_early")),
                history=list(hit.get("history", [])), seconds=time.perf_counter() - t0,
            )
        self.try_resume()
        stopped_early = False
        need_hidden = bool(self.teacher is not None and self.distillation and self.distillation.hidden_mse_weight > 0)
        pbar = tqdm(total=self.total_steps, initial=self.step, desc=self.kind, disable=not self.progress, leave=False)
        try:
            if self.step == 0 and len(self.val_set):
                stopped_early = self._evaluate_and_checkpoint(pbar)  # step 0: the starting point (e.g. PTQ)
            while self.step < self.total_steps and not stopped_early:
                loss = self._train_step(need_hidden)
                self.step += 1
                self.history.append({"step": float(self.step), "loss": loss, "lr": float(self.scheduler.get_last_lr()[0])})
                pbar.update(1)
                pbar.set_description(f"{self.kind} loss {loss:.4f}")
                if self.step % self.spec.eval_every == 0 or self.step == self.total_steps:
                    stopped_early = self._evaluate_and_checkpoint(pbar)
                if self.on_step is not None:
                    self.on_step(self)
        finally:
            pbar.close()
        if len(self.val_set) and self.best_path.is_file():
            self.load_best()
        else:
            _save(self.model.state_dict(), self.best_path)
            self.best_step = self.step
        self.model.to("cpu").eval()
        result = TrainResult(
            kind=self.kind, key=self.key, checkpoint=str(self.folder), resumed_from_step=self.resumed_from,
            steps=self.step, total_steps=self.total_steps, best_step=self.best_step, best_validation=self.best_metric,
            stopped_early=stopped_early, history=self.history, seconds=time.perf_counter() - t0,
        )
        write_json(self.result_path, {"key": self.key, **result.summary(), "history": self.history})
        return result

    def _train_step(self, need_hidden: bool) -> float:
        self.model.train()
        if self.before_step is not None:
            self.before_step(self.model)
        feed, labels = self._batch(self.step)
        out = self._forward(self.model, feed, need_hidden)
        teacher_out = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_out = self._forward(self.teacher, feed, need_hidden)
        d = self.distillation
        loss = distillation_loss(
            out.logits, teacher_out.logits if teacher_out is not None else None, labels,
            d.weight if d else 0.0, d.temperature if d else 1.0,
        )
        if need_hidden and d is not None and teacher_out is not None:
            loss = loss + d.hidden_mse_weight * hidden_mse(out.hidden_states, teacher_out.hidden_states)
        if not torch.isfinite(loss):
            last = f"the last good checkpoint {self.last_path} (step {self._saved_step()}) is kept" if self.last_path.is_file() else "no checkpoint was written yet"
            raise TrainingError(
                f"{self.kind}: the training loss became {float(loss.detach())} at step {self.step + 1} "
                f"(of {self.total_steps}); training stopped and {last}.",
                f"lower {self.kind}.learning_rate, keep {self.kind}.max_grad_norm on, or check the data for broken rows",
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.spec.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def _saved_step(self) -> int | str:
        try:
            return int(torch.load(self.last_path, map_location="cpu", weights_only=False)["step"])
        except Exception:
            return "?"


# ---------------------------------------------------------------------------------------------
# plots


def plot_training_curve(result: TrainResult, path: Path, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in result.history if "loss" in h]
    losses = [h["loss"] for h in result.history if "loss" in h]
    vsteps = [h["step"] for h in result.history if "validation" in h]
    vals = [h["validation"] for h in result.history if "validation" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="training loss")
        k = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="tab:blue", label=f"training loss ({k}-step mean)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if vals:
        ax2 = ax.twinx()
        ax2.plot(vsteps, vals, "o-", color="tab:orange", label=f"validation {metric}")
        ax2.set_ylabel(f"validation {metric}")
        if result.best_step is not None and result.best_validation is not None:
            ax2.plot([result.best_step], [result.best_validation], "*", color="tab:red", markersize=14, label="best (kept)")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{result.kind}: {result.steps} steps" + (" (early stop)" if result.stopped_early else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# pipeline entry points (used by run.execute)


def _section_key(section: TrainSpec) -> dict[str, Any]:
    # Where checkpoints live does not change what is trained.
    return section.model_dump(mode="json", exclude={"checkpoint_dir"})


def finetune_float(
    recipe: Recipe,
    loaded: LoadedModel,
    splits: Splits,
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
    plots_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the float classifier per `recipe.finetune` (or load it from the cache).

    Updates `loaded.fingerprint` so that every downstream cache (float ONNX, calibration statistics)
    is keyed by the fine-tuned weights.
    """
    spec = recipe.finetune
    assert isinstance(spec, FinetuneSpec)
    train_set, val_set = train_validation(splits, recipe.data.validation_samples)
    key = hash_json(
        # the version: a fix to the model's forward (e.g. the attention mask) makes old checkpoints wrong
        {"model": loaded.fingerprint, "data": splits.fingerprint, "finetune": _section_key(spec), "max_seq_length": loaded.spec.max_seq_length, "version": __version__}
    )
    lr = spec.learning_rate or DEFAULT_FLOAT_LR
    trainer = Trainer(
        loaded.model, loaded.tokenizer, loaded.input_names, loaded.spec.max_seq_length, train_set, val_set, spec,
        kind="finetune", key=key, learning_rate=lr, progress=progress,
    )
    result = trainer.run()
    loaded.fingerprint = hash_json({"base": loaded.fingerprint, "finetune": key})
    _say_result(result, spec.metric, say)
    info = {**result.summary(), "learning_rate": lr, "train_samples": len(train_set), "validation_samples": len(val_set)}
    if plots_dir is not None and result.history:
        plot_training_curve(result, plots_dir / "training_finetune.png", spec.metric)
        info["curve"] = "plots/training_finetune.png"
    return info


def _say_result(result: TrainResult, metric: str, say: Callable[[str], None]) -> None:
    where = "from cache" if result.cache_hit else (f"resumed at step {result.resumed_from_step}" if result.resumed_from_step else "trained")
    best = f", best validation {metric} {result.best_validation:.4f} at step {result.best_step}" if result.best_validation is not None else ""
    say(f"  {result.kind}: {where}, {result.steps}/{result.total_steps} steps{best} ({result.checkpoint})")


def validation_accuracy(model: nn.Module, loaded: LoadedModel, val_set: TextSet, metric: str = "accuracy") -> float:
    preds = []
    model.eval()
    with torch.no_grad():
        for feed in batches(loaded.tokenizer, val_set.texts, 64, loaded.spec.max_seq_length, loaded.input_names):
            preds.append(model(**to_torch(feed)).argmax(-1).numpy())
    return classification_metrics(np.concatenate(preds), val_set.labels, None)[metric]


def choose_init_method(
    recipe: Recipe, loaded: LoadedModel, calibrators: dict[str, HistogramCalibrator], val_set: TextSet, say: Callable[[str], None]
) -> tuple[CalibMethod, dict[str, float]]:
    """The configured method, or (auto) the recipe's calibration method with the best validation metric."""
    spec = recipe.qat
    assert spec is not None
    cal = recipe.quantization.calibration
    if spec.init_method != "auto":
        return spec.init_method, {}
    methods = list(cal.methods)
    if not len(val_set):
        method: CalibMethod = "mse" if "mse" in methods else methods[0]
        say(f"  qat: no validation split; scales initialised with {method}")
        return method, {}
    scores: dict[str, float] = {}
    for m in methods:
        set_scales(loaded.model, calibrators, m, percentile=cal.percentile)
        scores[m] = validation_accuracy(loaded.model, loaded, val_set, spec.metric)
    best = max(methods, key=lambda m: scores[m])
    say("  qat: PTQ validation " + ", ".join(f"{m} {s:.4f}" for m, s in scores.items()) + f" -> init {best}")
    return best, scores


def _iter_enabled(model: nn.Module) -> Iterator[TensorQuantizer]:
    return (q for q in quantizers(model).values() if q.enabled)


def qat_model(
    recipe: Recipe,
    loaded: LoadedModel,
    splits: Splits,
    calibrators: dict[str, HistogramCalibrator],
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
    plots_dir: Path | None = None,
) -> tuple[EncoderWithHead, dict[str, Any]]:
    """Fine-tune a copy of the prepared (quantizer-carrying) model with fake quantization on.

    The copy is taken with `loaded.model` in the int8 scheme's state (quantize/schemes.py SchemeState, the
    way the PTQ stage and the search enter a scheme). Returns the QAT model (a copy; `loaded.model` is left
    as it was, apart from the scales the choice of the initial method set) with its scales frozen for export.
    """
    spec = recipe.qat
    assert isinstance(spec, QatSpec)
    cal = recipe.quantization.calibration
    train_set, val_set = train_validation(splits, recipe.data.validation_samples)
    with SchemeState(scheme_for("int8", None, recipe.quantization), calibrators).applied(loaded.model) as int8:
        method, ptq_scores = choose_init_method(recipe, loaded, int8.calibrators, val_set, say)
        student = copy.deepcopy(loaded.model)
        teacher = None
        if spec.distillation is not None and (spec.distillation.weight > 0 or spec.distillation.hidden_mse_weight > 0):
            teacher = strip_quantization(copy.deepcopy(loaded.model)).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
    amax = set_scales(student, int8.calibrators, method, percentile=cal.percentile)
    learned = make_amax_learnable(student) if spec.learn_amax else []
    float_lr = (recipe.finetune.learning_rate if recipe.finetune and recipe.finetune.learning_rate else DEFAULT_FLOAT_LR)
    lr = spec.learning_rate or spec.lr_fraction * float_lr
    key = hash_json(
        {
            "model": loaded.fingerprint,
            "data": splits.fingerprint,
            "qat": _section_key(spec),
            "init_method": method,
            "amax": amax,
            "enabled": sorted(n for n, q in quantizers(student).items() if q.enabled),
            "per_channel_weights": recipe.quantization.per_channel_weights,
            "max_seq_length": loaded.spec.max_seq_length,
        }
    )
    trainer = Trainer(
        student, loaded.tokenizer, loaded.input_names, loaded.spec.max_seq_length, train_set, val_set, spec,
        kind="qat", key=key, learning_rate=lr, teacher=teacher, distillation=spec.distillation,
        before_step=refresh_weight_scales, progress=progress,
    )
    result = trainer.run()
    learned_amax = freeze_learned_amax(student)
    refresh_weight_scales(student)
    still_on = sum(1 for _ in _iter_enabled(student))
    _say_result(result, spec.metric, say)
    info = {
        **result.summary(),
        "init_method": method,
        "ptq_validation": ptq_scores,
        "learning_rate": lr,
        "learn_amax": spec.learn_amax,
        "learned_quantizers": len(learned),
        "median_learned_amax": float(np.median(list(learned_amax.values()))) if learned_amax else None,
        "distillation": spec.distillation.model_dump() if spec.distillation else None,
        "enabled_quantizers": still_on,
        "train_samples": len(train_set),
        "validation_samples": len(val_set),
    }
    if plots_dir is not None and result.history:
        plot_training_curve(result, plots_dir / "training_qat.png", spec.metric)
        info["curve"] = "plots/training_qat.png"
    return student, info
