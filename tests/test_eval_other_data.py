"""clfkit eval on other data (issue 22, class 7): the data evaluated is compared with the run's
by file name and content (an identical copy is the same data, a larger set is not), the console
says which, and report.html marks the figures computed on other data than the summary's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke, train_folder_run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a run trained on a folder dataset, that dataset's root)."""
    return train_folder_run(tmp_path_factory.mktemp("evaldata"), "e", per_class=6, val_fraction=0.34)


def _eval(run: Path, *args) -> str:
    code, out = invoke("eval", run, *args)
    assert code == 0, out
    return out


def _marked(run: Path) -> bool:
    page = (run / "report.html").read_text()
    assert 'class="source' in page  # every rewritten page says what its figures were computed on
    return 'class="source other"' in page and "do not compare" in page


def test_eval_says_which_data_and_the_page_marks_other_data(folder_run, tmp_path):
    run, root = folder_run
    assert "data: same data as the run trained on (16 files" in _eval(run)
    assert not _marked(run)
    copy = Path(shutil.copytree(root, tmp_path / "copy"))  # new modification times, same contents
    out = _eval(run, "--data-root", copy)
    assert "data: same data" in out and not _marked(run), out  # was: an identical copy reported 'changed'
    shutil.copy(copy / "test/cat/cat_0.png", copy / "test/cat/extra.png")
    (copy / "train/dog/dog_1.png").write_bytes((copy / "train/dog/dog_2.png").read_bytes())
    with pytest.warns(UserWarning, match="holds other data"):
        out = _eval(run, "--data-root", copy)  # was: a larger set was silent
    assert (
        f"data: changed: --data-root {copy} holds other data than this run trained on (1 file(s) added, "
        f"1 file(s) changed)" in out
    ), out
    assert _marked(run)
    record = json.loads((run / "eval_test.json").read_text())
    assert record["data_changed"] is True and "1 file(s) added" in record["data"]
    assert json.loads((run / "reports_source.json").read_text())["data_root"] == str(copy)
    _eval(run)  # back on the run's own data: the page is no longer marked
    assert not _marked(run)


def test_the_runs_own_data_changed_is_marked(folder_run, tmp_path):
    run, root = folder_run
    run = Path(shutil.copytree(run, tmp_path / "run"))
    victim = root / "test/dog/dog_0.png"
    before = victim.read_bytes()
    victim.write_bytes(before + b"\0")  # a trailing byte: PNG still decodes, content differs
    try:
        with pytest.warns(UserWarning, match="changed since this run trained on it"):
            out = _eval(run)
        assert "data: changed: the data at" in out and "(1 file(s) changed)" in out, out
        assert _marked(run)
    finally:
        victim.write_bytes(before)
