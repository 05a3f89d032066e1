"""The `quantize` command in-process: user errors exit 2 with one paragraph and no traceback; --dry-run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quant_workbench.cli import main

RecipeFactory = Callable[..., dict[str, Any]]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_paragraph_error(err: str) -> str:
    """stderr ends with one `error: ...` paragraph (textwrap may break it into lines); no traceback anywhere."""
    assert "Traceback" not in err
    start = err.find("error: ")
    assert start >= 0, err
    assert err.count("error: ") == 1, err
    text = err[start:].strip()
    assert "\n\n" not in text
    return " ".join(text.split())  # unwrapped, for substring checks


def test_missing_recipe_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, str(tmp_path / "nope.yaml"))
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "nope.yaml" in msg and "does not exist" in msg


def test_invalid_recipe(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any) -> None:
    data = make_recipe()
    data["quantization"]["calibration"]["methods"] = ["kl"]
    data["quantisation"] = data.pop("quantization")
    code, _, err = _run(capsys, str(write_recipe(data)))
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "unknown key 'quantisation'" in msg and "did you mean 'quantization'?" in msg


def test_invalid_override(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--set", "quantization.calibration.methods=[kl]")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "quantization.calibration.methods" in msg and "'entropy'" in msg


def test_malformed_set(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--set", "benchmark.iterations")
    assert code == 2
    assert "is not of the form key.path=value" in _assert_one_paragraph_error(err)


def test_missing_model_folder(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, tmp_path: Path) -> None:
    data = make_recipe(model_dir=tmp_path / "no_such_model")
    code, _, err = _run(capsys, str(write_recipe(data)), "--no-progress")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "no_such_model" in msg and "does not exist" in msg


def test_model_folder_without_config(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty_model"
    empty.mkdir()
    code, _, err = _run(capsys, str(write_recipe(make_recipe(model_dir=empty))), "--dry-run")
    assert code == 2
    assert "has no config.json" in _assert_one_paragraph_error(err)


def test_missing_data_file(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, tmp_path: Path) -> None:
    data = make_recipe(csv_path=tmp_path / "missing.csv")
    code, _, err = _run(capsys, str(write_recipe(data)), "--no-progress")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "missing.csv" in msg and "does not exist" in msg


def test_missing_column(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--no-progress", "--set", "data.label_column=labell")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "no column 'labell'" in msg
    assert "'text'" in msg and "'label'" in msg  # lists the available columns
    assert "did you mean --set data.label_column=label?" in msg


def test_target_that_matches_nothing_lists_closest_names(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any
) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--no-progress", "--set", "quantization.targets=[encoder.layer.9]")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "'encoder.layer.9' matches no module" in msg
    assert "closest module or class names:" in msg and "encoder.layer.1" in msg


def test_too_few_rows(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--no-progress", "--set", "data.eval_samples=1000")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "usable rows" in msg and "--set data.eval_samples=" in msg


def test_unwritable_output_dir(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a_regular_file"
    blocker.write_text("not a folder")
    data = make_recipe()
    data["output_dir"] = str(blocker / "reports")
    code, _, err = _run(capsys, str(write_recipe(data)), "--no-progress")
    assert code == 2
    msg = _assert_one_paragraph_error(err)
    assert "cannot write to output folder" in msg and "output_dir" in msg


def test_dry_run_prints_every_quantizer_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, tmp_path: Path
) -> None:
    data = make_recipe()
    code, out, err = _run(capsys, str(write_recipe(data)), "--dry-run", "--set", "quantization.ignore=[encoder.layer.1.output]")
    assert code == 0, err
    assert "# resolved recipe" in out
    assert "ignore:\n  - encoder.layer.1.output" in out or "- encoder.layer.1.output" in out
    lines = out.splitlines()
    for i in (0, 1):
        for lin in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"):
            for role in ("input_quantizer", "weight_quantizer"):
                name = f"encoder.layer.{i}.{lin}.{role}"
                line = next(ln for ln in lines if ln.split()[1:2] == [name])
                if i == 1 and lin == "output.dense":
                    assert line.split()[0] == "float" and "ignored by 'encoder.layer.1.output'" in line
                else:
                    assert line.split()[0] == "INT8" and "targeted by" in line
        for m in ("qk_matmul", "pv_matmul"):
            line = next(ln for ln in lines if f"encoder.layer.{i}.attention.self.{m}.input_quantizer" in ln)
            assert line.split()[0] == "float" and "quantize_attention_matmuls=false" in line
        line = next(ln for ln in lines if f"encoder.layer.{i}.output.residual_add.other_quantizer" in ln)
        assert line.split()[0] == "float" and "quantize_residual_adds=false" in line
    pooler = next(ln for ln in lines if "pooler.dense.weight_quantizer" in ln)
    assert pooler.split()[0] == "float" and "not matched by any target" in pooler
    assert "11 of 21 quantizable ops quantized (22 quantizers enabled)" in out
    assert "# would write:" in out
    assert not Path(data["output_dir"]).exists()
    assert not Path(data["quantization"]["calibration"]["cache_dir"]).exists()


def test_dry_run_with_invalid_selection_exits_2(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any
) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--dry-run", "--set", "quantization.ignore=[encoder]")
    assert code == 2
    assert "quantizes nothing" in _assert_one_paragraph_error(err)


def test_no_progress_keeps_stderr_to_the_error_paragraph(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any
) -> None:
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--no-progress", "--set", "quantization.ignore=[encoder]")
    assert code == 2
    assert err.startswith("error: "), err[:200]


def test_no_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: quantize" in capsys.readouterr().err


def test_console_script_exists_and_help_exits_0() -> None:
    exe = shutil.which("quantize") or str(Path(sys.executable).parent / "quantize")
    assert Path(exe).exists(), "the `quantize` console script is not installed (pip install -e .)"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: quantize" in proc.stdout
    assert "--dry-run" in proc.stdout and "--set" in proc.stdout


# ---------------------------------------------------------------------------------------------
# exit codes as documented: an exporter bug is an internal error (1); an undetermined decision is a warning (0)


def test_an_exporter_bug_exits_1_not_2(capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import quant_workbench.pipeline.run as run_mod
    from quant_workbench.core.errors import ExportError

    def broken(*a: Any, **k: Any) -> Any:
        raise ExportError("exported int8-max.qdq.onnx fails onnx.checker: bad node", "run with --debug and report it")

    monkeypatch.setattr(run_mod, "execute", broken)
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--no-progress")
    assert code == 1
    assert "Traceback" not in err and "internal error: exported int8-max.qdq.onnx fails onnx.checker" in " ".join(err.split())


def test_an_undetermined_selection_exits_0_with_a_warning_line(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, write_recipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quant_workbench.pipeline.run as run_mod
    from quant_workbench.core.results import RunResult, VariantResult

    result = RunResult(
        recipe_name="r", run_id="x", task="embedding", primary_metric="accuracy", created_utc="t", versions={}, hardware={},
        recipe_hash="f", data={}, calibration={}, variants=[VariantResult("float", "float32"), VariantResult("int8-max", "int8")],
        best_variant="int8-max", selection={"outcome": "undetermined", "warning": "undetermined: about 12,000 evaluation examples would decide"},
    )
    monkeypatch.setattr(run_mod, "execute", lambda *a, **k: result)
    code, _, err = _run(capsys, str(write_recipe(make_recipe())), "--no-progress")
    assert code == 0 and "warning: undetermined: about 12,000 evaluation examples would decide" in " ".join(err.split())
