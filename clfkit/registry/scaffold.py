"""``clfkit plugins new NAME``: write a plugin package that installs and passes its own tests.

The skeleton comes from ``clfkit/registry/templates/plugin/`` (package data): a pyproject with the
``clfkit.plugins`` entry point, one component of each pluggable kind, a recipe using them, a
README and a test. ``plugins/clfkit-example`` in clfkit's repository is exactly
``new_plugin("example", "plugins")``, and a test keeps the two identical.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from importlib import resources
from typing import TYPE_CHECKING, Iterator
from pathlib import Path

from clfkit import __version__
from clfkit.errors import ClfkitError
from clfkit.util.atomic import _UMASK, WriteError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

TEMPLATE = "registry/templates/plugin"
SUFFIX = ".tmpl"
MAX_NAME = 64  # the folder, module and component names grow from it; file names stop at 255 bytes


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` uses: distribution, module and component prefix."""
    base = name.strip().lower().replace("-", "_")
    if base.startswith("clfkit_"):
        base = base[len("clfkit_") :]
    # a distribution name ends with a letter or digit (PEP 508: pip refuses 'clfkit-x-')
    if (
        not re.fullmatch(r"[a-z](?:[a-z0-9_]*[a-z0-9])?", base)
        or keyword.iskeyword(base)
        or len(base) > MAX_NAME
    ):
        raise ClfkitError(
            f"plugin name {name!r}: use lowercase letters, digits, '-' or '_', "
            f"starting with a letter and ending with a letter or digit, at most "
            f"{MAX_NAME} characters (e.g. 'mynets')"
        )
    release = __version__.split("+")[0]
    return {
        "name": base,
        "dist": "clfkit-" + base.replace("_", "-"),
        "module": "clfkit_" + base,
        "clfkit_version": release,
    }


def render(text: str, names: dict[str, str]) -> str:
    """Fill the ``{{key}}`` placeholders of a template."""
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def new_plugin(name: str, dest: str | Path = ".") -> Path:
    """Write the package ``dest/clfkit-NAME/``; refuse to overwrite anything that exists there
    (a non-empty folder, or a file). The package is written into a temp folder beside it and
    renamed into place, so a failure half-way leaves nothing behind."""
    names = plugin_names(name)
    dest = Path(dest)
    root = dest / names["dist"]
    if dest.exists() and not dest.is_dir():
        raise ClfkitError(f"--dir {dest} is a file, not a folder; give a folder to write {names['dist']}/ in")
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ClfkitError(f"{root} already exists and is not a folder; pick another name or --dir")
    if root.is_dir() and any(root.iterdir()):
        raise ClfkitError(
            f"{root} already exists and is not empty; nothing was written. Pick another "
            f"name or --dir, or remove that folder first"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{names['dist']}.", suffix=".tmp", dir=dest))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the package gets the usual permissions
    except OSError as e:
        raise WriteError(f"cannot write the plugin package in {dest}: {e.strerror or e}") from None
    try:
        _write_template(tmp, names)
        if root.is_dir():
            root.rmdir()  # empty (checked above); rename needs the name free
        os.rename(tmp, root)
    except OSError as e:
        raise WriteError(
            f"cannot write the plugin package {root}: {e.strerror or e}; nothing was written"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_template(root: Path, names: dict[str, str]) -> None:
    template = resources.files("clfkit").joinpath(TEMPLATE)
    for src, rel in _walk(template, ()):
        parts = [p.replace("MODULE", names["module"]) for p in rel]
        parts[-1] = parts[-1].removesuffix(SUFFIX)
        out = root.joinpath(*parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(src.read_text(encoding="utf-8"), names), encoding="utf-8")


def _walk(folder: Traversable, rel: tuple[str, ...]) -> Iterator[tuple[Traversable, tuple[str, ...]]]:
    """(template file, its path parts) for every ``*.tmpl`` under ``folder``, sorted."""
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.is_dir():
            if item.name != "__pycache__":
                yield from _walk(item, rel + (item.name,))
        elif item.name.endswith(SUFFIX):
            yield item, rel + (item.name,)
