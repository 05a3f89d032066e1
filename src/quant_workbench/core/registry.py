"""A named registry (entries by name, in declaration order), and the recipe type whose allowed values are a
registry's names.

Imports nothing of the package, and a registry imports nothing either: its entries are declared by the
module that owns it (config/catalog.py for the facts a recipe validates) or by the modules that import it
to register (runtime/, deploy/, export/, quantize/methods.py), so reading one never loads a module by name.
"""

from __future__ import annotations

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
    """Entries of one extension point by name, in declaration order (the order defaults and messages use)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[F], F]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: Any = None) -> Any:
        """`register(name, entry)`, or `@register(name)` on the entry (a function or class)."""
        if entry is not None:
            self._add(name, entry)
            return entry

        def decorate(obj: F) -> F:
            self._add(name, obj)  # type: ignore[arg-type]
            return obj

        return decorate

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """Declare an entry for the duration of a block (tests, experiments)."""
        self.register(name, entry)
        try:
            yield entry
        finally:
            self.unregister(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}") from None

    def items(self) -> list[tuple[str, T]]:
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
