"""clfkit's own exceptions.

Every user mistake surfaces as a :class:`ClfkitError`; the CLI prints its message and exits
non-zero without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class ClfkitError(Exception):
    """Base class: an error caused by input the user can fix. ``exit_code`` is the CLI status."""

    exit_code = 2


class RegistryError(ClfkitError):
    """Unknown component name, duplicate registration or a broken component contract."""


class PluginError(ClfkitError):
    """A plugin distribution failed to load."""

    def __init__(self, dist: str, cause: BaseException | str, entry_point: str = ""):
        self.dist = dist
        self.cause = cause
        self.entry_point = entry_point
        where = f" (entry point {entry_point!r})" if entry_point else ""
        if isinstance(cause, BaseException):
            cause = f"{type(cause).__name__}: {cause}"
        super().__init__(f"plugin {dist}{where} failed to load: {cause}")


class RecipeError(ClfkitError):
    """A recipe that does not validate. ``problems`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "recipe"):
        self.problems = problems
        self.source = source
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {path or '<root>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class DataError(ClfkitError):
    """Missing, empty or unreadable data."""


class ExportError(ClfkitError):
    """Export failed, or the exported model does not match the trained one."""


class ModelFileError(ClfkitError):
    """A checkpoint or ONNX file that is not what clfkit expects."""


class TrainingError(ClfkitError):
    """Training cannot continue (non-finite loss, unavailable device, ...)."""
