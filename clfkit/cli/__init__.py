"""The command line: a thin shell over library functions.

Each command parses its arguments and calls one function; its ``@reports_errors`` decorator
(clfkit.cli.support) turns clfkit's own errors into a short message on stderr and a non-zero
exit. ``--debug`` shows the traceback instead. Here: the ``clfkit`` group, ``train`` and ``lr-find``; the other commands
live in a module per subject (``deploy_commands``, ``study_commands``, ``plugin_commands``,
``data_commands``) and are added to the group below.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from clfkit import __version__
from clfkit.cli.support import Context, _fail, reports_errors
from clfkit.errors import ClfkitError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clfkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """clfkit: train, export and run image classifiers from validated recipes."""
    Context.debug = debug


# --------------------------------------------------------------------------- train
@cli.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="RUN_DIR",
    help="Continue the run in RUN_DIR from its last.pt (instead of RECIPE).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PATH=VALUE",
    help="Override a recipe field, e.g. --set train.epochs=3 --set optim.lr=0.01 (repeatable).",
)
@click.option(
    "--out",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder that receives the run folder.",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--track",
    multiple=True,
    type=click.Choice(["tensorboard", "mlflow"]),
    help="Also report to this tracker (added to the recipe's train.track; repeatable).",
)
@click.option(
    "--allow-data-change",
    is_flag=True,
    help="With --resume: continue even though the data changed since the run started (recorded).",
)
@reports_errors
def train(
    recipe: Path | None,
    *,
    resume_dir: Path | None,
    overrides: tuple[str, ...],
    out: Path,
    quiet: bool,
    track: tuple[str, ...],
    allow_data_change: bool,
) -> None:
    """Train RECIPE; writes runs/<name>/ (checkpoints, metrics, summary)."""
    if allow_data_change and resume_dir is None:
        _fail(
            ClfkitError("--allow-data-change goes with --resume RUN_DIR (a new run reads the data as it is)")
        )
    if resume_dir is not None:
        from clfkit.train.trainer import resume_run

        given_out = (
            click.get_current_context().get_parameter_source("out") != click.core.ParameterSource.DEFAULT
        )
        if recipe is not None or overrides or given_out or track:
            _fail(
                ClfkitError(
                    "--resume continues a run exactly as it was recorded in last.pt, in its own "
                    "folder; give no RECIPE, --set, --out or --track with it"
                )
            )
        resume_run(resume_dir, quiet=quiet, allow_data_change=allow_data_change)
        return
    if recipe is None:
        _fail(ClfkitError("give a RECIPE file to train, or --resume RUN_DIR to continue a run"))
    from clfkit.train.build import check_model_size
    from clfkit.recipe import load_recipe
    from clfkit.train.trainer import train as train_fn

    r = load_recipe(recipe, overrides)
    if track:  # the recipe's trackers plus these, so recipe.yaml records every one
        from clfkit.recipe import validate_recipe

        data = r.to_dict()
        data["train"]["track"] = list(dict.fromkeys(list(r.train.track) + list(track)))
        r = validate_recipe(data, "--track")
    check_model_size(r, str(recipe))  # before any data is read
    train_fn(r, out, quiet=quiet)


@cli.command("lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a recipe field (repeatable)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="The plot (.png; a folder: the default name in it) [default: lr_find_<recipe name>.png].",
)
@click.option("--start-lr", default=1e-7, show_default=True, type=float, help="First LR of the ramp.")
@click.option("--end-lr", default=10.0, show_default=True, type=float, help="Last LR of the ramp.")
@click.option(
    "--steps",
    default=100,
    show_default=True,
    type=click.IntRange(min=10, max=10_000),
    help="Optimizer steps at most (10 to 10000).",
)
@reports_errors
def lr_find(
    recipe: Path, overrides: tuple[str, ...], output: Path | None, start_lr: float, end_lr: float, steps: int
) -> None:
    """LR range test: train RECIPE's model while the LR grows exponentially, plot loss against LR
    and suggest optim.lr. Writes only the plot (no run folder)."""
    from clfkit.train.build import check_model_size
    from clfkit.studies.lr_find import lr_find as lr_find_fn
    from clfkit.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    check_model_size(r, str(recipe))
    res = lr_find_fn(r, output, start_lr=start_lr, end_lr=end_lr, steps=steps)
    for line in res.lines():  # the last one names the plot
        click.echo(line)


# the other commands, by subject, each module a group of plain click commands
from clfkit.cli.data_commands import data  # noqa: E402
from clfkit.cli.deploy_commands import eval_cmd, export, predict  # noqa: E402
from clfkit.cli.plugin_commands import plugins, recipe  # noqa: E402
from clfkit.cli.study_commands import compare, report, sweep, tune  # noqa: E402

for _command in (data, export, predict, eval_cmd, plugins, recipe, sweep, tune, compare, report):
    cli.add_command(_command)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """clfkit's own warnings (a skipped metrics line, ...) as one line, without the source
    line that Python's default format adds; other libraries' keep their usual format."""
    if category.__module__.startswith("clfkit"):
        return f"warning: {message}\n"
    return _default_format_warning(message, category, filename, lineno, line)


_default_format_warning = warnings.formatwarning


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.formatwarning = _format_warning
    try:
        cli(prog_name="clfkit")
    except SystemExit as e:
        if e.code in (130, 143):  # stopped by a signal: a second Ctrl-C (or timeout's signal to the
            # group) while Python shuts down would interrupt the atexit clean-up that removes temp
            # folders, with a traceback ("Exception ignored in atexit callback")
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise


if __name__ == "__main__":
    main()
