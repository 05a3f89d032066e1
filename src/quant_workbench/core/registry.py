"""A named registry per extension point, and the recipe type whose allowed values are a registry's names.

Neutral ground: imports nothing of the package at import time. A registry is filled by the modules that
implement its entries (each entry declared once, where it is implemented); `load` names those modules,
and they are imported the first time the registry is read, so the recipe schema (which reads the names
at validation time) never imports the implementations while they are importing the recipe.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, overload

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

T = TypeVar("T")
F = TypeVar("F")


class UnknownName(KeyError, ValueError):
    """A name no entry of the registry was declared under; the message lists the declared ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries of one extension point by name, in declaration order (the order defaults and messages use).

    `modules`: modules (or packages, every submodule of which is imported) that declare the entries.
    Names are ordered by declaring module (as listed; a package's modules by name), then by declaration,
    so the order does not depend on which module some caller happened to import first.
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self._modules = tuple(modules)
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # name -> declaring module
        self._loaded = not self._modules
        self._loading = False

    def _load(self) -> None:
        if self._loaded or self._loading:  # a declaring module that reads the registry while importing sees what is declared so far
            return
        self._loading = True
        try:
            for name in self._modules:
                module = importlib.import_module(name)
                for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                    importlib.import_module(f"{name}.{info.name}")
            self._loaded = True
        finally:
            self._loading = False

    @overload
    def register(self, name: str) -> Callable[[F], F]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: Any = None) -> Any:
        """`register(name, entry)`, or `@register(name)` on the entry (a function or class)."""
        origin = str(sys._getframe(1).f_globals.get("__name__", ""))
        if entry is not None:
            self._add(name, entry, origin)
            return entry

        def decorate(obj: F) -> F:
            self._add(name, obj, origin)  # type: ignore[arg-type]
            return obj

        return decorate

    def _add(self, name: str, entry: T, origin: str) -> None:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry
        self._origin[name] = origin
        self._entries = dict(sorted(self._entries.items(), key=lambda item: self._rank(self._origin[item[0]])))

    def _rank(self, origin: str) -> tuple[int, str]:
        for i, module in enumerate(self._modules):
            if origin == module:
                return i, ""
            if origin.startswith(module + "."):
                return i, origin
        return len(self._modules), ""

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._origin.pop(name, None)

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """Declare an entry for the duration of a block (tests, experiments)."""
        self._load()
        self.register(name, entry)
        try:
            yield entry
        finally:
            self.unregister(name)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}") from None

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())


def choices_text(names: Sequence[str]) -> str:
    """Names worded the way pydantic words a Literal's choices ('a', 'b' or 'c'), so recipe messages read the same."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class NamesView(Sequence[str]):
    """The registry's names, read when used: a module-level constant that follows later declarations."""

    def __init__(self, registry: Registry[Any]) -> None:
        self._registry = registry

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._registry.names()[index]

    def __len__(self) -> int:
        return len(self._registry.names())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


class RegistryName:
    """`Annotated[str, RegistryName(REG)]`: a recipe value that must name an entry of REG.

    Checked at validation time against the registry as it is then, so an entry declared after the
    recipe module was imported is accepted. A bad value fails as a pydantic Literal does (error type
    `literal_error`, the allowed names in `ctx.expected`), which the recipe's error messages rely on,
    and the JSON schema lists the names as an `enum`.
    """

    def __init__(self, registry: Registry[Any], extra: Sequence[str] = ()) -> None:
        self.registry = registry
        self.extra = tuple(extra)  # values the field accepts besides the names (qat.init_method's 'auto')

    def allowed(self) -> tuple[str, ...]:
        return (*self.extra, *self.registry.names())

    def _check(self, value: Any) -> str:
        allowed = self.allowed()
        if isinstance(value, str) and value in allowed:
            return value
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": choices_text(allowed)})

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self._check)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"enum": list(self.allowed()), "type": "string"}

    def __repr__(self) -> str:
        return f"RegistryName({self.registry.kind})"
