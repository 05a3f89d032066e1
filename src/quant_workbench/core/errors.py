"""Errors the CLI prints as one paragraph: user mistakes exit with code 2, internal errors (an exporter
bug) with code 1, as the README's exit codes say."""

from __future__ import annotations


class WorkbenchError(Exception):
    """A mistake the user can fix (bad recipe, missing file, impossible request)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} Hint: {self.hint}" if self.hint else self.message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler so a run unwinds (and cleans up) exactly as on Ctrl-C."""


class RecipeError(WorkbenchError):
    """The recipe is invalid: unknown key, wrong type, impossible combination."""


class DataError(WorkbenchError):
    """The dataset cannot be loaded or does not satisfy the recipe."""


class ModelError(WorkbenchError):
    """The model cannot be loaded or does not satisfy the recipe."""


class SelectionError(WorkbenchError):
    """A targets/ignore entry matches nothing."""


class ExportError(WorkbenchError):
    """ONNX export or an export fidelity check failed: an exporter bug, not a user mistake (exit code 1)."""

    exit_code = 1


class OptionalDependencyError(WorkbenchError):
    """An optional extra is needed for the requested feature."""

    def __init__(self, package: str, extra: str, feature: str, extra_hint: str = "") -> None:
        super().__init__(
            f"{feature} needs the optional package '{package}', which is not installed.",
            f"install it with: pip install 'quant-workbench[{extra}]'{extra_hint}",
        )
