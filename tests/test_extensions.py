"""The recipe's `extensions`: files loaded before validation, errors as user mistakes, a run's identity by their source."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from quant_workbench.config.catalog import CALIBRATORS
from quant_workbench.config.extensions import extension_digests
from quant_workbench.config.recipe import load_recipe
from quant_workbench.core.errors import RecipeError
from quant_workbench.pipeline.run import recipe_hash

ROOT = Path(__file__).resolve().parents[1]

# facts only (no implementation): enough for validation, and it imports nothing heavy
EXTENSION = """
from quant_workbench.config.catalog import CALIBRATORS, CalibrationMethod

LOADS = globals().get("LOADS", 0) + 1
CALIBRATORS.register("{name}", CalibrationMethod("{description}"))
"""


@pytest.fixture
def method_name() -> Iterator[str]:
    name = "ext-test-method"
    yield name
    CALIBRATORS.unregister(name)


def _write_recipe(folder: Path, extensions: Any, methods: list[str]) -> Path:
    data: dict[str, Any] = yaml.safe_load((ROOT / "recipes" / "bert_int8.yaml").read_text(encoding="utf-8"))
    data["quantization"]["calibration"]["methods"] = methods
    data["extensions"] = extensions
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_recipe_names_what_its_extension_declares(tmp_path: Path, method_name: str) -> None:
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "mine.py").write_text(EXTENSION.format(name=method_name, description="first"), encoding="utf-8")
    recipe = load_recipe(_write_recipe(tmp_path, ["ext/mine.py"], ["max", method_name]))
    assert recipe.quantization.calibration.methods == ["max", method_name]
    assert recipe.extensions == [str((tmp_path / "ext" / "mine.py").resolve())]  # relative to the recipe's folder
    # loaded once per process: validating again (a sweep's runs, the deploy reading the resolved recipe) re-declares nothing
    again = load_recipe(_write_recipe(tmp_path, ["ext/mine.py"], [method_name]))
    assert again.quantization.calibration.methods == [method_name]
    # the resolved recipe a run stores names the file absolutely, so it loads from any working folder
    resolved = tmp_path / "elsewhere" / "recipe.resolved.yaml"
    resolved.parent.mkdir()
    resolved.write_text(recipe.to_yaml(), encoding="utf-8")
    assert load_recipe(resolved).extensions == recipe.extensions


def test_without_the_extension_the_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="ext-test-method"):
        load_recipe(_write_recipe(tmp_path, [], ["max", "ext-test-method"]))


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        (["missing.py"], r"extensions\[0\] 'missing.py' is not a Python file"),
        ([3], r"extensions\[0\] is 3, not a file name or module name"),
        ("mine.py", "extensions is 'mine.py', not a list"),
        (["no such module!"], "is neither a .py file nor a module name"),
        (["quant_workbench_no_such_module"], r"failed to load: ModuleNotFoundError"),
        (["broken.py"], r"broken.py' failed to load: ZeroDivisionError"),
    ],
)
def test_a_bad_extension_is_a_user_mistake(tmp_path: Path, extensions: Any, message: str) -> None:
    (tmp_path / "broken.py").write_text("1 / 0\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=message):
        load_recipe(_write_recipe(tmp_path, extensions, ["max"]))


def test_a_fixed_extension_loads_on_the_next_try(tmp_path: Path, method_name: str) -> None:
    ext = tmp_path / "mine.py"
    ext.write_text("raise RuntimeError('not yet')\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not yet"):
        load_recipe(_write_recipe(tmp_path, ["mine.py"], ["max"]))
    ext.write_text(EXTENSION.format(name=method_name, description="fixed"), encoding="utf-8")
    assert load_recipe(_write_recipe(tmp_path, ["mine.py"], [method_name])).quantization.calibration.methods == [method_name]


def test_the_run_identity_follows_the_extension_source_not_its_place(tmp_path: Path, method_name: str) -> None:
    plain = load_recipe(ROOT / "recipes" / "bert_int8.yaml")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = EXTENSION.format(name=method_name, description="same")
    (tmp_path / "a" / "mine.py").write_text(source, encoding="utf-8")
    (tmp_path / "b" / "mine.py").write_text(source, encoding="utf-8")
    in_a = load_recipe(_write_recipe(tmp_path / "a", ["mine.py"], ["max"]))
    CALIBRATORS.unregister(method_name)  # b's copy declares it again
    in_b = load_recipe(_write_recipe(tmp_path / "b", ["mine.py"], ["max"]))
    assert recipe_hash(in_a) == recipe_hash(in_b) != recipe_hash(plain)
    (tmp_path / "b" / "mine.py").write_text(source + "# edited\n", encoding="utf-8")
    assert recipe_hash(in_a) != recipe_hash(in_b)
    assert extension_digests(["json"]) != extension_digests(["csv"])  # a module is identified by its source too


def test_a_recipe_without_extensions_keeps_its_run_id_and_resolved_text() -> None:
    recipe = load_recipe(ROOT / "recipes" / "bert_int8.yaml")
    assert "extensions" not in recipe.to_yaml()
    # the default recipe's run id from before `extensions` existed (docs/measurements.md's runs)
    assert recipe_hash(recipe)[:12] == "df18575be071"


def test_the_cli_loads_the_extension_in_a_fresh_interpreter(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(EXTENSION.format(name="ext-cli-method", description="cli"), encoding="utf-8")
    recipe = _write_recipe(tmp_path, ["mine.py"], ["max", "ext-cli-method"])
    code = (
        "import sys; from quant_workbench.config.recipe import load_recipe; "
        "r = load_recipe(sys.argv[1]); print(r.quantization.calibration.methods); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['max', 'ext-cli-method']", "[]"]  # an import-light extension keeps validation light
    bad = subprocess.run([sys.executable, "-m", "quant_workbench.cli", str(_write_recipe(tmp_path, ["nope.py"], ["max"])), "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "extensions[0] 'nope.py' is not a Python file" in bad.stderr
