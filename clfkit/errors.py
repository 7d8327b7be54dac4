"""clfkit's own exceptions and warnings, every one of them: one place to read what can go wrong.

Every user mistake surfaces as a :class:`ClfkitError`; the CLI prints its message and exits
non-zero without a traceback. Anything else is a bug and keeps its traceback. The errors and
warnings of one part of clfkit (a run folder, a sweep, the data check) are defined here too and
imported by the module that raises them, so ``from clfkit.run.run_folder import RunFolderError``
keeps working. (tests/test_architecture.py checks that no other module defines one.)
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


# ---------------------------------------------------------------- the errors and warnings of each part
# raised by clfkit.audit.model_findings (importable from there too)
class MissingDependency(ClfkitError):
    """An optional package a requested check needs is not installed."""


# raised by clfkit.data.audit.quick (importable from there too)
class DataCheckWarning(UserWarning):
    """A finding of the train-time data check."""


# raised by clfkit.data.class_folders (importable from there too)
class NotImagesWarning(UserWarning):
    """Files in a folder dataset that are not read because their extension is not an image's."""


# raised by clfkit.data.image_files (importable from there too)
class DecodeError(DataError):
    """A file that is not a decodable image; the message says why. A DataError, so a caller
    (the Python ``Predictor``, a notebook) gets clfkit's one exception family."""


# raised by clfkit.run.data_record (importable from there too)
class DataChangedError(ClfkitError):
    """A run resumed on data other than the data it started on."""


class DataRecordWarning(UserWarning):
    """Data that cannot be checked (an old run), or an evaluation on changed data."""


# raised by clfkit.run.reader (importable from there too)
class RunFileWarning(UserWarning):
    """A line of a run file that cannot be read (skipped, named with its file and line)."""


# raised by clfkit.run.resume (importable from there too)
class ResumeError(ClfkitError):
    """A run folder that cannot be resumed."""


# raised by clfkit.run.run_folder (importable from there too)
class RunFolderError(ClfkitError):
    """A path that is not a run folder (or a folder of runs)."""


class RunLockedError(ClfkitError):
    """Another process is writing into this run folder."""


class RunLockWarning(UserWarning):
    """The run folder's filesystem does not support locks."""


# raised by clfkit.run.tracking (importable from there too)
class TrackingError(ClfkitError):
    """A tracker that was asked for cannot run (its package is missing)."""


class TrackingWarning(UserWarning):
    """A tracker's store failed during a run: the run goes on (its folder has everything)."""


# raised by clfkit.studies.lr_find (importable from there too)
class LRFindError(ClfkitError):
    """An LR range test that cannot run or whose plot cannot be written."""


# raised by clfkit.studies.sweep.plan (importable from there too)
class SweepError(ClfkitError):
    """A sweep that cannot be planned or whose folders do not match it."""


# raised by clfkit.studies.tune.space (importable from there too)
class TuneError(ClfkitError):
    """A tune that cannot run: a bad --space, a study of another space, optuna missing."""


# raised by clfkit.train.engine.stream_batches (importable from there too)
class SkippedSamples(UserWarning):
    """Training samples skipped in an epoch (no label, a label outside the classes, undecodable)."""


# raised by clfkit.util.atomic (importable from there too)
class WriteError(ClfkitError):
    """An output that cannot be written (permissions, missing folder, full disk)."""


# raised by clfkit.util.safe_names (importable from there too)
class BadNameError(ClfkitError):
    """A name that cannot safely be a folder name."""


# raised by clfkit.util.signals (importable from there too)
class Interrupted(ClfkitError):
    """Training stopped by a signal after saving its state; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)  # the shell's convention: 130 after SIGINT, 143 after SIGTERM
