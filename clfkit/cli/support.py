"""What every command of the CLI shares: clfkit errors turned into one line and an exit code."""
from __future__ import annotations

import sys

import click

from clfkit.errors import ClfkitError


class Context:
    debug = False


def _fail(e: BaseException) -> None:
    if Context.debug:
        raise e
    click.echo(f"error: {e}", err=True)
    sys.exit(getattr(e, "exit_code", 1))


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; clfkit errors become a message and an exit code, not a traceback."""
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
    "--checkpoint", metavar="NAME",
    help="Checkpoint file name in the run folder, e.g. last.pt [default: best.pt, or last.pt of an unfinished run].")
