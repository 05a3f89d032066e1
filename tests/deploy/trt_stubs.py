"""Make the `tensorrt-stubs` package usable by mypy.

The wheel installs `tensorrt/__init__.pyi` and `tensorrt_bindings/*.pyi` without a `py.typed` marker
(so mypy silently treats `tensorrt` as untyped), and its generated stubs have two kinds of syntax
errors (parameters named `in`, a parameter without default after defaulted ones). `prepare_stubs`
copies them into a folder for MYPYPATH with those lines repaired.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
from pathlib import Path

_PARAM_IN = re.compile(r"([(,] *)in: ")


def stub_sources() -> list[Path] | None:
    """Folders of the installed stubs, or None when tensorrt-stubs is not installed."""
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or not spec.origin:
        return None
    site = Path(spec.origin).parent.parent
    folders = [site / "tensorrt", site / "tensorrt_bindings"]
    if not all((f / "__init__.pyi").is_file() for f in folders):
        return None
    return folders


def _fix_defaults(line: str) -> str:
    """`def f(a, b: int = None, c: int)` -> `def f(a, b: int = None, c: int = ...)`."""
    head, sep, rest = line.partition("(")
    params, close, tail = rest.rpartition(")")
    parts = params.split(", ")
    seen_default = False
    for i, part in enumerate(parts):
        if "=" in part:
            seen_default = True
        elif seen_default and not part.lstrip().startswith(("*", "/")) and part.strip():
            parts[i] = f"{part} = ..."
    return head + sep + ", ".join(parts) + close + tail


def sanitize(text: str) -> str:
    text = _PARAM_IN.sub(r"\1in_: ", text)
    lines = text.splitlines()
    for _ in range(200):
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError as exc:
            n = (exc.lineno or 0) - 1
            if not (0 <= n < len(lines)) or "default" not in str(exc.msg):
                raise
            fixed = _fix_defaults(lines[n])
            if fixed == lines[n]:
                raise
            lines[n] = fixed
    return "\n".join(lines) + "\n"


def prepare_stubs(dest: Path) -> Path:
    sources = stub_sources()
    if sources is None:
        raise FileNotFoundError("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    for folder in sources:
        target = dest / folder.name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for pyi in folder.glob("*.pyi"):
            (target / pyi.name).write_text(sanitize(pyi.read_text(encoding="utf-8")), encoding="utf-8")
    return dest
