"""A data check's outputs: the console table, data_check.json and leaked_files.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from clfkit.util.atomic import WriteError, atomic_open, write_json
from clfkit.audit.check import DataCheck, leaked_files, summary_rows
from clfkit.audit.page import write_page

JSON_NAME, HTML_NAME, CSV_NAME = "data_check.json", "data_check.html", "leaked_files.csv"


def to_json(check: DataCheck) -> dict[str, Any]:
    return {
        "root": check.shown_root,
        "settings": check.settings,
        "seconds": check.seconds,
        "notes": check.notes,
        "counts": {r["finding"]: r["count"] for r in summary_rows(check)},
        "overview": check.overview,
        "findings": [f.to_dict(check.catalog) for f in check.findings],
    }


def write_outputs(check: DataCheck, out: Path, fix_split: bool) -> list[Path]:
    """data_check.json, data_check.html and (``fix_split``) leaked_files.csv in ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write to --out {out}: {e.strerror or e}") from None
    write_json(out / JSON_NAME, to_json(check))
    files = [out / JSON_NAME, write_page(check, out / HTML_NAME)]
    if fix_split:
        rows = leaked_files(check)
        with atomic_open(out / CSV_NAME, "w") as f:
            w = csv.DictWriter(f, ["split", "path", "finding", "copy_of", "score"], lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        files.append(out / CSV_NAME)
    return files


def console_report(check: DataCheck, width: int = 120) -> str:
    """The console table: one line per kind of finding, then the overview."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"data check of {escape(check.shown_root)}", title_justify="left")
    for col in ("finding", "count", "files", "most certain", "meaning"):
        table.add_column(
            col,
            justify="right" if col in ("count", "files") else "left",
            overflow="fold",
            max_width=48 if col == "most certain" else None,
        )
    for r in summary_rows(check):
        table.add_row(*(escape(str(r[c])) for c in ("finding", "count", "files", "most certain", "meaning")))
    buf = io.StringIO()
    console = Console(file=buf, width=width, highlight=False, soft_wrap=False)
    console.print(table)
    ov = check.overview
    lines = [
        f"images: {', '.join(f'{s} {n}' for s, n in ov['images'].items())}; sizes: "
        f"{', '.join(f'{k} ({v})' for k, v in list(ov['sizes'].items())[:3])}"
        f"{' ...' if ov['distinct_sizes'] > 3 else ''}; modes: {', '.join(f'{k} ({v})' for k, v in ov['modes'].items())}"
    ]
    for split, counts in ov["class_counts"].items():
        lines.append(f"{split} classes: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    lines += [f"imbalance in {s}: {note}" for s, note in ov["imbalance"].items()]
    lines += [f"skipped: {p}: {why}" for p, why in ov["skipped"][:10]]
    lines += (
        [f"... {len(ov['skipped']) - 10} more skipped (data_check.json)"] if len(ov["skipped"]) > 10 else []
    )
    lines += [f"note: {n}" for n in check.notes]
    return buf.getvalue() + "\n".join(lines) + "\n"  # paths come escaped (Catalog.file)
