"""The generated references (docs/components.md from the registry, docs/recipe-reference.md from
the recipe's models) fail here when they drift; README's set-up command is CI's."""

from __future__ import annotations

from pathlib import Path

import pytest

from clfkit.registry import reference as docs
from clfkit import registry

README = Path(__file__).resolve().parent.parent / "README.md"


def test_component_reference_is_current():
    text = docs.COMPONENTS_DOC.read_text(encoding="utf-8")
    assert docs.BEGIN in text and docs.END in text, "run: python -m clfkit.registry.reference --write"
    assert docs.updated_readme(text, docs.render()) == text, (
        "docs/components.md is out of date; run: python -m clfkit.registry.reference --write"
    )
    assert text.index(docs.SECTION) < text.index(docs.BEGIN)


def test_regenerate_command_checks_both_generated_files(capsys):
    """`python -m clfkit.registry.reference --check` (no --file) covers both docs files and finds them current."""
    assert docs.main(["--check"]) == 0, capsys.readouterr()
    assert docs.RECIPE_BEGIN in docs.RECIPE_DOC.read_text(encoding="utf-8")
    assert docs.RECIPE_BEGIN not in README.read_text(encoding="utf-8")  # generated parts left the README
    assert docs.BEGIN not in README.read_text(encoding="utf-8")


def test_write_brings_a_stale_copy_back_and_check_names_it(tmp_path, capsys):
    stale = tmp_path / "recipe-reference.md"
    stale.write_text(
        docs.RECIPE_DOC.read_text(encoding="utf-8").replace("| `train.epochs` |", "| `train.epoks` |")
    )
    assert docs.main(["--check", "--file", str(stale)]) == 1
    assert "recipe-reference.md: the generated reference is out of date" in capsys.readouterr().out
    assert docs.main(["--write", "--file", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == docs.RECIPE_DOC.read_text(encoding="utf-8")


def test_reference_lists_every_builtin_component_and_argument():
    ref = docs.render()
    for entry in registry.REGISTRY.entries():
        if entry.provider != registry.BUILTIN:
            continue
        assert f"| `{entry.name}` |" in ref
        for p in entry.user_params():
            assert f"`{p.name}`:" in ref
    assert "`margin`: float (> 0) = `1.0`" in ref
    assert "`stem`: 'imagenet' \\| 'cifar' \\| 'small' = `imagenet`" in ref


def test_write_and_check_roundtrip(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- section:components -->\n\n<!-- section:plugins -->\n")
    assert docs.main(["--check", "--file", str(readme)]) == 1
    assert docs.main(["--write", "--file", str(readme)]) == 0
    assert docs.main(["--check", "--file", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n<!-- section:components -->\n\n" + docs.BEGIN)
    assert text.rstrip().endswith("<!-- section:plugins -->")
    docs.main(["--write", "--file", str(readme)])
    assert readme.read_text() == text  # idempotent


def test_readme_without_markers_is_refused_not_appended_to(tmp_path, capsys):
    from clfkit.errors import ClfkitError

    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert docs.main(["--write", "--file", str(readme)]) == 1
    assert "section:components" in capsys.readouterr().err
    with pytest.raises(ClfkitError, match="recipe-reference"):
        docs.update_recipe_reference(readme)
    assert readme.read_text() == "# x\n"


def test_ci_runs_exactly_the_readme_set_up_command():
    """CI is a newcomer: after torch, it runs README command 2 as written and installs nothing
    else, so a suite that needs an extra install fails CI instead of the first user."""
    readme = README.read_text(encoding="utf-8")
    setup = readme[readme.index("## Set up") :]
    command2 = setup.split("# 2.", 1)[1].splitlines()[1].strip()
    ci = [
        line.strip()
        for line in (README.parent / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    installs = [line for line in ci if "pip install" in line]
    assert installs == ["pip install -q torch==2.14.1 torchvision==0.29.1", command2]
    assert ci[-1] == command2


def test_a_missing_or_unreadable_file_is_one_message_not_a_traceback(tmp_path, capsys):
    assert docs.main(["--check", "--file", str(tmp_path / "gone.md")]) == 1
    assert "gone.md: No such file or directory" in capsys.readouterr().err
    assert docs.main(["--write", "--file", str(tmp_path)]) == 1  # a folder
    assert "Is a directory" in capsys.readouterr().err
    bad = tmp_path / "latin1.md"
    bad.write_bytes(b"# caf\xe9\n")
    assert docs.main(["--write", "--file", str(bad)]) == 1
    assert bad.read_bytes() == b"# caf\xe9\n"
