"""What every command of the CLI shares: clfkit errors turned into one line and an exit code."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from clfkit.errors import ClfkitError


class Context:
    debug = False


def _fail(e: BaseException) -> None:
    if Context.debug:
        raise e
    click.echo(f"error: {e}", err=True)
    sys.exit(getattr(e, "exit_code", 1))


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of every command: clfkit's errors become one ``error:`` line on stderr and
    their exit code (``--debug``: the traceback); a stop signal's :class:`Interrupted` prints
    how to resume (exit 128 + signal); Ctrl-C outside a run exits 130. Anything else is a bug
    and keeps its traceback."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return run_guarded(command, *args, **kwargs)

    return guarded


def run_guarded(fn, *args, **kwargs):
    """Call ``fn`` as a command body would (see :func:`reports_errors`, which commands use)."""
    from clfkit.util.signals import Interrupted

    try:
        return fn(*args, **kwargs)
    except Interrupted as e:  # not an error: state saved, message says how to resume
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    except ClfkitError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


# --------------------------------------------------------------------------- export
# export and eval name a run's checkpoint the same way (clfkit.run.checkpoint.run_checkpoint)
checkpoint_option = click.option(
    "--checkpoint",
    metavar="NAME",
    help="Checkpoint file name in the run folder, e.g. last.pt [default: best.pt, or last.pt of an unfinished run].",
)
