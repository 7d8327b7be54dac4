"""The CLI's sweep, tune, compare and report: many runs of one recipe, and reading runs back."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clfkit.cli.support import _fail, reports_errors


# --------------------------------------------------------------------------- studies
@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--grid",
    multiple=True,
    metavar="PATH=V1,V2,...",
    help="A sweep axis, e.g. --grid optim.lr=1e-3,5e-4 (repeatable; runs the Cartesian product, "
    "added to the recipe's sweep: block).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field in every run."
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs at once, each in its own process (the CPU cores are split between them).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sweep folder [default: sweeps/<recipe name>].",
)
@click.option(
    "--top", default=10, show_default=True, type=click.IntRange(min=1), help="Runs drawn in compare.png."
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run every variant under N seeds (the recipe's seed and the next N-1) and compare variants as "
    "mean +- sd with a Welch t-test [default: the sweep block's seeds:, else 1].",
)
@click.option("--quiet", is_flag=True, help="No per-epoch output.")
@reports_errors
def sweep(
    recipe: Path,
    *,
    grid: tuple[str, ...],
    overrides: tuple[str, ...],
    jobs: int,
    out: Path | None,
    top: int,
    seeds: int | None,
    quiet: bool,
) -> None:
    """Train every combination of --grid values (or the recipe's sweep: block) and rank the runs.

    Finished runs are skipped when the sweep is run again; unfinished ones resume."""
    from clfkit.studies.sweep import run_sweep

    res = run_sweep(
        recipe,
        grid,
        overrides=overrides,
        out=out,
        jobs=jobs,
        quiet=quiet,
        log=click.echo,
        top=top,
        seeds=seeds,
    )
    click.echo((res.out / "sweep.md").read_text(encoding="utf-8").rstrip())
    if res.seeds > 1:
        click.echo("\n" + (res.out / "seeds.md").read_text(encoding="utf-8").rstrip())
    click.echo(f"wrote {', '.join(str(p) for p in res.written)}")
    if res.removed:
        click.echo(
            f"removed {', '.join(p.name for p in res.removed)} from {res.out}: written by an earlier run of this "
            f"sweep with other settings (--seeds, finished runs), not true of this one"
        )
    failed = [t for t in res.trials if t.status == "failed"]
    if failed:
        click.echo(f"error: {len(failed)} run(s) failed: {', '.join(t.name for t in failed)}", err=True)
        sys.exit(1)


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trials",
    default=None,
    type=click.IntRange(min=1),
    help="Trials in the study (finished or pruned); a re-run continues up to this many "
    "[default: 20; with --sampler grid, the whole grid].",
)
@click.option(
    "--space",
    "spaces",
    multiple=True,
    metavar="PATH=KIND(ARGS)",
    help="A searched field: uniform(lo,hi), loguniform(lo,hi), int(lo,hi), logint(lo,hi) or "
    "choice(v1,v2,...), e.g. --space 'optim.lr=loguniform(1e-4,1e-1)' (repeatable).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field in every trial."
)
@click.option(
    "--pruner",
    default="quartile",
    show_default=True,
    type=click.Choice(["quartile", "median", "halving", "none"]),
    help="Stop a trial whose best val accuracy so far is in the bottom quarter of the others' at "
    "that epoch, below their median, or outside the top third (successive halving).",
)
@click.option(
    "--prune-from",
    type=click.IntRange(min=1),
    metavar="EPOCH",
    help="First epoch a trial may be pruned at [default: a third of the epochs].",
)
@click.option(
    "--sampler",
    default="tpe",
    show_default=True,
    type=click.Choice(["tpe", "grid", "random"]),
    help="How trials draw values: TPE, every combination of choice() values once (a grid "
    "with pruning), or uniformly at random.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**32 - 1),
    help="Seed of the sampler (0 to 2**32-1).",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Trials at once, each in its own process (the CPU cores are split between them).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Tune folder [default: tunes/<recipe name>].",
)
@click.option("--quiet", is_flag=True, help="No per-epoch output.")
@reports_errors
def tune(
    recipe: Path,
    *,
    trials: int | None,
    spaces: tuple[str, ...],
    overrides: tuple[str, ...],
    pruner: str,
    prune_from: int | None,
    sampler: str,
    seed: int,
    jobs: int,
    out: Path | None,
    quiet: bool,
) -> None:
    """Search hyperparameters with Optuna (TPE), pruning trials that fall behind.

    The study lives in OUT/study.db: running the same command again continues it."""
    from clfkit.studies.tune import plan_tune, run_tune

    setup = plan_tune(
        recipe,
        spaces,
        trials=trials,
        overrides=overrides,
        out=out,
        seed=seed,
        pruner=pruner,
        quiet=quiet,
        sampler=sampler,
        prune_from=prune_from,
    )
    res = run_tune(setup, jobs, click.echo)
    click.echo((res.out / "trials.md").read_text(encoding="utf-8").rstrip())
    if res.best is not None:
        click.echo(
            f"best: trial {res.best['trial']}, val acc {res.best['best_val_acc']:.4f}; "
            f"train it with: clfkit train {res.out / 'best.yaml'}"
        )


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--top", default=10, show_default=True, type=click.IntRange(min=1), help="Draw the best N runs."
)
@click.option(
    "--metric",
    default="val_acc",
    show_default=True,
    type=click.Choice(["val_acc", "val_loss", "test_acc", "train_acc", "train_loss"]),
    help="Rank runs by this (best val acc, lowest val loss, ...).",
)
@click.option(
    "-o",
    "--output",
    default="compare.png",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--title", default="", help="Figure title.")
@reports_errors
def compare(paths: tuple[Path, ...], top: int, metric: str, output: Path, title: str) -> None:
    """Overlay the loss and accuracy curves of runs (run folders or sweep folders), 2x2."""
    from clfkit.run.plots import compare_runs

    path, runs = compare_runs(list(paths), output, top=top, metric=metric, title=title)
    for r in runs:
        click.echo(r.legend())
    click.echo(
        f"wrote {path} ({len(runs)} run(s); legend: best train acc, best val acc, test acc of best.pt: "
        f"the best val epoch, or the last epoch of a run without a val split)"
    )


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@reports_errors
def report(run_dir: Path) -> None:
    """Rebuild RUN_DIR/report.html from the run folder's files (one self-contained page)."""
    from clfkit.run.report_page import write_run_report
    from clfkit.run.run_folder import RunFolderError
    from clfkit.run.reader import is_run

    if not is_run(run_dir):
        _fail(RunFolderError(f"{run_dir} is not a run folder (no metrics.jsonl or summary.json)"))
    click.echo(f"wrote {write_run_report(run_dir)}")
