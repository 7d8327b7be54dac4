"""report.html: one self-contained page per run (and per sweep), checked by parsing it and,
where Debian's chromium is installed, by rendering it in a real headless browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import tiny_recipe
from conftest import invoke

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


class _Page(HTMLParser):
    """The parts of a page the tests look at."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            v = a.get(key) or ""
            if tag != "a" and v and not v.startswith("data:"):
                self.external.append(v)
        if tag in ("script", "link"):
            self.external.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


@pytest.fixture(scope="module")
def run_with_report(tmp_path_factory):
    from clfkit.train.trainer import train

    # a short run on hard-to-separate data still gets some test images wrong
    return train(tiny_recipe(train__epochs=1), tmp_path_factory.mktemp("runs"), quiet=True).run_dir


def test_run_report_is_self_contained_with_mistakes(run_with_report):
    path = run_with_report / "report.html"
    assert path.is_file()
    page = _parse(path)
    assert not page.external, f"report.html must not load anything: {page.external}"
    data_images = [s for s in page.images if s.startswith("data:image/png;base64,")]
    assert len(data_images) == len(page.images) >= 3  # curves, confusion, thumbnails
    assert "mistakes" in page.ids
    text = " ".join(page.text)
    for heading in (
        "Summary",
        "Curves",
        "Confusion matrix",
        "Per class",
        "Recipe",
        "Most confidently misclassified",
    ):
        assert heading in text
    mistakes = json.loads((run_with_report / "mistakes.json").read_text())
    assert mistakes["split"] == "test" and mistakes["mistakes"], "a 1-epoch tiny run makes mistakes"
    m = mistakes["mistakes"]
    assert [x["confidence"] for x in m] == sorted((x["confidence"] for x in m), reverse=True)
    assert all(x["true"] != x["predicted"] for x in m)
    assert f"true: {m[0]['true']}" in text and f"predicted: {m[0]['predicted']}" in text
    # every thumbnail of mistakes.json is on the page
    assert sum(s.endswith(x["png_base64"]) for x in m for s in data_images) == len(m)


def test_report_command_rebuilds_it(run_with_report, tmp_path):
    from click.testing import CliRunner

    from clfkit.cli import cli

    copy = tmp_path / "copy"
    shutil.copytree(run_with_report, copy)
    (copy / "report.html").unlink()
    res = CliRunner().invoke(cli, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "report.html").is_file() and str(copy / "report.html") in res.output


def test_sweep_folder_gets_a_report(seed_sweep_page):
    page = _parse(seed_sweep_page)
    assert not page.external
    assert len(page.images) == 2 and all(s.startswith("data:image/png;base64,") for s in page.images)
    text = " ".join(page.text)
    assert "best_val_acc" in text and "Top runs" in text
    assert all(f"lr={v}" in text for v in ("1e-3", "3e-3")), text  # both variants in the tables


@pytest.fixture(scope="module")
def seed_sweep_page(tmp_path_factory) -> Path:
    """report.html of a sweep of two LRs under two seeds each (the seeds table, mean curves)."""
    import yaml

    from clfkit.studies.sweep import run_sweep

    folder = tmp_path_factory.mktemp("seeds")
    data = tiny_recipe(train__epochs=1).to_dict()
    data["data"]["source"].update(train_size=64, val_size=32, test_size=32)
    (folder / "r.yaml").write_text(yaml.safe_dump(data))
    return (
        run_sweep(folder / "r.yaml", ["optim.lr=1e-3,3e-3"], out=folder / "sw", quiet=True, seeds=2).out
        / "report.html"
    )


# appended to a copy of a page: after loading, the body records how many images it has and how
# many the browser could not decode (a broken data: URI has no natural width)
_IMAGE_PROBE = (
    "<script>addEventListener('load', () => { const all = [...document.images];"
    "document.body.dataset.images = all.length;"
    "document.body.dataset.broken = all.filter(i => !i.complete || !i.naturalWidth).length; });</script>"
)


def _images_loaded(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images on the page, images the headless browser failed to load)."""
    import re

    probe = tmp_path / f"probe_{page.parent.name}.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _IMAGE_PROBE + "</body>"), encoding="utf-8"
    )
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    found = dict(re.findall(r'data-(images|broken)="(\d+)"', body))
    assert found, f"the probe did not run: {body}"
    return int(found["images"]), int(found["broken"])


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium at /usr/bin/chromium (Debian: apt-get install chromium); "
    "the pages are still checked by html.parser",
)
def test_every_image_loads_in_headless_chromium(run_with_report, seed_sweep_page, tmp_path):
    run_images, broken = _images_loaded(run_with_report / "report.html", tmp_path)
    # curves, confusion, reliability, mistake thumbnails, Grad-CAM images and maps
    assert run_images >= 10 and broken == 0, (run_images, broken)
    sweep_images, broken = _images_loaded(seed_sweep_page, tmp_path)
    assert sweep_images == 2 and broken == 0  # the mean curves over seeds and compare.png
    page = seed_sweep_page.read_text()
    assert "Variants over seeds" in page and "Mean curves over seeds" in page


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium at /usr/bin/chromium (Debian: apt-get install chromium); "
    "the page is still checked by html.parser above",
)
def test_report_renders_in_headless_chromium(run_with_report, tmp_path):
    shot = tmp_path / "shot.png"
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (run_with_report / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the browser parsed the whole page: the last section and the inlined thumbnails are in its DOM
    assert "Most confidently misclassified" in dom.stdout and "<pre>" in dom.stdout
    assert dom.stdout.count("data:image/png;base64,") >= 3
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            (run_with_report / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 900)
        # something was drawn: not a blank white page
        assert len(set(img.convert("L").getdata())) > 10


# --------------------------------------------------------------------------- text in figures
MATH = ["$\\frac$ a", "$x$", "cost $5"]  # matplotlib reads text between two $ as math


# --------------------------------------------------------------------------- report.html of a damaged run
def _run_folder(path):
    import json

    path.mkdir()
    (path / "summary.json").write_text(json.dumps({"name": "r", "best_val_acc": 0.5, "best_epoch": 1}))
    (path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.5}) + "\n")
    return path


def test_class_and_run_names_with_dollar_signs_are_drawn_as_text(tmp_path, monkeypatch):
    """A class folder named '$\\frac$ a' ended training with matplotlib's ParseSyntaxException
    traceback while drawing confusion.png (after summary.json, before report.html); a run
    folder named so did the same to `clfkit compare`, and '$x$' was drawn as math."""
    import json

    from matplotlib.text import Text

    from clfkit.run import plots

    drawn = []
    real = Text.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        drawn.append(self)

    monkeypatch.setattr(Text, "__init__", spy)
    plots.plot_confusion(
        [[1, 0, 1], [0, 2, 0], [1, 1, 0]], MATH, tmp_path / "confusion.png", title="$\\frac$"
    )
    run = tmp_path / "r$\\frac$"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5}) + "\n"
    )
    code, out = invoke("compare", run, "-o", tmp_path / "compare.png", "--title", "$x$")
    assert code == 0, out
    assert (tmp_path / "confusion.png").is_file() and (tmp_path / "compare.png").is_file()
    texts = [t for t in drawn if "$" in t.get_text()]
    assert texts and not any(t.get_parse_math() for t in texts)


@pytest.mark.parametrize(
    "file, content, why",
    [
        (
            "per_class.csv",
            b"split,class,accuracy\r\ntest,\xe9t\xe9,0.5\r\n",
            "UnicodeDecodeError",
        ),  # a spreadsheet's cp1252
        ("per_class.csv", b"split,class,accuracy\ntest,a,0.5,extra\n", "one cell per column"),
        ("mistakes.json", b'{"mistakes": "none", "split": "test"}', "not the list of mistakes"),
        ("mistakes.json", b'{"mistakes": [{"true": "a"}], "split": "test"}', "png_base64"),
        (
            "mistakes.json",
            b'{"mistakes": [{"true": "a", "predicted": "b", "confidence": 0.5, '
            b'"png_base64": "\\" onerror=\\"alert(1)"}]}',
            "base64",
        ),
    ],
)
def test_report_of_a_run_with_a_damaged_file_shows_the_rest(tmp_path, file, content, why):
    """`clfkit report` died with a traceback (TypeError, KeyError, UnicodeDecodeError,
    AttributeError) on a per_class.csv or mistakes.json that was edited or re-saved; and an
    edited image string reached the page unescaped (an onerror attribute on a 'no script' page)."""
    run = _run_folder(tmp_path / "r")
    (run / file).write_bytes(content)
    with pytest.warns(UserWarning) as shown:
        code, out = invoke("report", run)
    assert code == 0, out
    said = [str(w.message) for w in shown if f"{run / file} cannot be read" in str(w.message)]
    assert len(said) == 1 and why in said[0], [str(w.message) for w in shown]
    page = (run / "report.html").read_text()
    assert f"{file} cannot be read" in page and "onerror" not in page and "Epochs" in page


def test_report_shows_a_recipe_that_is_not_utf8(tmp_path):
    run = _run_folder(tmp_path / "r")
    (run / "recipe.yaml").write_bytes(b"name: caf\xe9\n")
    code, out = invoke("report", run)
    assert code == 0, out
    assert "name: caf\ufffd" in (run / "report.html").read_text()
