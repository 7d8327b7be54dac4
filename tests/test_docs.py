"""The README's component reference is generated from the registry; this fails when it drifts."""
from __future__ import annotations

from pathlib import Path

import pytest

from clfkit import docs, registry

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_component_reference_is_current():
    text = README.read_text(encoding="utf-8")
    assert docs.BEGIN in text and docs.END in text, "run: python -m clfkit.docs --write"
    assert docs.updated_readme(text, docs.render()) == text, (
        "README's component reference is out of date; run: python -m clfkit.docs --write")
    assert text.index(docs.SECTION) < text.index(docs.BEGIN)


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
    assert docs.main(["--check", "--readme", str(readme)]) == 1
    assert docs.main(["--write", "--readme", str(readme)]) == 0
    assert docs.main(["--check", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n<!-- section:components -->\n\n" + docs.BEGIN)
    assert text.rstrip().endswith("<!-- section:plugins -->")
    docs.main(["--write", "--readme", str(readme)])
    assert readme.read_text() == text  # idempotent


def test_readme_without_markers_is_refused_not_appended_to(tmp_path, capsys):
    from clfkit.errors import ClfkitError

    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert docs.main(["--write", "--readme", str(readme)]) == 1
    assert "section:components" in capsys.readouterr().err
    with pytest.raises(ClfkitError, match="recipe-reference"):
        docs.update_recipe_reference(readme)
    assert readme.read_text() == "# x\n"


def test_ci_runs_exactly_the_readme_set_up_command():
    """CI is a newcomer: after torch, it runs README command 2 as written and installs nothing
    else, so a suite that needs an extra install fails CI instead of the first user."""
    readme = README.read_text(encoding="utf-8")
    setup = readme[readme.index("## Set up"):]
    command2 = setup.split("# 2.", 1)[1].splitlines()[1].strip()
    ci = [line.strip() for line in (README.parent / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    installs = [line for line in ci if "pip install" in line]
    assert installs == ["pip install -q torch==2.14.1 torchvision==0.29.1", command2]
    assert ci[-1] == command2
