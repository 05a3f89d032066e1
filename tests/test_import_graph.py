"""No import circles among the package's modules nor between its packages (function-level imports count:
they only hide a circle; so do modules loaded by name), and configuration imports no implementation."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import quant_workbench

PACKAGE = Path(quant_workbench.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["quant_workbench", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`: annotations only, never executed, so not an import."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


# by-name imports of modules the user names, not the package: a recipe's `extensions` (config/extensions.py)
USER_NAMED = {("quant_workbench.config.extensions", "ref")}


def _loaded_by_name(node: ast.AST, name: str, package: str, modules: dict[str, Path]) -> list[str]:
    """`importlib.import_module("quant_workbench.x")` imports x; `import_module(f"{__name__}.{info.name}")`
    (a package importing each of its submodules, found by pkgutil) imports every submodule of the package."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)):
        return []
    func = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
    if func != "import_module" or not node.args:
        return []
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and "__name__" in ast.unparse(arg):
        return [m for m in modules if m.rpartition(".")[0] == package and m != name]
    if (name, ast.unparse(arg)) in USER_NAMED:
        return []
    raise AssertionError(f"{name}: import_module({ast.unparse(arg)}) loads a module this test cannot name")


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base]) if base else ".".join(anchor)
                # `from pkg import mod` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            targets += _loaded_by_name(node, name, package, modules)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_import_graph_finds_a_known_edge() -> None:
    graph = import_graph()
    assert "quant_workbench.quantize.architectures" in graph["quant_workbench.quantize.plan"]
    assert "quant_workbench.core.errors" in graph["quant_workbench.quantize.architectures.registry"]
    assert "quant_workbench.core.signatures" in graph["quant_workbench.runtime.tensorrt"]  # a function-level import counts


def test_import_graph_follows_modules_loaded_by_name() -> None:
    graph = import_graph()
    assert "quant_workbench.quantize.architectures.bert" in graph["quant_workbench.quantize.architectures"]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """quant_workbench.<package> -> the packages its modules import (top-level modules count as packages)."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {top(m): set() for m in graph}
    for module, targets in graph.items():
        out[top(module)] |= {top(t) for t in targets if top(t) != top(module)}
    return out


def test_no_import_circles_between_packages() -> None:
    found = [sorted(c) for c in cycles(package_graph(import_graph()))]
    assert not found, f"package circles: {found}"


# docs/ARCHITECTURE.md's order: a package imports only packages before it
LAYERS = ["core", "config", "data", "quantize", "models", "runtime", "measure", "export", "report", "selection", "search", "deploy", "pipeline", "cli"]


def test_packages_import_only_the_layers_before_them() -> None:
    graph = package_graph(import_graph())
    names = {f"quant_workbench.{name}" for name in LAYERS} | {"quant_workbench"}
    assert set(graph) == names, "a package is missing from LAYERS (and from docs/ARCHITECTURE.md)"
    for i, name in enumerate(LAYERS):
        allowed = {f"quant_workbench.{below}" for below in LAYERS[:i]} | {"quant_workbench"}
        assert graph[f"quant_workbench.{name}"] <= allowed, f"{name} imports {sorted(graph[f'quant_workbench.{name}'] - allowed)}"


def test_package_graph_sees_a_circle() -> None:
    graph = {"quant_workbench.a.x": {"quant_workbench.b.y"}, "quant_workbench.b.y": set(), "quant_workbench.b.z": {"quant_workbench.a.x"}}
    assert cycles(package_graph(graph)) == [{"quant_workbench.a", "quant_workbench.b"}]


def test_cycles_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles() -> None:
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import circles: {found}"


def private_imports() -> list[str]:
    """`from .x import _name` and `module._name` on a package module bound by an import: one module using
    another's private name (a third-party library's private names are not this test's business)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package_aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("quant_workbench")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        out.append(f"{name}: from {'.' * node.level}{node.module or ''} import {alias.name}")
                    package_aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                package_aliases |= {(a.asname or a.name) for a in node.names if a.name.startswith("quant_workbench")}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in package_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")
            ):
                out.append(f"{name}: {node.value.id}.{node.attr}")
    return out


def test_no_module_uses_another_modules_private_names() -> None:
    assert not private_imports()


def test_private_import_check_catches_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "quant_workbench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _helper() -> None: ...\n")
    (pkg / "b.py").write_text("from .a import _helper\nfrom . import a as mod\nmod._helper()\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert sorted(private_imports()) == ["quant_workbench.b: from .a import _helper", "quant_workbench.b: mod._helper"]


# ---------------------------------------------------------------------------------------------
# configuration imports no implementation

IMPLEMENTATION = ("torch", "onnxruntime", "openvino", "nncf", "transformers", "onnx")
ROOT = Path(__file__).resolve().parents[1]


def _imported_by(code: str, *args: str) -> tuple[int, list[str]]:
    """Exit code of `code` in a fresh interpreter and which of IMPLEMENTATION it had imported by then."""
    probe = (
        f"import sys, json, atexit\n"
        f"atexit.register(lambda: print(json.dumps([m for m in {IMPLEMENTATION!r} if m in sys.modules])))\n{code}"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_a_recipe_imports_no_implementation() -> None:
    code = "from quant_workbench.config.recipe import load_recipe\nfor path in sys.argv[1:]: load_recipe(path)"
    recipes = sorted(str(p) for p in (ROOT / "recipes").glob("*.yaml"))
    assert recipes
    rc, heavy = _imported_by(code, *recipes)
    assert (rc, heavy) == (0, [])


def test_a_bad_recipe_exits_2_without_importing_an_implementation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes" / "bert_int8.yaml").read_text(encoding="utf-8").replace("quantization:", "quantisation:", 1), encoding="utf-8")
    rc, heavy = _imported_by("from quant_workbench.cli import main\nsys.exit(main(sys.argv[1:]))", str(bad))
    assert (rc, heavy) == (2, [])


def test_the_probe_sees_an_implementation_import() -> None:
    rc, heavy = _imported_by("import onnx")
    assert (rc, heavy) == (0, ["onnx"])
