"""The recipe's `extensions`: Python files (or importable modules) loaded before the rest of the recipe is
validated, so that the calibration methods, number formats, engines and model families they declare are
names the recipe may use (docs/extending.md).

An extension is one file that declares both sides of what it adds: the facts the recipe validates (in the
catalog's registries) and the code that implements them (in the implementing package's registry). Loading
it is the only way a recipe makes this module import code beyond the catalog, and it is the user's code: a
recipe without `extensions` still validates without importing torch or ONNX Runtime.

A file is imported once per process, under a module name derived from its resolved path, so a sweep that
validates many runs of one recipe (or `quantize deploy` reading a run's resolved recipe) does not declare
its names twice. A run's identity includes each extension's source bytes (`extension_digests`): editing
the file starts a new run instead of silently reusing results built by the old code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from quant_workbench.core.errors import RecipeError

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HINT = "list Python files ending in .py (relative to the recipe's folder, or absolute) or importable module names, e.g. extensions: [my_methods.py]"


def is_file_reference(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def resolve_extensions(refs: Sequence[object], base_dir: Path) -> list[str]:
    """Check the `extensions` entries and make file paths absolute (relative ones are the recipe folder's),
    so that the resolved recipe a run stores loads them from anywhere."""
    out: list[str] = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, str) or not ref.strip():
            raise RecipeError(f"extensions[{i}] is {ref!r}, not a file name or module name.", _HINT)
        if is_file_reference(ref):
            path = Path(ref).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if path.suffix != ".py" or not path.is_file():
                raise RecipeError(
                    f"extensions[{i}] '{ref}' is not a Python file (looked for {path}).",
                    "give the path of an existing .py file relative to the recipe's folder, or an importable module name",
                )
            out.append(str(path.resolve()))
        elif _MODULE_NAME.match(ref):
            out.append(ref)
        else:
            raise RecipeError(f"extensions[{i}] '{ref}' is neither a .py file nor a module name.", _HINT)
    return out


def load_extensions(refs: Sequence[str]) -> list[ModuleType]:
    """Import each extension (once per process); an extension that fails to import is the user's mistake."""
    return [_load(i, ref) for i, ref in enumerate(refs)]


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"quant_workbench_extension_{stem}_{digest}"


def _load(i: int, ref: str) -> ModuleType:
    try:
        if not is_file_reference(ref):
            return importlib.import_module(ref)
        path = Path(ref)
        name = _module_name(path)
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # a fixed file is imported again on the next try
            raise
        return module
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(
            f"extensions[{i}] '{ref}' failed to load: {type(exc).__name__}: {exc}.",
            "fix the extension (run it with python to see the traceback), or remove it from extensions",
        ) from exc


def extension_digests(refs: Sequence[str]) -> list[str]:
    """sha256 of each extension's source: what a run's identity records instead of where the file lies."""
    out: list[str] = []
    for ref in refs:
        if is_file_reference(ref):
            source = Path(ref).read_bytes()
        else:
            spec = importlib.util.find_spec(ref)
            origin = spec.origin if spec is not None else None
            source = Path(origin).read_bytes() if origin and Path(origin).is_file() else ref.encode()
        out.append(hashlib.sha256(source).hexdigest())
    return out
