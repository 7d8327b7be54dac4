"""report.html: one self-contained page per run folder (and per sweep or tune folder).

The page needs no network and no other file: figures and thumbnails are inlined as base64
``data:`` URIs, the style sheet is inline, there is no script. It is built only from files the
run folder already holds (recipe.yaml, summary.json, metrics.jsonl, curves.png, confusion.png,
per_class.csv, mistakes.json, cam.json, calibration.json, reliability.png, eval_*.json), so ``clfkit report RUN`` can rebuild it for any
finished run; ``clfkit eval`` rebuilds it after rewriting the files it shows. It is written
atomically like every other run file.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

from clfkit.util.atomic import write_text
from clfkit.run.report_insight import STYLE as _INSIGHT_STYLE, calibration_section, cam_section
from clfkit.run.run_folder import (
    MISTAKES_JSON as MISTAKES_FILE,
    REPORT_HTML as REPORT_FILE,  # one home for run file names
    REPORTS_SOURCE_JSON as REPORTS_SOURCE_FILE,
)
from clfkit.run.reader import RunFileWarning, read_history


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1250px;
     color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em;max-height:30em}
img.fig{max-width:100%;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:.8em} .grid figure{margin:0;width:120px;font-size:.8em;text-align:center}
.grid img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:2px solid #c33}
.muted{color:#777} .true{color:#171} .pred{color:#c33}
.source{background:#f4f7fb;border-left:4px solid #79a;padding:.4em .8em} .other{background:#fdf0ee;border-color:#c33}
"""


def _png_uri(path: Path) -> Optional[str]:
    """``data:image/png;base64,...`` of a PNG file, or None when it is missing."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: Optional[list[str]] = None) -> str:
    """An HTML table of ``rows`` (dicts), numbers right-aligned."""
    if not rows:
        return '<p class="muted">none</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td{' class=num' if num else ''}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _figure(title: str, path: Path) -> str:
    uri = _png_uri(path)
    if uri is None:
        return f'<h2>{html.escape(title)}</h2><p class="muted">{html.escape(path.name)} not written</p>'
    return f'<h2>{html.escape(title)}</h2><img class="fig" alt="{html.escape(path.name)}" src="{uri}">'


def _page(title: str, sections: Iterable[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}{_INSIGHT_STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None


def _unreadable(path: Path, e: Exception | str) -> str:
    """The note a section shows for a run file that is there but cannot be shown (edited,
    saved by a spreadsheet in another encoding, cut short), also given as a warning: the
    page is still written."""
    why = e if isinstance(e, str) else f"{type(e).__name__}: {str(e)[:120]}"
    warnings.warn(f"{path} cannot be read ({why}); report.html shows the rest", RunFileWarning, stacklevel=2)
    return f'<p class="muted">{html.escape(path.name)} cannot be read ({html.escape(why)})</p>'


# --------------------------------------------------------------------------- one run
SUMMARY_KEYS = (
    "best_val_acc",
    "best_epoch",
    "test_acc",
    "test_loss",
    "val_ece",
    "test_ece",
    "train_acc_at_best",
    "epochs_run",
    "stopped_early_at",
    "eval_split",
    "params",
    "device",
    "precision",
    "train_images",
    "val_images",
    "test_images",
    "skipped_files",
    "train_seconds",
    "wall_seconds",
    "clfkit_version",
)


def _mistake_card(m: dict[str, Any]) -> str:
    """One misclassified image of mistakes.json; a KeyError/TypeError for an entry that is not one."""
    where = html.escape(str(m.get("path") or f"#{m.get('index')}"))
    png = base64.b64encode(base64.b64decode(m["png_base64"], validate=True)).decode(
        "ascii"
    )  # only base64 reaches the page
    return (
        f'<figure><img alt="{where}" title="{where}" src="data:image/png;base64,{png}">'
        f'<figcaption><span class="true">true: {html.escape(str(m["true"]))}</span><br>'
        f'<span class="pred">predicted: {html.escape(str(m["predicted"]))}</span><br>'
        f"p = {float(m['confidence']):.3f}</figcaption></figure>"
    )


def _mistakes_section(run: Path) -> str:
    data = _read_json(run / MISTAKES_FILE)
    head = '<h2 id="mistakes">Most confidently misclassified</h2>'
    if data is None:
        return head + '<p class="muted">no mistakes.json (no labelled test or val split)</p>'
    found = data.get("mistakes") or []
    if not found:
        return head + f"<p>no misclassified image in the {html.escape(str(data.get('split')))} split</p>"
    try:
        cards = [_mistake_card(m) for m in found]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return head + _unreadable(
            run / MISTAKES_FILE, f"not the list of mistakes clfkit writes: {type(e).__name__}: {e}"
        )
    checkpoint = html.escape(str(data.get("checkpoint") or "best.pt"))  # older runs: the trainer's best.pt
    return (
        head
        + f"<p>{len(found)} most confident errors of {checkpoint} on the {html.escape(str(data.get('split')))} "
        f'split ({data.get("images")} images), most confident first.</p><div class="grid">'
        + "".join(cards)
        + "</div>"
    )


EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
EVAL_KEYS = ("file", "split", "tta", "checkpoint", "acc", "loss", "images", "data_root", "data")


def _epoch_rows(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows (read_history: a garbage line is skipped with a warning naming it)."""
    return [{k: row[k] for k in EPOCH_KEYS if k in row} for row in read_history(run)]


def _eval_rows(run: Path) -> list[dict[str, Any]]:
    """One row per ``clfkit eval`` result file (eval_<split>[_tta-<mode>].json)."""
    rows = []
    for path in sorted(run.glob("eval_*.json")):
        data = _read_json(path)
        if data is not None:
            rows.append({"file": path.name, **{k: data.get(k) for k in EVAL_KEYS[1:]}})
    return rows


def _per_class_section(run: Path) -> str:
    """per_class.csv as a table; a note when it cannot be read."""
    path = run / "per_class.csv"
    head = '<h2 id="per-class">Per class</h2>'
    if not path.is_file():
        return head + _table([])
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error) as e:
        return head + _unreadable(path, e)
    if any(None in r or None in r.values() for r in rows):  # more (or fewer) cells than columns
        return head + _unreadable(path, "a row does not have one cell per column")
    return head + _table([{k: _cell(k, v) for k, v in r.items()} for r in rows])


def _cell(column: str, value: str) -> Any:
    """A per_class.csv cell as a number where it is one (right-aligned in the table)."""
    try:
        return (
            int(value)
            if column == "support"
            else (float(value) if column not in ("split", "class") and value else value)
        )
    except ValueError:
        return value


def _recipe_text(path: Path) -> str:
    """recipe.yaml as text (a byte that is not UTF-8 shown as U+FFFD), "" when missing."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"# {path.name} cannot be read ({e.strerror})"


def _source_note(run: Path) -> str:
    """What the confusion matrix, per-class table and mistakes were computed on (reports_source.json,
    written with them), marked when that is other data than the summary's and the curves'."""
    src = _read_json(run / REPORTS_SOURCE_FILE)
    if src is None:  # an older run: its report files are the trainer's
        return ""
    other = src.get("data_changed") is True
    text = (
        f"Confusion matrix, per-class table and mistakes: {src.get('checkpoint')} on the {src.get('split')} "
        f"split ({src.get('images')} images) by {src.get('by')}"
        + (f", data from --data-root {src['data_root']}" if src.get("data_root") else "")
        + f"; {src.get('data')}."
        + (
            " The summary and the curves are from training, on the run's own data: the two do not compare."
            if other
            else ""
        )
    )
    return f'<p class="source{" other" if other else ""}">{html.escape(text)}</p>'


def write_run_report(run: str | Path) -> Path:
    """Write ``run/report.html`` from the run folder's files; returns its path."""
    run = Path(run)
    summary = _read_json(run / "summary.json") or {}
    recipe = _recipe_text(run / "recipe.yaml")
    name = summary.get("name") or run.name
    facts = [{"field": k, "value": summary[k]} for k in SUMMARY_KEYS if k in summary]
    sections = [
        f"<h1>{html.escape(str(name))}</h1><p class=muted>{html.escape(str(run))}</p>",
        "<h2>Summary</h2>" + _table(facts) if facts else "<h2>Summary</h2><p class=muted>unfinished run</p>",
        _figure("Curves", run / "curves.png"),
        _source_note(run) + _figure("Confusion matrix", run / "confusion.png"),
        _per_class_section(run),
        _mistakes_section(run),
        cam_section(run),  # clfkit.run.report_insight
        calibration_section(run),
        '<h2 id="evals">clfkit eval results</h2>' + _table(_eval_rows(run), list(EVAL_KEYS)),
        '<h2 id="epochs">Epochs</h2>' + _table(_epoch_rows(run)),
        f"<h2>Recipe</h2><pre>{html.escape(recipe)}</pre>",
    ]
    path = run / REPORT_FILE
    write_text(path, _page(f"clfkit run {name}", sections))
    return path


# --------------------------------------------------------------------------- sweep / tune folders
def run_href(run: str) -> str:
    """The relative link to a run folder's report: the name percent-encoded (UTF-8), so a space,
    ``#``, ``%``, ``?`` or a non-ASCII letter in it is part of the path, not of the URL's syntax."""
    return f"{urllib.parse.quote(run, safe='=,+')}/{REPORT_FILE}"


def write_folder_report(
    folder: str | Path,
    title: str,
    intro: str,
    rows: list[dict[str, Any]],
    figures: list[tuple[str, Path]],
    tables: Iterable[tuple[str, str, list[dict]]] = (),
) -> Path:
    """``folder/report.html`` for a sweep or tune folder: ``intro``, ``tables`` ((title, note,
    rows): a sweep over seeds' comparison), the table of runs ``rows`` and ``figures`` ((title,
    png path), inlined). Runs link to their own reports."""
    folder = Path(folder)
    links = [
        f'<li><a href="{html.escape(run_href(str(r["run"])))}">{html.escape(str(r["run"]))}</a></li>'
        for r in rows
        if r.get("run") and (folder / str(r["run"]) / REPORT_FILE).is_file()
    ]
    sections = [f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    sections += [f"<h2>{html.escape(t)}</h2><p>{html.escape(note)}</p>" + _table(r) for t, note, r in tables]
    sections.append("<h2>Runs</h2>" + _table(rows))
    sections += [_figure(t, p) for t, p in figures]
    if links:
        sections.append("<h2>Run reports</h2><ul>" + "".join(links) + "</ul>")
    path = folder / REPORT_FILE
    write_text(path, _page(title, sections))
    return path


# other pages in this style (clfkit.audit.page: the data check) build on these
html_page = _page
html_table = _table
