"""data_check.html: a data check as one self-contained page in report.html's style.

Every pair and every suspect is shown with thumbnails (made from the files, inlined as
base64 JPEG), most certain first, up to ``MAX_SHOWN`` per kind (data_check.json lists all).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from clfkit.data import image_files
from clfkit.util.atomic import write_text
from clfkit.audit.check import MEANING, DataCheck, summary_rows
from clfkit.data.audit.findings import KINDS, Finding
from clfkit.run.report_page import html_page, html_table

THUMB = 96
MAX_SHOWN = 500
_EXTRA_STYLE = (
    "<style>.pair{display:flex;gap:.6em;align-items:flex-start;border:1px solid #eee;padding:.4em;"
    "margin:.4em 0}.pair figure{margin:0;width:120px;font-size:.75em;text-align:center;"
    "word-break:break-all}.pair img,.grid img{width:96px;height:96px;object-fit:contain;"
    "border:2px solid #c93}.pair .why{font-size:.85em;align-self:center}</style>"
)


def thumbnail(path: Path) -> Optional[str]:
    """A data URI of the image at ``path``, its longer side THUMB px; None when unreadable."""
    try:
        img = image_files.open_image(path)
        img = image_files.to_mode(ImageOps.exif_transpose(img), 3)
        img.thumbnail((THUMB, THUMB), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)  # a fifth of a PNG's size: pages of 500+ thumbnails
    except Exception:  # the file changed or went since the check read it: shown as missing
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(check: DataCheck, row: int) -> str:
    f = check.catalog.file(row)
    where = html.escape(f"{f['path']}")
    uri = thumbnail(check.root / check.catalog.path[row])
    img = (
        f'<img alt="{where}" title="{where}" src="{uri}">' if uri else '<p class="muted">(unreadable now)</p>'
    )
    label = f"<br>{html.escape(f['label'])}" if f["label"] else ""
    return f"<figure>{img}<figcaption>{where}{label}</figcaption></figure>"


def _card(check: DataCheck, f: Finding) -> str:
    figures = "".join(_figure(check, r) for r in f.rows[:8])
    more = f'<span class="muted">+{len(f.rows) - 8} more</span>' if len(f.rows) > 8 else ""
    return (
        f'<div class="pair">{figures}{more}<div class="why">{html.escape(f.detail)}<br>'
        f'<span class="muted">score {f.score:.3f}</span></div></div>'
    )


def _section(check: DataCheck, kind: str) -> str:
    found = [f for f in check.findings if f.kind == kind]
    head = f'<h2 id="{kind}">{kind.replace("_", " ")} ({len(found)})</h2><p class="muted">{html.escape(MEANING[kind])}</p>'
    if not found:
        return head + '<p class="muted">none</p>'
    shown = "".join(_card(check, f) for f in found[:MAX_SHOWN])
    more = (
        f'<p class="muted">the first {MAX_SHOWN} of {len(found)}; data_check.json lists all</p>'
        if len(found) > MAX_SHOWN
        else ""
    )
    return head + shown + more


def _overview(check: DataCheck) -> str:
    ov = check.overview
    classes = list(next(iter(ov["class_counts"].values()), {}))
    rows = [
        {"class": c, **{s: counts.get(c, 0) for s, counts in ov["class_counts"].items()}} for c in classes
    ]
    sizes = [{"size": k, "images": v} for k, v in ov["sizes"].items()]
    modes = [{"mode": k, "images": v} for k, v in ov["modes"].items()]
    skipped = [{"file": p, "why": w} for p, w in ov["skipped"]]
    notes = "".join(f'<p class="muted">{html.escape(n)}</p>' for n in check.notes)
    imbalance = "".join(
        f"<p>imbalance in {html.escape(s)}: {html.escape(n)}</p>" for s, n in ov["imbalance"].items()
    )
    return (
        "<h2 id=overview>Classes, sizes, modes, skipped files</h2>"
        + html_table(rows)
        + imbalance
        + f"<p>{ov['distinct_sizes']} distinct sizes</p>"
        + html_table(sizes)
        + html_table(modes)
        + "<h3>skipped</h3>"
        + html_table(skipped)
        + notes
    )


def write_page(check: DataCheck, path: Path) -> Path:
    """Write the page to ``path`` (atomically) and return it."""
    summary = [{k: r[k] for k in ("finding", "count", "files", "meaning")} for r in summary_rows(check)]
    settings = ", ".join(f"{k} {v}" for k, v in check.settings.items())
    intro = (
        f"<h1>Data check</h1><p>{html.escape(check.shown_root)}</p>"
        f'<p class="muted">{html.escape(settings)}; seconds: {html.escape(str(check.seconds))}</p>'
    )
    sections = [_EXTRA_STYLE, intro, html_table(summary), _overview(check)]
    sections += [_section(check, kind) for kind in KINDS]
    write_text(path, html_page(f"data check: {check.shown_root}", sections))
    return path
