"""The README and docs/ as a newcomer meets them: every `clfkit ...` command in README.md (and
in docs/*.md code blocks) parses with the real CLI, and is run where that is cheap (recipes are
checked, the plugin example is built and trained); every relative link and image in README.md
and docs/*.md resolves to a file and heading; and the README stays a short front door."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from clfkit.cli import cli
from conftest import invoke

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MD = MarkdownIt("commonmark").enable("table")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


# --------------------------------------------------------------------------- reading markdown
def fences(path: Path) -> list[tuple[str, str]]:
    """(info, content) of every fenced code block in ``path``."""
    return [
        (t.info.strip(), t.content) for t in MD.parse(path.read_text(encoding="utf-8")) if t.type == "fence"
    ]


def clfkit_commands(path: Path) -> list[list[str]]:
    """The argument lists of the `clfkit ...` commands in ``path``'s code blocks: every line of a
    shell block, and `$ `-prompted lines of any block; continuations joined, comments dropped,
    `a && clfkit ...` split, leading VAR=value assignments skipped."""
    commands = []
    for info, content in fences(path):
        text = content.replace("\\\n", " ")
        for line in text.splitlines():
            if line.startswith("$ "):
                line = line[2:]
            elif info not in ("bash", "sh", "shell"):
                continue
            for words in " ".join(map(shlex.quote, shlex.split(line, comments=True))).split(" '&&' "):
                words = shlex.split(words)
                while words and ENV_ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words[:1] == ["clfkit"]:
                    commands.append(words[1:])
    return commands


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation other than - and _ dropped,
    spaces turned into hyphens (github-slugger, which GitHub's renderer uses)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of ``path``, a repeated one numbered as GitHub does (-1, -2, ...)."""
    tokens, seen = MD.parse(path.read_text(encoding="utf-8")), set()
    for i, t in enumerate(tokens):
        if t.type != "heading_open":
            continue
        text = "".join(c.content for c in tokens[i + 1].children if c.type in ("text", "code_inline"))
        base, n = slug(text), 0
        while (name := base if n == 0 else f"{base}-{n}") in seen:
            n += 1
        seen.add(name)
    return seen


def links(path: Path) -> list[str]:
    """Every link target and image source in ``path``."""
    out = []
    for block in MD.parse(path.read_text(encoding="utf-8")):
        for t in block.children or []:
            if t.type == "link_open":
                out.append(t.attrs["href"])
            elif t.type == "image":
                out.append(t.attrs["src"])
    return out


# --------------------------------------------------------------------------- every command parses
def leaf_reached(args: list[str], monkeypatch) -> tuple[int, str, list[str]]:
    """Run the real click CLI on ``args`` with every command's body replaced by a recorder:
    arguments, options, choices and ranges are all validated, nothing is trained or written.
    (exit code, output, names of the commands whose bodies would have run)."""
    ran: list[str] = []

    def patch(cmd: click.Command) -> None:
        monkeypatch.setattr(cmd, "callback", lambda **_: ran.append(cmd.name))
        for sub in getattr(cmd, "commands", {}).values():
            patch(sub)

    patch(cli)
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output, ran


README_COMMANDS = [list(c) for c in dict.fromkeys(map(tuple, clfkit_commands(README)))]  # each line once


def test_readme_shows_the_everyday_commands():
    firsts = {tuple(c[:2]) if c[0] in ("recipe", "plugins") else (c[0],) for c in README_COMMANDS}
    for needed in [
        ("train",),
        ("recipe", "check"),
        ("eval",),
        ("export",),
        ("predict",),
        ("compare",),
        ("sweep",),
        ("tune",),
        ("plugins", "show"),
    ]:
        assert needed in firsts, f"README shows no `clfkit {' '.join(needed)}` command"


DOCS_COMMANDS = [(page, c) for page in DOCS for c in dict.fromkeys(map(tuple, clfkit_commands(page)))]
EVERY_COMMAND = [(README, tuple(c)) for c in README_COMMANDS] + DOCS_COMMANDS


@pytest.mark.parametrize(
    "page, args", EVERY_COMMAND, ids=[f"{p.name}: {' '.join(c)[:60]}" for p, c in EVERY_COMMAND]
)
def test_documented_command_parses(page, args, monkeypatch):
    """README's commands, and those in docs/*.md code blocks too."""
    code, out, ran = leaf_reached(list(args), monkeypatch)
    assert code == 0, f"{page.name}: clfkit {shlex.join(args)}:\n{out}"
    leaf = [w for w in args if not w.startswith("-")][:2]
    assert ran[-1] in leaf, (ran, args)  # the subcommand the line names is the one that would run
    for word in args:  # a file the line names inside the repository exists there
        if re.match(r"(recipes|plugins|bench|docs)/", word):
            assert (ROOT / word).exists(), f"clfkit {shlex.join(args)}: {word} is not in the repository"


RECIPE_LINES = [
    c
    for c in README_COMMANDS
    if c[:1] == ["train"] and len(c) > 1 and (ROOT / c[1]).is_file() or c[:2] == ["recipe", "check"]
]


@pytest.mark.parametrize("args", RECIPE_LINES, ids=[" ".join(c)[:60] for c in RECIPE_LINES])
def test_readme_recipe_and_overrides_are_valid(args, monkeypatch):
    """Each `clfkit train RECIPE --set ...` line's recipe and overrides load (through `clfkit
    recipe check`, which builds the model but trains nothing); the README's typo example fails
    with the very lines the README shows."""
    monkeypatch.chdir(ROOT)
    words = args[1:] if args[0] == "train" else args[2:]
    words = [w for i, w in enumerate(words) if w != "--out" and (i == 0 or words[i - 1] != "--out")]
    code, out = invoke("recipe", "check", *words)
    shown = [content for _, content in fences(README) if content.startswith(f"$ clfkit {shlex.join(args)}\n")]
    if shown:
        assert code == 2
        for line in shown[0].splitlines()[1:]:
            assert line.split("...")[0] in out, f"README shows {line!r}; clfkit printed:\n{out}"
    else:
        assert code == 0 and "# recipe OK" in out, out


# --------------------------------------------------------------------------- the plugin example
def plugin_example() -> dict[str, str]:
    """The files of README's "From nothing to a trained recipe": each block after a `name`: line."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### From nothing to a trained recipe") :]
    section = section[: section.index("\n## ")]
    files = dict(re.findall(r"^`([\w.]+)`:\n\n```\w+\n(.*?)```", section, re.S | re.M))
    assert set(files) == {"pyproject.toml", "clfkit_wide.py", "wide.yaml"}, set(files)
    return files


def installed_like_pip(pkg: Path, site: Path) -> None:
    """What `pip install -e .` leaves behind for the plugin's entry points: a dist-info holding
    its name, version, requirements and entry points (no network, no build)."""
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in project["dependencies"])
    )
    eps = project["entry-points"]["clfkit.plugins"]
    (info / "entry_points.txt").write_text(
        "[clfkit.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
    )


RUN_IN_FRESH_PROCESS = """
import json, sys
from click.testing import CliRunner
from clfkit.cli import cli
print(json.dumps([(r.exit_code, r.output) for r in (CliRunner().invoke(cli, a) for a in json.loads(sys.argv[1]))]))
"""
SMALL = [
    "--set",
    "data.source.train_size=64",
    "--set",
    "data.image_size=8",
    "--set",
    "train.epochs=1",
    "--set",
    "model.width=8",
    "--set",
    "train.batch_size=16",
    "--quiet",
]


def test_readme_plugin_example_goes_from_nothing_to_a_trained_recipe(tmp_path):
    """The three files as the README prints them, found through their entry point by a fresh
    clfkit process, and the README's three commands (the train made tiny with --set)."""
    pkg = tmp_path / "clfkit-wide"
    pkg.mkdir()
    for name, content in plugin_example().items():
        (pkg / name).write_text(content)
    installed_like_pip(pkg, tmp_path / "site")
    shown = [
        c
        for c in clfkit_commands(README)
        if "wide_cnn" in c or "wide.yaml" in c or c == ["plugins", "--kind", "model"]
    ]
    assert shown == [["plugins", "--kind", "model"], ["plugins", "show", "wide_cnn"], ["train", "wide.yaml"]]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(pkg), str(ROOT)]),
        "CLFKIT_PLUGINS": "clfkit-wide",
    }
    r = subprocess.run(
        [sys.executable, "-c", RUN_IN_FRESH_PROCESS, json.dumps(shown[:2] + [shown[2] + SMALL])],
        cwd=pkg,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (listed, listed_out), (show, show_out), (train, train_out) = json.loads(r.stdout.splitlines()[-1])
    assert listed == 0 and "wide_cnn" in listed_out and "clfkit-wide" in listed_out, listed_out
    assert show == 0 and "width" in show_out and "64" in show_out, show_out
    assert train == 0, train_out
    assert "name: wide_cnn" in (pkg / "runs" / "wide" / "recipe.yaml").read_text()


# --------------------------------------------------------------------------- links and shape
@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page):
    broken = []
    for href in links(page):
        if re.match(r"[a-z]+:", href):  # https:, mailto: ...: not checked offline
            continue
        target, _, anchor = href.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{href}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{href}: no heading #{anchor} in {path.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_docs_index_and_readme_list_every_docs_file():
    index = {h.partition("#")[0] for h in links(ROOT / "docs" / "README.md")}
    readme = {h.partition("#")[0] for h in links(README)}
    for doc in DOCS:
        if doc.name != "README.md":
            assert doc.name in index, f"docs/README.md does not list {doc.name}"
            assert f"docs/{doc.name}" in readme, f"README.md links no docs/{doc.name} (add it under More)"
    assert "docs/README.md" in readme and "ARCHITECTURE.md" in readme


def test_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference text into docs/"
    assert "## More" in lines


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_line_renders_as_a_table_row(page):
    """A paragraph dropped inside a table cuts it in two: the rows after it render as text (the
    errors table of the old README lost 15 rows that way)."""
    text = page.read_text(encoding="utf-8")
    rows = sum(t.type == "tr_open" for t in MD.parse(text))
    table_lines = [
        line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")
    ]
    assert rows == len(table_lines), f"{page.name}: {len(table_lines) - rows} table line(s) render as text"
