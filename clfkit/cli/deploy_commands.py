"""The CLI's export, predict and eval: a run's model out of the run folder, and measured."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import click

from clfkit.cli.support import _fail, checkpoint_option, reports_errors
from clfkit.errors import ClfkitError


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="ONNX file to write [default: exported/<run name>.onnx].",
)
@click.option("--atol", default=1e-3, show_default=True, help="Max abs logit difference allowed (fp32).")
@checkpoint_option
@click.option(
    "--tta",
    type=click.Choice(["none", "flip"]),
    default="none",
    show_default=True,
    help="Test-time augmentation inside the graph: flip averages the logits of the image and its "
    "mirror image (predict needs no change).",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Write a static int8 model, calibrated on training images: the fastest "
    "of clfkit's int8 settings whose top-1 agreement with fp32 is at "
    "least --min-agreement (refused if none is).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 100),
    metavar="PERCENT",
    help="With --int8: the least top-1 agreement with the fp32 model, in %, on held-out images "
    "[default: 99].",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Divide the logits by a temperature fitted on the run's val "
    "split, so predict's probabilities are calibrated (top-1 unchanged).",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --int8 or --calibrate: read the run's folder dataset (the images they fit on) from here "
    "instead (it moved), as `clfkit eval --data-root` does.",
)
@reports_errors
def export(
    run_dir: Path,
    *,
    output: Path | None,
    atol: float,
    checkpoint: str,
    tta: str,
    int8: bool,
    min_agreement: float | None,
    calibrate: bool,
    data_root: Path | None,
) -> None:
    """Export RUN_DIR's best checkpoint to ONNX and prove parity with torch."""
    from clfkit.deploy.export import export_run

    if min_agreement is not None and not int8:
        _fail(ClfkitError("--min-agreement is the int8 model's threshold: give it with --int8"))
    if data_root is not None and not (int8 or calibrate):
        _fail(
            ClfkitError(
                "--data-root is where --int8 and --calibrate read the run's images (a plain export "
                "reads no data): give it with one of them, or leave it out"
            )
        )
    min_agreement = 99.0 if min_agreement is None else min_agreement
    res = export_run(
        run_dir,
        output,
        atol=atol,
        checkpoint=checkpoint,
        tta=tta,
        int8=int8,
        min_agreement=min_agreement,
        calibrate=calibrate,
        data_root=data_root,
    )
    if res.note:
        click.echo(f"note: {res.note}")
    if res.exporter != "dynamo":
        click.echo(f"note: exported with {res.exporter}")
    click.echo(
        f"wrote {res.path}{' (flip TTA)' if res.tta == 'flip' else ''}: parity on {res.n_images} "
        f"validation images: max abs diff {res.max_abs_diff:.2e}, top-1 agreement {res.agreement:.2%}"
    )
    if res.calibration:
        from clfkit.deploy.export.calibrate import describe

        click.echo(describe(res.calibration))
    if res.int8:
        q = res.int8
        click.echo(
            f"int8: top-1 agreement with fp32 {q['agreement']:.2f}% on {q['images']} {q['images_from']} "
            f"images (threshold {q['min_agreement']:g}%); file {q['size_ratio']:.1%} of fp32 "
            f"({q['bytes']:,} vs {q['fp32_bytes']:,} bytes); CPU speed {q['speed_ratio']:.2f}x fp32 "
            f"(batch {q['speed_batch']}); {q['config']}"
        )
        from clfkit.deploy.export.quantize import cpu_note

        if cpu_note(q):
            click.echo(cpu_note(q))
    _log_export_to_mlflow(run_dir, res.path)


def _log_export_to_mlflow(run_dir: Path, onnx: Path) -> None:
    """A run trained with train.track: [mlflow] gets its export as an artifact of that MLflow
    run; when that fails the export still stands: one warning line, exit 0."""
    from clfkit.run.tracking import EXPORT_ARTIFACTS, log_export

    run_id, problem = log_export(run_dir, [onnx])
    if run_id:
        click.echo(f"logged {onnx.name} to MLflow run {run_id} ({EXPORT_ARTIFACTS}/)")
    if problem:
        click.echo(f"warning: {problem}", err=True)


# --------------------------------------------------------------------------- predict
@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("image_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    default="test.txt",
    show_default=True,
    type=click.Path(path_type=Path),
    help="File to write; never the model, an input image, a path inside IMAGE_DIR, a file of a run "
    "folder or an existing file of another kind (links are followed to their target).",
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--format",
    "fmt",
    default="name",
    show_default=True,
    type=click.Choice(["name", "index", "csv"]),
    help="Lines '<path> <class name>', '<path> <class index>', or a CSV with "
    "path,class,index,confidence. The class is the last space-separated field (--topk: tabs); in the "
    "path, a backslash, newline, tab or byte that is not UTF-8 is written \\\\, \\n, \\t, "
    "\\xNN (README: Troubleshooting).",
)
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime threads [default: all cores].")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Image decoding threads [default: all cores, at least 2]."
)
@click.option(
    "--topk",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="The K likeliest classes per image, likeliest first: '<path>\\t<class 1>\\t<class 2>...' "
    "(tab-separated, as a path may hold spaces; csv: path,class_1,prob_1,...).",
)
@reports_errors
def predict(
    model: Path,
    image_dir: Path,
    *,
    output: Path,
    batch_size: int,
    fmt: str,
    threads: int | None,
    workers: int | None,
    topk: int,
) -> None:
    """Classify every image under IMAGE_DIR with an exported MODEL.onnx; write test.txt (into a
    temp file, renamed when every image is done; a device or pipe such as /dev/stdout is written
    straight into). A progress bar shows on a terminal."""
    from clfkit.deploy.batch_predict import predict_folder

    res = predict_folder(
        model,
        image_dir,
        output,
        batch_size=batch_size,
        fmt=fmt,
        threads=threads,
        workers=workers,
        progress=sys.stderr.isatty(),
        topk=topk,
    )
    for path, why in res.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    # -o /dev/stdout: the summary must not become the last line of the predictions
    click.echo(
        f"wrote {res.written} predictions to {res.out}; skipped {len(res.skipped)} file(s)",
        err=_is_stdout(res.out),
    )


def _is_stdout(path: Path) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # no real stdout (tests)
        return False


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val"]), help="[default: test if labelled, else val]")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the run's folder dataset from here instead (it moved).",
)
@checkpoint_option
@click.option(
    "--tta",
    type=click.Choice(["none", "flip"]),
    default="none",
    show_default=True,
    help="Evaluate with test-time augmentation (as `clfkit export --tta`); writes "
    "eval_<split>_tta-<mode>.json and adds it to report.html; the other report files "
    "stay as they are.",
)
@reports_errors
def eval_cmd(run_dir: Path, split: str | None, data_root: Path | None, checkpoint: str, tta: str) -> None:
    """Evaluate a run's checkpoint; rewrite per_class.csv, confusion.png, curves.png,
    mistakes.json, eval_<split>.json and report.html."""
    from clfkit.run.evaluation import eval_run

    res = eval_run(run_dir, split, data_root, checkpoint, tta=tta)
    click.echo(
        f"{res.split}{' (flip TTA)' if tta == 'flip' else ''}: accuracy {res.acc:.4f}, loss {res.loss:.4f} on {res.images} images"
    )
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
