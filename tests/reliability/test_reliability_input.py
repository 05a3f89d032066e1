"""Issue 20, findings 5, 8 and 9: every user mistake is one paragraph with exit code 2 and a hint that
points at the real field with a value that works; nothing is silently accepted.

Recipes here point at a missing data file where the check under test must fire before the data stage.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from architectures.tiny_architectures import save_tiny_architecture
from tiny_fixtures import TINY_MAX_POSITIONS, TINY_SEQ, make_rows

from quant_workbench import __version__
from quant_workbench.cli import main
from quant_workbench.config.recipe import DataSpec, ModelSpec, QuantSpec, recipe_from_dict
from quant_workbench.core.errors import DataError, ModelError, SelectionError, WorkbenchError
from quant_workbench.data.splits import load_splits
from quant_workbench.models.loading import load_model, to_torch, tokenize
from quant_workbench.pipeline import preflight
from quant_workbench.quantize.apply import calibrate, prepare
from quant_workbench.quantize.plan import build_plan

from .helpers import one_paragraph_error, run_cli, write_recipe

RecipeFactory = Callable[..., dict[str, Any]]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    return one_paragraph_error(err)


# ---------------------------------------------------------------------------------------------
# finding 5: raw tracebacks for user-side problems


def test_recipe_that_is_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\nmodel: {source: m}\n".encode("latin-1"))
    msg = _error(capsys, str(path))  # was UnicodeDecodeError, exit 1
    assert "not UTF-8" in msg and "line 1" in msg and "save the recipe as UTF-8" in msg


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_or_missing_weights(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tiny_bert_dir: Path, tmp_path: Path, damage: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    weights = model / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # was SafetensorError, exit 1
    else:
        weights.unlink()
    msg = _error(capsys, str(write_recipe(tmp_path, make_recipe(model_dir=model))), "--no-progress")
    assert str(model) in msg and "save_pretrained" in msg
    assert "Hub" not in msg and "network" not in msg  # a local folder: no Hub-access hint
    assert ("damaged or truncated" in msg) == (damage == "truncated")


# ---------------------------------------------------------------------------------------------
# finding 9: silently accepted


def test_duplicate_recipe_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nmodel: {source: m}\ndata: {files: [x.csv]}\nquantization:\n  calibration: {methods: [max]}\n  calibration: {methods: [mse]}\n")
    msg = _error(capsys, str(path))
    assert "'calibration' twice" in msg and "lines 5 and 6" in msg


@pytest.mark.parametrize("value", ["[1, 32", "{a: 1", "x: y: z"])
def test_malformed_set_value_is_a_yaml_error(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tmp_path: Path, value: str) -> None:
    msg = _error(capsys, str(write_recipe(tmp_path, make_recipe())), "--dry-run", "--set", f"benchmark.batch_sizes={value}")
    assert "is not valid YAML" in msg and repr(value) in msg  # used to become the string itself


@pytest.mark.parametrize("wait", ["-5", "nan"])
def test_negative_wait_lock(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tmp_path: Path, wait: str) -> None:
    msg = _error(capsys, str(write_recipe(tmp_path, make_recipe())), "--wait-lock", wait)
    assert "--wait-lock" in msg and "0 (do not wait) or more" in msg


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out


def test_dry_run_runs_the_preflight(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tmp_path: Path) -> None:
    """A dry run used to print a plan for what the real run refuses at once; it still creates nothing."""
    recipe = str(write_recipe(tmp_path, make_recipe()))
    assert "one path segment" in _error(capsys, recipe, "--dry-run", "--run-id", "../x")
    assert "exceeds the model's limit" in _error(capsys, recipe, "--dry-run", "--set", f"benchmark.seq_lengths=[{TINY_MAX_POSITIONS * 2}]", "--set", f"model.max_seq_length={TINY_MAX_POSITIONS * 2}")
    code, out, _ = run_cli(capsys, recipe, "--dry-run")
    assert code == 0 and "# warning: the evaluation split has 60 examples" in out
    assert not (tmp_path / "reports").exists() and not (tmp_path / "calibration").exists()


_TERM_BEFORE_FIRST_ARTIFACT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {src!r})
    import quant_workbench.pipeline.run as run
    real = run.load_splits
    def load_splits(spec):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler or `kill` would, mid-stage
        return real(spec)
    run.load_splits = load_splits
    from quant_workbench.cli import main
    sys.exit(main([{recipe!r}, "--no-progress", "--run-id", "t"]))
    """
)


def test_sigterm_is_handled_like_sigint(make_recipe: RecipeFactory, tmp_path: Path) -> None:
    """It used to exit 143 with no message and leave a folder holding only .lock and the resolved recipe."""
    data = make_recipe()
    recipe = write_recipe(tmp_path, data)
    proc = subprocess.run([sys.executable, "-c", _TERM_BEFORE_FIRST_ARTIFACT.format(src=SRC, recipe=str(recipe))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "terminated (SIGTERM): finished artifacts are kept" in proc.stderr and "Traceback" not in proc.stderr
    assert not (Path(data["output_dir"]) / data["name"] / "t").exists()


# ---------------------------------------------------------------------------------------------
# finding 8: hints that point at the real field and a value that works


def test_header_only_csv_hint(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(files=[str(path)], calibration_samples=4, probe_samples=10, eval_samples=6))
    assert info.value.hint is not None and "no usable row" in info.value.hint
    assert "probe_samples=0" not in info.value.hint  # rejected for the embedding task


def test_few_rows_hint_keeps_the_probe_split_valid(tmp_path: Path) -> None:
    path = tmp_path / "few.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *make_rows(14)])
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(files=[str(path)], calibration_samples=4, probe_samples=10, eval_samples=6))
    hint = info.value.hint or ""
    probe = int(hint.split("data.probe_samples=")[1].split()[0])
    assert probe >= 10  # what the embedding task's recipe validation accepts (was 7)


def test_one_class_data_hint_names_the_label_column(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *((t, "same") for t, _ in make_rows(40))])
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(files=[str(path)], calibration_samples=4, probe_samples=10, eval_samples=10))
    hint = info.value.hint or ""
    assert "data.label_column" in hint and "seed" not in hint  # another seed cannot make a second class


def test_too_large_calibration_batch_hint_names_its_field(make_recipe: RecipeFactory) -> None:
    data = make_recipe()
    data["quantization"]["calibration"]["batch_size"] = 4000
    with pytest.raises(WorkbenchError) as info:
        preflight.check_bounds(recipe_from_dict(data), {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}, available=1 << 30)
    assert info.value.hint is not None and "--set quantization.calibration.batch_size=" in info.value.hint
    assert "benchmark" not in info.value.hint


def test_nan_message_has_one_hint_naming_the_ignore_entry(tiny_bert_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(ModelSpec(source=str(tiny_bert_dir), max_seq_length=TINY_SEQ))
    prepare(loaded.model.hf, build_plan(loaded.model.hf, QuantSpec()))
    dense = loaded.model.hf.get_submodule("encoder.layer.0.intermediate.dense")
    assert isinstance(dense, torch.nn.Linear)
    with torch.no_grad():
        dense.weight[0, 0] = float("nan")
    feed = to_torch(tokenize(loaded.tokenizer, [t for t, _ in make_rows(8)], TINY_SEQ, loaded.input_names))
    with pytest.raises(WorkbenchError) as info:
        calibrate(loaded.model, lambda m: m(**feed))
    assert str(info.value).count("Hint:") == 1
    assert "quantization.ignore" in str(info.value) and "'encoder.layer.0.output.dense'" in str(info.value)


def test_position_limit_hint_shrinks_the_benchmark_lengths_too(tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(source=str(tiny_bert_dir), max_seq_length=TINY_MAX_POSITIONS * 2))
    hint = info.value.hint or ""
    assert f"model.max_seq_length={TINY_MAX_POSITIONS}" in hint and "benchmark.seq_lengths" in hint


def test_selection_hint_does_not_send_a_dry_run_to_itself(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tmp_path: Path) -> None:
    msg = _error(capsys, str(write_recipe(tmp_path, make_recipe())), "--dry-run", "--set", "quantization.targets=[encoder.layer.7]")
    assert "--dry-run" not in msg and "quantizable ops are named like encoder.layer.0.attention.self.query" in msg


def test_albert_shared_layer_named_by_its_module_points_at_its_call_sites(tmp_path: Path) -> None:
    loaded = load_model(ModelSpec(source=str(save_tiny_architecture("albert", tmp_path / "albert")), max_seq_length=TINY_SEQ))
    for field in ("targets", "ignore"):
        with pytest.raises(SelectionError) as info:
            build_plan(loaded.model.hf, QuantSpec(**{field: ["encoder.albert_layer_groups.0.albert_layers.0.attention.query"]}))
        text = str(info.value)  # used to be "quantizes nothing" (targets) or a silent no-op (ignore)
        assert "never run" in text and "encoder.layer.0" in text and "encoder.layer.2" in text and "input_quantizer" in text
