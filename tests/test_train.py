"""Float fine-tuning and QAT (quant_workbench.pipeline.training) on the tiny random BERT classifier of conftest.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from quant_workbench.config.recipe import (
    DataSpec,
    DistillationSpec,
    FinetuneSpec,
    ModelSpec,
    QatSpec,
    QuantSpec,
    recipe_from_dict,
)
from quant_workbench.core.errors import RecipeError
from quant_workbench.data.splits import Splits, load_splits
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.pipeline.training import (
    Trainer,
    TrainingError,
    distillation_loss,
    freeze_learned_amax,
    make_amax_learnable,
    refresh_weight_scales,
    train_validation,
)
from quant_workbench.quantize.apply import activation_quantizers, calibrate, prepare, quantizers, set_scales
from quant_workbench.quantize.plan import build_plan

# conftest.py's TINY_SEQ; not imported: tests/deploy/ has its own conftest module of the same name.
TINY_SEQ = 32


@pytest.fixture
def splits(tiny_csv: Path) -> Splits:
    spec = DataSpec(files=[str(tiny_csv)], calibration_samples=32, probe_samples=208, eval_samples=60, validation_samples=48)
    return load_splits(spec)


def _load(model_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(source=str(model_dir), task="sequence-classification", max_seq_length=TINY_SEQ), num_labels=3)


def _trainer(loaded: LoadedModel, splits: Splits, spec: Any, kind: str = "finetune", key: str = "k" * 64, lr: float = 2e-3, **kw: Any) -> Trainer:
    train, val = train_validation(splits, 48)
    return Trainer(
        loaded.model, loaded.tokenizer, loaded.input_names, TINY_SEQ, train, val, spec,
        kind=kind, key=key, learning_rate=lr, progress=False, device=torch.device("cpu"), **kw,
    )


def _spec(tmp_path: Path, cls: type = FinetuneSpec, **kw: Any) -> Any:
    base: dict[str, Any] = {"max_steps": 12, "batch_size": 16, "eval_every": 4, "checkpoint_dir": str(tmp_path / "ckpt"), "warmup_ratio": 0.1}
    base.update(kw)
    return cls(**base)


def test_validation_split_is_disjoint_from_train_calibration_and_test(splits: Splits) -> None:
    train, val = train_validation(splits, 48)
    assert len(val) == 48 and len(train) == 160
    sets = [set(train.texts), set(val.texts), set(splits.calibration.texts), set(splits.evaluation.texts)]
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert not sets[i] & sets[j]


def test_distillation_loss_matches_hand_computation() -> None:
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])
    y = torch.tensor([0, 2])
    w, temp = 0.3, 2.5

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    sn, tn = s.numpy().astype(np.float64), t.numpy().astype(np.float64)
    ce = -np.mean(np.log(softmax(sn)[np.arange(2), y.numpy()]))
    p_t, p_s = softmax(tn / temp), softmax(sn / temp)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1))
    expected = (1 - w) * ce + w * temp**2 * kl
    got = distillation_loss(s, t, y, w, temp)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(s, None, y, w, temp)) == pytest.approx(ce, rel=1e-5)
    assert float(distillation_loss(s, t, y, 0.0, temp)) == pytest.approx(ce, rel=1e-5)


def _quantized_tiny(loaded: LoadedModel, splits: Splits) -> None:
    plan = build_plan(loaded.model.hf, QuantSpec())
    prepare(loaded.model.hf, plan)

    def loop(model: torch.nn.Module) -> None:
        feed = tokenize(loaded.tokenizer, splits.calibration.texts, TINY_SEQ, loaded.input_names)
        model(**to_torch(feed))

    calibrators = calibrate(loaded.model, loop)
    set_scales(loaded.model, calibrators, "max")


def test_qat_learns_separable_task_and_exports_matching_qdq(tmp_path: Path, tiny_classifier_dir: Path, splits: Splits) -> None:
    """QAT from a random tiny classifier (PTQ max scales, learnable activation ranges, distillation on)."""
    from quant_workbench.config.recipe import EngineSpec
    from quant_workbench.core.comparator import cosine_rows
    from quant_workbench.export.qdq import export_onnx
    from quant_workbench.runtime.onnxruntime import OrtEngine

    loaded = _load(tiny_classifier_dir)
    _quantized_tiny(loaded, splits)
    enabled_before = sorted(n for n, q in quantizers(loaded.model).items() if q.enabled)
    assert enabled_before
    learned = make_amax_learnable(loaded.model)
    amax_before = {n: float(q.get_parameter("learned_scale").detach()) for n, q in activation_quantizers(loaded.model).items() if hasattr(q, "learned_scale")}
    teacher = copy.deepcopy(loaded.model)
    spec = _spec(tmp_path, QatSpec, max_steps=100, eval_every=25, learn_amax=True, distillation={"weight": 0.2, "temperature": 2.0, "hidden_mse_weight": 0.0})
    trainer = _trainer(loaded, splits, spec, kind="qat", lr=1e-2, before_step=refresh_weight_scales, teacher=teacher, distillation=spec.distillation)
    result = trainer.run()

    losses = [h["loss"] for h in result.history if "loss" in h]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert result.best_validation is not None and result.best_validation >= 0.75  # chance is 1/3
    assert learned
    moved = [n for n, q in activation_quantizers(loaded.model).items() if n in amax_before and float(q.get_parameter("learned_scale").detach()) != amax_before[n]]
    assert moved, "LSQ scales received no updates"
    frozen = freeze_learned_amax(loaded.model)
    assert set(frozen) == set(learned)
    refresh_weight_scales(loaded.model)
    # the quantizers stayed on through training
    assert sorted(n for n, q in quantizers(loaded.model).items() if q.enabled) == enabled_before
    assert all(q.is_calibrated for q in quantizers(loaded.model).values() if q.enabled)

    feed = to_torch(tokenize(loaded.tokenizer, splits.evaluation.texts[:16], TINY_SEQ, loaded.input_names))
    path = export_onnx(loaded.model, tmp_path / "qat.qdq.onnx", feed, loaded.input_names, loaded.output_name, 18)
    with torch.no_grad():
        fake = loaded.model(**feed).numpy()
    with OrtEngine(path, EngineSpec(threads=1), "qat") as eng:
        got = eng({k: v.numpy() for k, v in feed.items()})
    assert cosine_rows(got, fake).min() > 0.999
    assert (got.argmax(-1) == fake.argmax(-1)).mean() >= 0.9


def test_resume_after_interrupt_restores_step_optimizer_and_result(tmp_path: Path, tiny_classifier_dir: Path, splits: Splits) -> None:
    spec = _spec(tmp_path)
    saved: dict[str, Any] = {}

    def interrupt(tr: Trainer) -> None:
        if tr.step == 8:  # last.pt was written at step 8 (eval_every 4)
            saved["optimizer"] = copy.deepcopy(tr.optimizer.state_dict())
            saved["model"] = copy.deepcopy(tr.model.state_dict())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(_load(tiny_classifier_dir), splits, spec, on_step=interrupt).run()

    resumed = _trainer(_load(tiny_classifier_dir), splits, spec)
    assert resumed.try_resume()
    assert resumed.step == 8
    state = resumed.optimizer.state_dict()
    assert state["param_groups"] == saved["optimizer"]["param_groups"]
    for k, v in saved["optimizer"]["state"].items():
        for name, tensor in v.items():
            assert torch.equal(state["state"][k][name], tensor), (k, name)
    for k, v in saved["model"].items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert resumed.scheduler.last_epoch == 8

    finished = _trainer(_load(tiny_classifier_dir), splits, spec).run()
    assert finished.resumed_from_step == 8 and finished.steps == 12
    # the same training without interruption ends with the same weights
    straight = _trainer(_load(tiny_classifier_dir), splits, _spec(tmp_path / "straight")).run()
    assert straight.resumed_from_step is None
    assert straight.best_step == finished.best_step and straight.best_validation == finished.best_validation


def test_checkpoint_cache_is_hit_on_second_run(tmp_path: Path, tiny_classifier_dir: Path, splits: Splits) -> None:
    spec = _spec(tmp_path, max_steps=6)
    first_model = _load(tiny_classifier_dir)
    first = _trainer(first_model, splits, spec).run()
    assert not first.cache_hit
    second_model = _load(tiny_classifier_dir)
    second = _trainer(second_model, splits, spec).run()
    assert second.cache_hit and second.steps == first.steps and second.best_step == first.best_step
    for k, v in first_model.model.state_dict().items():
        assert torch.equal(second_model.model.state_dict()[k], v), k
    # another key (e.g. another recipe section) trains again
    third = _trainer(_load(tiny_classifier_dir), splits, spec, key="x" * 64).run()
    assert not third.cache_hit


def test_nan_loss_names_the_step_and_keeps_last_good_checkpoint(tmp_path: Path, tiny_classifier_dir: Path, splits: Splits) -> None:
    spec = _spec(tmp_path)

    def poison(tr: Trainer) -> None:
        if tr.step == 5:
            with torch.no_grad():
                tr.model.get_parameter("hf.classifier.weight").fill_(float("nan"))

    trainer = _trainer(_load(tiny_classifier_dir), splits, spec, on_step=poison)
    with pytest.raises(TrainingError, match=r"at step 6 .*last good checkpoint .*step 4"):
        trainer.run()
    ckpt = torch.load(trainer.last_path, weights_only=False)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not trainer.result_path.exists()


def test_recipe_sections_validate(make_recipe: Callable[..., dict[str, Any]], tiny_classifier_dir: Path) -> None:
    data = make_recipe(model_dir=tiny_classifier_dir, task="sequence-classification")
    data["data"]["validation_samples"] = 20
    data["finetune"] = {"max_steps": 3}
    data["qat"] = {"max_steps": 3, "learn_amax": True, "distillation": {"weight": 0.5}}
    recipe = recipe_from_dict(data)
    assert recipe.qat is not None and isinstance(recipe.qat.distillation, DistillationSpec)
    bad = copy.deepcopy(data)
    bad["qat"]["learning_rat"] = 1e-5
    with pytest.raises(RecipeError, match="learning_rate"):
        recipe_from_dict(bad)
    emb = make_recipe()
    emb["finetune"] = {"max_steps": 3}
    with pytest.raises(RecipeError, match="sequence-classification"):
        recipe_from_dict(emb)
    big = copy.deepcopy(data)
    big["data"]["validation_samples"] = 500
    with pytest.raises(RecipeError, match="validation_samples"):
        recipe_from_dict(big)


def test_pipeline_finetune_ptq_qat_side_by_side_and_cached(
    tmp_path: Path, make_recipe: Callable[..., dict[str, Any]], tiny_classifier_dir: Path
) -> None:
    from quant_workbench.pipeline.run import execute

    data = make_recipe(model_dir=tiny_classifier_dir, task="sequence-classification", methods=["max", "mse"], name="tinyqat")
    data["data"].update(probe_samples=180, validation_samples=40, eval_samples=60)
    ckpt = str(tmp_path / "checkpoints")
    data["finetune"] = {"max_steps": 100, "learning_rate": 1e-2, "batch_size": 16, "eval_every": 10, "checkpoint_dir": ckpt}
    data["qat"] = {
        "max_steps": 10, "batch_size": 16, "eval_every": 5, "checkpoint_dir": ckpt, "learn_amax": False,
        "distillation": {"weight": 0.5, "temperature": 2.0, "hidden_mse_weight": 0.1},
    }
    data["benchmark"]["enabled"] = False
    recipe = recipe_from_dict(data)
    result = execute(recipe, progress=False, say=lambda s: None)
    names = [v.name for v in result.variants if not v.reference]
    assert names == ["float", "int8-max", "int8-mse", "int8-qat"]
    qat = result.variant("int8-qat")
    assert qat is not None and qat.status == "ok", qat.error if qat else None
    assert qat.fidelity["end_to_end"]["passed"] and qat.fidelity["per_layer"]["passed"]
    assert qat.engine.get("integer_matmuls", 1) >= 1
    # the trained weights get their own fused engine graph (exported from the QAT model), checked like PTQ's
    assert qat.fidelity["engine_graph"]["graph"] == "fused-int8" and qat.fidelity["engine_graph"]["passed"], qat.fidelity["engine_graph"]
    flt = result.variant("float")
    assert flt is not None and flt.metrics["accuracy"] >= 0.8
    assert qat.metrics["accuracy"] >= 0.75
    ft, qi = result.training["finetune"], result.training["qat"]
    assert not ft["cache_hit"] and not qi["cache_hit"]
    assert qi["init_method"] in ("max", "mse") and qi["enabled_quantizers"] > 0
    run_dir = Path(recipe.output_dir) / "tinyqat" / result.run_id
    assert (run_dir / "plots" / "training_finetune.png").is_file() and (run_dir / "plots" / "training_qat.png").is_file()
    md = (run_dir / "report.md").read_text()
    assert "## Training: finetune" in md and "plots/training_qat.png" in md
    report = json.loads((run_dir / "report.json").read_text())
    assert report["training"]["qat"]["init_method"] == qi["init_method"]

    again = execute(recipe, progress=False, say=lambda s: None)
    assert again.training["finetune"]["cache_hit"] and again.training["qat"]["cache_hit"]
    assert again.variant("int8-qat").metrics == qat.metrics  # type: ignore[union-attr]
    assert again.variant("float").metrics == flt.metrics  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_gpu_finetune_in_bf16_autocast_then_qat_on_cuda(tmp_path: Path, tiny_classifier_dir: Path, splits: Splits) -> None:
    """On a GPU the float fine-tune runs under bf16 autocast and QAT (fake quant, float32) on CUDA;
    the QAT model comes back to the CPU and exports the same Q/DQ ONNX as on a CPU-only machine."""
    from quant_workbench.config.recipe import EngineSpec
    from quant_workbench.core.comparator import cosine_rows
    from quant_workbench.export.qdq import export_onnx
    from quant_workbench.runtime.onnxruntime import OrtEngine

    loaded = _load(tiny_classifier_dir)
    train, val = train_validation(splits, 48)
    cuda = torch.device("cuda")
    spec = _spec(tmp_path, max_steps=40, mixed_precision=True)
    ft = Trainer(loaded.model, loaded.tokenizer, loaded.input_names, TINY_SEQ, train, val, spec, kind="finetune", key="g" * 64, learning_rate=2e-3, progress=False, device=cuda)
    assert ft.autocast
    result = ft.run()
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses and all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])

    loaded.model.cpu()
    _quantized_tiny(loaded, splits)
    enabled_before = sorted(n for n, q in quantizers(loaded.model).items() if q.enabled)
    qspec = _spec(tmp_path, QatSpec, max_steps=20)
    qat = Trainer(loaded.model, loaded.tokenizer, loaded.input_names, TINY_SEQ, train, val, qspec, kind="qat", key="q" * 64, learning_rate=2e-4, progress=False, device=cuda)
    assert not qat.autocast  # fake quant trains in float32
    assert qat.run().steps == 20
    assert sorted(n for n, q in quantizers(loaded.model).items() if q.enabled) == enabled_before
    assert next(loaded.model.parameters()).device.type == "cpu"  # handed back for export
    model = loaded.model.cpu().eval()
    feed = to_torch(tokenize(loaded.tokenizer, splits.evaluation.texts[:16], TINY_SEQ, loaded.input_names))
    path = tmp_path / "qat.onnx"
    export_onnx(model, path, feed, loaded.input_names, loaded.output_name, 18)
    with torch.no_grad():
        fake = model(**feed).numpy()
    with OrtEngine(path, EngineSpec(threads=1), "qat") as eng:
        got = eng({k: v.numpy() for k, v in feed.items()})
    assert cosine_rows(got, fake).min() > 0.999


def test_qat_trains_in_the_int8_scheme_state_and_leaves_the_model_as_it_was(
    tmp_path: Path, make_recipe: Callable[..., dict[str, Any]], tiny_classifier_dir: Path, splits: Splits
) -> None:
    """qat_model enters the int8 scheme through quantize/schemes.py SchemeState (as PTQ and the search do): the
    student is int8 whatever state the run's model was left in, and that state comes back afterwards."""
    from quant_workbench.pipeline.training import qat_model
    from quant_workbench.quantize.apply import set_format

    data = make_recipe(model_dir=tiny_classifier_dir, task="sequence-classification", name="tinyqat")
    data["data"].update(probe_samples=208, validation_samples=48, eval_samples=60)
    data["qat"] = {"max_steps": 2, "batch_size": 16, "eval_every": 2, "checkpoint_dir": str(tmp_path / "ckpt"), "init_method": "max"}
    recipe = recipe_from_dict(data)
    loaded = _load(tiny_classifier_dir)
    plan = build_plan(loaded.model.hf, QuantSpec())
    prepare(loaded.model.hf, plan)

    def loop(model: torch.nn.Module) -> None:
        model(**to_torch(tokenize(loaded.tokenizer, splits.calibration.texts, TINY_SEQ, loaded.input_names)))

    calibrators = calibrate(loaded.model, loop)
    set_format(loaded.model, "fp8")  # a state some earlier step forgot to leave
    student, info = qat_model(recipe, loaded, splits, calibrators, progress=False, say=lambda _: None)
    assert {q.fmt.kind for q in quantizers(student).values()} == {"int8"}
    assert {q.fmt.kind for q in quantizers(loaded.model).values()} == {"fp8"}
    assert info["init_method"] == "max" and info["enabled_quantizers"] > 0
