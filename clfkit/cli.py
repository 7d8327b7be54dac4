"""The command line: a thin shell over library functions.

Each command parses its arguments, calls one function, and turns clfkit's own errors into a
short message on stderr and a non-zero exit. ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import click

from clfkit import __version__
from clfkit.errors import ClfkitError


from clfkit.cli_support import Context, _fail, run_guarded  # noqa: F401 - run_guarded: commands below


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clfkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """clfkit: train, export and run image classifiers from validated recipes."""
    Context.debug = debug


# --------------------------------------------------------------------------- train
@cli.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR",
              help="Continue the run in RUN_DIR from its last.pt (instead of RECIPE).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a recipe field, e.g. --set train.epochs=3 --set optim.lr=0.01 (repeatable).")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder that receives the run folder.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--track", multiple=True, type=click.Choice(["tensorboard", "mlflow"]),
              help="Also report to this tracker (added to the recipe's train.track; repeatable).")
@click.option("--allow-data-change", is_flag=True,
              help="With --resume: continue even though the data changed since the run started (recorded).")
def train(recipe: Path | None, resume_dir: Path | None, overrides: tuple[str, ...], out: Path, quiet: bool,
          track: tuple[str, ...], allow_data_change: bool) -> None:
    """Train RECIPE; writes runs/<name>/ (checkpoints, metrics, summary)."""
    if allow_data_change and resume_dir is None:
        _fail(ClfkitError("--allow-data-change goes with --resume RUN_DIR (a new run reads the data as it is)"))
    if resume_dir is not None:
        from clfkit.trainer import resume_run

        given_out = click.get_current_context().get_parameter_source("out") != click.core.ParameterSource.DEFAULT
        if recipe is not None or overrides or given_out or track:
            _fail(ClfkitError("--resume continues a run exactly as it was recorded in last.pt, in its own "
                              "folder; give no RECIPE, --set, --out or --track with it"))
        run_guarded(resume_run, resume_dir, quiet=quiet, allow_data_change=allow_data_change)
        return
    if recipe is None:
        _fail(ClfkitError("give a RECIPE file to train, or --resume RUN_DIR to continue a run"))
    from clfkit.build import check_model_size
    from clfkit.recipe import load_recipe
    from clfkit.trainer import train as train_fn

    r = run_guarded(load_recipe, recipe, overrides)
    if track:  # the recipe's trackers plus these, so recipe.yaml records every one
        from clfkit.recipe import validate_recipe

        data = r.to_dict()
        data["train"]["track"] = list(dict.fromkeys(list(r.train.track) + list(track)))
        r = run_guarded(validate_recipe, data, "--track")
    run_guarded(check_model_size, r, str(recipe))  # before any data is read
    run_guarded(train_fn, r, out, quiet=quiet)


@cli.command("lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a recipe field (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The plot (.png; a folder: the default name in it) [default: lr_find_<recipe name>.png].")
@click.option("--start-lr", default=1e-7, show_default=True, type=float, help="First LR of the ramp.")
@click.option("--end-lr", default=10.0, show_default=True, type=float, help="Last LR of the ramp.")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=10, max=10_000),
              help="Optimizer steps at most (10 to 10000).")
def lr_find(recipe: Path, overrides: tuple[str, ...], output: Path | None, start_lr: float, end_lr: float,
            steps: int) -> None:
    """LR range test: train RECIPE's model while the LR grows exponentially, plot loss against LR
    and suggest optim.lr. Writes only the plot (no run folder)."""
    from clfkit.build import check_model_size
    from clfkit.lr_find import lr_find as lr_find_fn
    from clfkit.recipe import load_recipe

    r = run_guarded(load_recipe, recipe, overrides)
    run_guarded(check_model_size, r, str(recipe))
    res = run_guarded(lr_find_fn, r, output, start_lr=start_lr, end_lr=end_lr, steps=steps)
    for line in res.lines():  # the last one names the plot
        click.echo(line)


# --------------------------------------------------------------------------- export
# export and eval name a run's checkpoint the same way (clfkit.run.checkpoint.run_checkpoint)
checkpoint_option = click.option(
    "--checkpoint", metavar="NAME",
    help="Checkpoint file name in the run folder, e.g. last.pt [default: best.pt, or last.pt of an unfinished run].")

@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="ONNX file to write [default: exported/<run name>.onnx].")
@click.option("--atol", default=1e-3, show_default=True, help="Max abs logit difference allowed (fp32).")
@checkpoint_option
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="Test-time augmentation inside the graph: flip averages the logits of the image and its "
                   "mirror image (predict needs no change).")
@click.option("--int8", is_flag=True, help="Write a static int8 model, calibrated on training images: the fastest "
                                           "of clfkit's int8 settings whose top-1 agreement with fp32 is at "
                                           "least --min-agreement (refused if none is).")
@click.option("--min-agreement", type=click.FloatRange(0, 100), metavar="PERCENT",
              help="With --int8: the least top-1 agreement with the fp32 model, in %, on held-out images "
                   "[default: 99].")
@click.option("--calibrate", is_flag=True, help="Divide the logits by a temperature fitted on the run's val "
                                                "split, so predict's probabilities are calibrated (top-1 unchanged).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="With --int8 or --calibrate: read the run's folder dataset (the images they fit on) from here "
                   "instead (it moved), as `clfkit eval --data-root` does.")
def export(run_dir: Path, output: Path | None, atol: float, checkpoint: str, tta: str, int8: bool,
           min_agreement: float | None, calibrate: bool, data_root: Path | None) -> None:
    """Export RUN_DIR's best checkpoint to ONNX and prove parity with torch."""
    from clfkit.export import export_run

    if min_agreement is not None and not int8:
        _fail(ClfkitError("--min-agreement is the int8 model's threshold: give it with --int8"))
    if data_root is not None and not (int8 or calibrate):
        _fail(ClfkitError("--data-root is where --int8 and --calibrate read the run's images (a plain export "
                          "reads no data): give it with one of them, or leave it out"))
    min_agreement = 99.0 if min_agreement is None else min_agreement
    res = run_guarded(export_run, run_dir, output, atol=atol, checkpoint=checkpoint, tta=tta, int8=int8,
                      min_agreement=min_agreement, calibrate=calibrate, data_root=data_root)
    if res.note:
        click.echo(f"note: {res.note}")
    if res.exporter != "dynamo":
        click.echo(f"note: exported with {res.exporter}")
    click.echo(f"wrote {res.path}{' (flip TTA)' if res.tta == 'flip' else ''}: parity on {res.n_images} "
               f"validation images: max abs diff {res.max_abs_diff:.2e}, top-1 agreement {res.agreement:.2%}")
    if res.calibration:
        from clfkit.export.calibrate import describe

        click.echo(describe(res.calibration))
    if res.int8:
        q = res.int8
        click.echo(f"int8: top-1 agreement with fp32 {q['agreement']:.2f}% on {q['images']} {q['images_from']} "
                   f"images (threshold {q['min_agreement']:g}%); file {q['size_ratio']:.1%} of fp32 "
                   f"({q['bytes']:,} vs {q['fp32_bytes']:,} bytes); CPU speed {q['speed_ratio']:.2f}x fp32 "
                   f"(batch {q['speed_batch']}); {q['config']}")
        from clfkit.export.quantize import cpu_note

        if cpu_note(q):
            click.echo(cpu_note(q))
    _log_export_to_mlflow(run_dir, res.path)


def _log_export_to_mlflow(run_dir: Path, onnx: Path) -> None:
    """A run trained with train.track: [mlflow] gets its export as an artifact of that MLflow
    run; when that fails the export still stands: one warning line, exit 0."""
    from clfkit.tracking import EXPORT_ARTIFACTS, log_export

    run_id, problem = log_export(run_dir, [onnx])
    if run_id:
        click.echo(f"logged {onnx.name} to MLflow run {run_id} ({EXPORT_ARTIFACTS}/)")
    if problem:
        click.echo(f"warning: {problem}", err=True)


# --------------------------------------------------------------------------- predict
@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("image_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", default="test.txt", show_default=True, type=click.Path(path_type=Path),
              help="File to write; never the model, an input image, a path inside IMAGE_DIR, a file of a run "
                   "folder or an existing file of another kind (links are followed to their target).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", default="name", show_default=True, type=click.Choice(["name", "index", "csv"]),
              help="Lines '<path> <class name>', '<path> <class index>', or a CSV with "
                   "path,class,index,confidence. The class is the last space-separated field (--topk: tabs); in the "
                   "path, a backslash, newline, tab or byte that is not UTF-8 is written \\\\, \\n, \\t, "
                   "\\xNN (README: Troubleshooting).")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime threads [default: all cores].")
@click.option("--workers", type=click.IntRange(min=1), help="Image decoding threads [default: all cores, at least 2].")
@click.option("--topk", default=1, show_default=True, type=click.IntRange(min=1),
              help="The K likeliest classes per image, likeliest first: '<path>\\t<class 1>\\t<class 2>...' "
                   "(tab-separated, as a path may hold spaces; csv: path,class_1,prob_1,...).")
def predict(model: Path, image_dir: Path, output: Path, batch_size: int, fmt: str, threads: int | None,
            workers: int | None, topk: int) -> None:
    """Classify every image under IMAGE_DIR with an exported MODEL.onnx; write test.txt (into a
    temp file, renamed when every image is done; a device or pipe such as /dev/stdout is written
    straight into). A progress bar shows on a terminal."""
    from clfkit.predict import predict_folder

    res = run_guarded(predict_folder, model, image_dir, output, batch_size=batch_size, fmt=fmt, threads=threads,
                      workers=workers, progress=sys.stderr.isatty(), topk=topk)
    for path, why in res.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    # -o /dev/stdout: the summary must not become the last line of the predictions
    click.echo(f"wrote {res.written} predictions to {res.out}; skipped {len(res.skipped)} file(s)",
               err=_is_stdout(res.out))


def _is_stdout(path: Path) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # no real stdout (tests)
        return False


# --------------------------------------------------------------------------- plugins
@cli.group(invoke_without_command=True)
@click.option("--kind", help="Only this kind (model, norm, ...).")
@click.pass_context
def plugins(ctx: click.Context, kind: str | None) -> None:
    """List every registered component by kind, with the package that provides it."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from clfkit.registry import KINDS, REGISTRY, check_kind, plugins_disabled

    if kind:
        run_guarded(check_kind, kind)
    console = Console(width=max(100, Console().width))
    table = Table(show_edge=False, pad_edge=False)
    for col in ("kind", "name", "distribution", "version", "description"):
        table.add_column(col, overflow="fold")
    for k in ([kind] if kind else KINDS):
        for i, e in enumerate(REGISTRY.entries(k)):
            table.add_row(k if i == 0 else "", e.name, e.provider, e.version, e.doc,
                          end_section=False)
        if table.row_count:
            table.rows[-1].end_section = True
    console.print(table)
    console.print("albumentations transforms are available too, by class name (e.g. ColorJitter).",
                  highlight=False)
    if REGISTRY.plugins:
        console.print("plugins loaded: " + ", ".join(f"{d} {v}" for d, v in REGISTRY.plugins),
                      highlight=False)
    for err in REGISTRY.plugin_errors:
        console.print(f"[red]broken plugin[/red] {escape(err.dist)}: {escape(str(err))}", highlight=False)
    if plugins_disabled():
        console.print("CLFKIT_PLUGINS=none: plugins were not loaded (built-ins only)", highlight=False)


@plugins.command("show")
@click.argument("name")
@click.option("--kind", help="Disambiguate when several kinds use NAME.")
def plugins_show(name: str, kind: str | None) -> None:
    """Print a component's arguments with types and defaults."""
    import inspect

    from clfkit.registry import KINDS, REGISTRY
    from clfkit.suggest import did_you_mean

    if kind:  # one kind: its own unknown-name message, with the nearest names
        found = [run_guarded(REGISTRY.get, kind, name)]
    else:
        found = []
        for k in KINDS:
            with contextlib.suppress(ClfkitError):
                found.append(REGISTRY.get(k, name))
    if not found:
        hint = did_you_mean(name, sorted({e.name for e in REGISTRY.entries()}))
        _fail(ClfkitError(f"no component named {name!r}{hint} `clfkit plugins` lists them all"))
    for e in found:
        click.echo(f"{e.kind} {e.name}  ({e.provider} {e.version})".rstrip())
        doc = inspect.getdoc(e.obj) or ""
        if doc:
            click.echo("  " + doc.replace("\n", "\n  "))
        args = e.describe_args()
        click.echo("  arguments:" if args else "  arguments: none")
        for arg, tname, default in args:
            click.echo(f"    {arg}: {tname} = {default}")


@plugins.command("new")
@click.argument("name")
@click.option("--dir", "dest", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder in which the package folder clfkit-NAME/ is written.")
def plugins_new(name: str, dest: Path) -> None:
    """Write a plugin package skeleton (one component of each kind, a test) for NAME."""
    from clfkit.scaffold import new_plugin

    path = run_guarded(new_plugin, name, dest)
    click.echo(f"wrote {path}\nnext: pip install -e {path} && pytest {path} && clfkit plugins --kind model")


# --------------------------------------------------------------------------- recipe
@cli.group()
def recipe() -> None:
    """Work with recipe files."""


@recipe.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field (repeatable).")
def recipe_check(path: Path, overrides: tuple[str, ...]) -> None:
    """Validate a recipe; print it resolved, with parameter count and MACs."""
    from clfkit.build import check_model_size
    from clfkit.model_stats import model_stats
    from clfkit.recipe import load_recipe

    r = run_guarded(load_recipe, path, overrides)
    run_guarded(check_model_size, r, str(path))
    click.echo(r.to_yaml().rstrip())
    stats = run_guarded(model_stats, r)
    click.echo(f"# model: {stats['params']:,} parameters, {stats['macs']:,} MACs per image at "
               f"{stats['in_chans']}x{stats['image_size'][0]}x{stats['image_size'][1]}, {stats['num_classes']} classes"
               + (" (assumed: the data was not found here, so the class count is unknown)"
                  if stats.get("classes_assumed") else ""))
    click.echo("# recipe OK")


# --------------------------------------------------------------------------- studies
@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", multiple=True, metavar="PATH=V1,V2,...",
              help="A sweep axis, e.g. --grid optim.lr=1e-3,5e-4 (repeatable; runs the Cartesian product, "
                   "added to the recipe's sweep: block).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field in every run.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs at once, each in its own process (the CPU cores are split between them).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Sweep folder [default: sweeps/<recipe name>].")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Runs drawn in compare.png.")
@click.option("--seeds", type=click.IntRange(min=1), metavar="N",
              help="Run every variant under N seeds (the recipe's seed and the next N-1) and compare variants as "
                   "mean +- sd with a Welch t-test [default: the sweep block's seeds:, else 1].")
@click.option("--quiet", is_flag=True, help="No per-epoch output.")
def sweep(recipe: Path, grid: tuple[str, ...], overrides: tuple[str, ...], jobs: int, out: Path | None,
          top: int, seeds: int | None, quiet: bool) -> None:
    """Train every combination of --grid values (or the recipe's sweep: block) and rank the runs.

    Finished runs are skipped when the sweep is run again; unfinished ones resume."""
    from clfkit.sweep import run_sweep

    res = run_guarded(run_sweep, recipe, grid, overrides, out, jobs=jobs, quiet=quiet, log=click.echo, top=top,
                      seeds=seeds)
    click.echo((res.out / "sweep.md").read_text(encoding="utf-8").rstrip())
    if res.seeds > 1:
        click.echo("\n" + (res.out / "seeds.md").read_text(encoding="utf-8").rstrip())
    click.echo(f"wrote {', '.join(str(p) for p in res.written)}")
    if res.removed:
        click.echo(f"removed {', '.join(p.name for p in res.removed)} from {res.out}: written by an earlier run of this "
                   f"sweep with other settings (--seeds, finished runs), not true of this one")
    failed = [t for t in res.trials if t.status == "failed"]
    if failed:
        click.echo(f"error: {len(failed)} run(s) failed: {', '.join(t.name for t in failed)}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trials", default=None, type=click.IntRange(min=1),
              help="Trials in the study (finished or pruned); a re-run continues up to this many "
                   "[default: 20; with --sampler grid, the whole grid].")
@click.option("--space", "spaces", multiple=True, metavar="PATH=KIND(ARGS)",
              help="A searched field: uniform(lo,hi), loguniform(lo,hi), int(lo,hi), logint(lo,hi) or "
                   "choice(v1,v2,...), e.g. --space 'optim.lr=loguniform(1e-4,1e-1)' (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field in every trial.")
@click.option("--pruner", default="quartile", show_default=True,
              type=click.Choice(["quartile", "median", "halving", "none"]),
              help="Stop a trial whose best val accuracy so far is in the bottom quarter of the others' at "
                   "that epoch, below their median, or outside the top third (successive halving).")
@click.option("--prune-from", type=click.IntRange(min=1), metavar="EPOCH",
              help="First epoch a trial may be pruned at [default: a third of the epochs].")
@click.option("--sampler", default="tpe", show_default=True, type=click.Choice(["tpe", "grid", "random"]),
              help="How trials draw values: TPE, every combination of choice() values once (a grid "
                   "with pruning), or uniformly at random.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the sampler (0 to 2**32-1).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Trials at once, each in its own process (the CPU cores are split between them).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Tune folder [default: tunes/<recipe name>].")
@click.option("--quiet", is_flag=True, help="No per-epoch output.")
def tune(recipe: Path, trials: int | None, spaces: tuple[str, ...], overrides: tuple[str, ...], pruner: str,
         prune_from: int | None, sampler: str, seed: int, jobs: int, out: Path | None, quiet: bool) -> None:
    """Search hyperparameters with Optuna (TPE), pruning trials that fall behind.

    The study lives in OUT/study.db: running the same command again continues it."""
    from clfkit.tune import plan_tune, run_tune

    setup = run_guarded(plan_tune, recipe, spaces, trials, overrides, out, seed, pruner, quiet, sampler, prune_from)
    res = run_guarded(run_tune, setup, jobs, click.echo)
    click.echo((res.out / "trials.md").read_text(encoding="utf-8").rstrip())
    if res.best is not None:
        click.echo(f"best: trial {res.best['trial']}, val acc {res.best['best_val_acc']:.4f}; "
                   f"train it with: clfkit train {res.out / 'best.yaml'}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Draw the best N runs.")
@click.option("--metric", default="val_acc", show_default=True,
              type=click.Choice(["val_acc", "val_loss", "test_acc", "train_acc", "train_loss"]),
              help="Rank runs by this (best val acc, lowest val loss, ...).")
@click.option("-o", "--output", default="compare.png", show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--title", default="", help="Figure title.")
def compare(paths: tuple[Path, ...], top: int, metric: str, output: Path, title: str) -> None:
    """Overlay the loss and accuracy curves of runs (run folders or sweep folders), 2x2."""
    from clfkit.run.plots import compare_runs

    path, runs = run_guarded(compare_runs, list(paths), output, top=top, metric=metric, title=title)
    for r in runs:
        click.echo(r.legend())
    click.echo(f"wrote {path} ({len(runs)} run(s); legend: best train acc, best val acc, test acc of best.pt: "
               f"the best val epoch, or the last epoch of a run without a val split)")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Rebuild RUN_DIR/report.html from the run folder's files (one self-contained page)."""
    from clfkit.report_html import write_run_report
    from clfkit.run.folder import RunFolderError
    from clfkit.run.reader import is_run

    if not is_run(run_dir):
        _fail(RunFolderError(f"{run_dir} is not a run folder (no metrics.jsonl or summary.json)"))
    click.echo(f"wrote {run_guarded(write_run_report, run_dir)}")


@cli.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val"]), help="[default: test if labelled, else val]")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Read the run's folder dataset from here instead (it moved).")
@checkpoint_option
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="Evaluate with test-time augmentation (as `clfkit export --tta`); writes "
                   "eval_<split>_tta-<mode>.json and adds it to report.html; the other report files "
                   "stay as they are.")
def eval_cmd(run_dir: Path, split: str | None, data_root: Path | None, checkpoint: str, tta: str) -> None:
    """Evaluate a run's checkpoint; rewrite per_class.csv, confusion.png, curves.png,
    mistakes.json, eval_<split>.json and report.html."""
    from clfkit.evaluation import eval_run

    res = run_guarded(eval_run, run_dir, split, data_root, checkpoint, tta=tta)
    click.echo(f"{res.split}{' (flip TTA)' if tta == 'flip' else ''}: accuracy {res.acc:.4f}, loss {res.loss:.4f} on {res.images} images")
    width = max(len(r["class"]) for r in res.per_class)
    click.echo(f"  {'class':<{width}}  accuracy  precision  support")
    for r in res.per_class:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        prec = "-" if r["precision"] is None else f"{r['precision']:.4f}"
        click.echo(f"  {r['class']:<{width}}  {acc:>8}  {prec:>9}  {r['support']:>7}")
    click.echo("wrote " + ", ".join(str(f) for f in res.files))
    if res.data:
        click.echo(f"data: {res.data}")
    if res.insight:
        click.echo(res.insight)
    if res.note:
        click.echo(f"note: {res.note}")


from clfkit.cli_data import data  # noqa: E402 - the data group lives in its own module

cli.add_command(data)


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
