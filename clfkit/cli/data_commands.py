"""``clfkit data``: pack a data set as WebDataset shards, check it before training."""

from __future__ import annotations

from pathlib import Path

import click

from clfkit.cli.support import _fail, reports_errors  # noqa: F401
from clfkit.errors import ClfkitError


@click.group()
@reports_errors
def data() -> None:
    """Prepare data (pack as shards) and look at it before training (check)."""


@data.command("pack")
@click.argument("src")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--shard-size",
    default="1000",
    show_default=True,
    metavar="N|SIZE",
    help="Samples per shard (1000), or bytes per shard (64M, 1G).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the order samples are written in.")
@click.option("--image", default=None, metavar="COLUMN", help="Hugging Face source: the image column.")
@click.option("--label", default=None, metavar="COLUMN", help="Hugging Face source: the label column.")
@click.option(
    "--raw",
    default="auto",
    show_default=True,
    metavar="auto|never",
    help="auto: small lossless images (<= 64x64 px, RGB or gray) as raw uint8 pixels (.npy samples), "
    "read without decoding when streamed; never: every image as its file's bytes.",
)
@reports_errors
def data_pack(
    src: str, out: Path, shard_size: str, *, seed: int, image: str | None, label: str | None, raw: str
) -> None:
    """Write SRC (an image folder, a CSV index or a Hugging Face dataset) as WebDataset shards
    in the new folder OUT, with manifest.json (class names, samples per shard and class)."""
    from clfkit.data.pack import pack, pack_summary

    manifest = pack(
        src,
        out,
        shard_size,
        seed=seed,
        image=image,
        label=label,
        raw=raw,
        progress=lambda line: click.echo(line, err=True),
    )
    click.echo("\n".join(pack_summary(manifest, out)))


@data.command("check")
@click.argument("target", type=click.Path(path_type=Path), metavar="RECIPE|DATA_ROOT")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    metavar="RUN",
    help="A run trained on this data: label errors on val/test and feature neighbours.",
)
@click.option(
    "--folds",
    default=0,
    type=click.IntRange(0, 20),
    metavar="K",
    help="Train K models, each on all train folds but one, for label errors in train.",
)
@click.option(
    "--fold-epochs", type=click.IntRange(1), metavar="N", help="Epochs per fold [default: the recipe's]."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a recipe field (repeatable)."
)
@click.option(
    "--out",
    default="data_check",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for data_check.json, data_check.html (never inside the data).",
)
@click.option("--fix-split", is_flag=True, help="Also write leaked_files.csv: the val/test files to drop.")
@click.option(
    "--phash-distance",
    default=8,
    show_default=True,
    type=click.IntRange(0, 32),
    help="Most differing bits (of 64) of two near-duplicates' perceptual hashes.",
)
@reports_errors
def data_check(
    target: Path,
    *,
    run_dir: Path | None,
    folds: int,
    fold_epochs: int | None,
    overrides: tuple[str, ...],
    out: Path,
    fix_split: bool,
    phash_distance: int,
) -> None:
    """Duplicates, leaks across splits, likely label errors and image-quality issues."""
    from clfkit.audit.check import check_data
    from clfkit.audit.report import console_report, write_outputs

    if folds == 1:
        _fail(ClfkitError("--folds 1 leaves nothing to train on: give 2 or more (or 0 for none)"))
    result = check_data(
        target,
        run=run_dir,
        folds=folds,
        fold_epochs=fold_epochs,
        overrides=overrides,
        phash_distance=phash_distance,
        out=out,
    )
    files = write_outputs(result, out, fix_split)
    click.echo(console_report(result), nl=False)
    from clfkit.data.image_files import escape_path

    click.echo("wrote " + ", ".join(escape_path(str(f)) for f in files))
