"""The CLI's plugins and recipe: what can be named in a recipe, and checking a recipe."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from clfkit.cli.support import _fail, reports_errors
from clfkit.errors import ClfkitError


# --------------------------------------------------------------------------- plugins
@click.group(invoke_without_command=True)
@click.option("--kind", help="Only this kind (model, norm, ...).")
@click.pass_context
@reports_errors
def plugins(ctx: click.Context, kind: str | None) -> None:
    """List every registered component by kind, with the package that provides it."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from clfkit.registry import KINDS, REGISTRY, check_kind, plugins_disabled

    if kind:
        check_kind(kind)
    console = Console(width=max(100, Console().width))
    table = Table(show_edge=False, pad_edge=False)
    for col in ("kind", "name", "distribution", "version", "description"):
        table.add_column(col, overflow="fold")
    for k in [kind] if kind else KINDS:
        for i, e in enumerate(REGISTRY.entries(k)):
            table.add_row(k if i == 0 else "", e.name, e.provider, e.version, e.doc, end_section=False)
        if table.row_count:
            table.rows[-1].end_section = True
    console.print(table)
    console.print(
        "albumentations transforms are available too, by class name (e.g. ColorJitter).", highlight=False
    )
    if REGISTRY.plugins:
        console.print(
            "plugins loaded: " + ", ".join(f"{d} {v}" for d, v in REGISTRY.plugins), highlight=False
        )
    for err in REGISTRY.plugin_errors:
        console.print(f"[red]broken plugin[/red] {escape(err.dist)}: {escape(str(err))}", highlight=False)
    if plugins_disabled():
        console.print("CLFKIT_PLUGINS=none: plugins were not loaded (built-ins only)", highlight=False)


@plugins.command("show")
@click.argument("name")
@click.option("--kind", help="Disambiguate when several kinds use NAME.")
@reports_errors
def plugins_show(name: str, kind: str | None) -> None:
    """Print a component's arguments with types and defaults."""
    import inspect

    from clfkit.registry import KINDS, REGISTRY
    from clfkit.util.did_you_mean import did_you_mean

    if kind:  # one kind: its own unknown-name message, with the nearest names
        found = [REGISTRY.get(kind, name)]
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
@click.option(
    "--dir",
    "dest",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder in which the package folder clfkit-NAME/ is written.",
)
@reports_errors
def plugins_new(name: str, dest: Path) -> None:
    """Write a plugin package skeleton (one component of each kind, a test) for NAME."""
    from clfkit.registry.scaffold import new_plugin

    path = new_plugin(name, dest)
    click.echo(f"wrote {path}\nnext: pip install -e {path} && pytest {path} && clfkit plugins --kind model")


# --------------------------------------------------------------------------- recipe
@click.group()
@reports_errors
def recipe() -> None:
    """Work with recipe files."""


@recipe.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field (repeatable)."
)
@reports_errors
def recipe_check(path: Path, overrides: tuple[str, ...]) -> None:
    """Validate a recipe; print it resolved, with parameter count and MACs."""
    from clfkit.train.build import check_model_size
    from clfkit.train.model_stats import model_stats
    from clfkit.recipe import load_recipe

    r = load_recipe(path, overrides)
    check_model_size(r, str(path))
    click.echo(r.to_yaml().rstrip())
    stats = model_stats(r)
    click.echo(
        f"# model: {stats['params']:,} parameters, {stats['macs']:,} MACs per image at "
        f"{stats['in_chans']}x{stats['image_size'][0]}x{stats['image_size'][1]}, {stats['num_classes']} classes"
        + (
            " (assumed: the data was not found here, so the class count is unknown)"
            if stats.get("classes_assumed")
            else ""
        )
    )
    click.echo("# recipe OK")
