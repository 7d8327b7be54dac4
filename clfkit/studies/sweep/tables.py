"""A sweep's tables (sweep.csv/md, sweep.json), its compare.png and report.html."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from clfkit.util.atomic import atomic_open, write_json, write_text
from clfkit.run.report_page import write_folder_report
from clfkit.run.reader import RunInfo, is_run, rank, read_run
from clfkit.studies.sweep.plan import Sweep, Trial, short_names
from clfkit.studies.sweep.seeds import write_seed_files


# --------------------------------------------------------------------------- tables
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ranked_runs(sweep: Sweep) -> list[tuple[Trial, Optional[RunInfo]]]:
    """Every trial with its run folder read back (None before it has one): finished runs by
    best val acc first, then the others in plan order."""
    infos = {
        t.name: read_run(t.run_dir, label=t.name.replace(",", ", "))
        for t in sweep.trials
        if is_run(t.run_dir)
    }
    finished = rank(
        [infos[t.name] for t in sweep.trials if t.name in infos and infos[t.name].finished], "val_acc"
    )
    first = {r.path.name for r in finished}
    by_name = {t.name: t for t in sweep.trials}
    return [(by_name[r.path.name], r) for r in finished] + [
        (t, infos.get(t.name)) for t in sweep.trials if t.name not in first
    ]


def _row(sweep: Sweep, i: int, t: Trial, info: Optional[RunInfo]) -> dict[str, Any]:
    done = info is not None and info.finished
    row: dict[str, Any] = {"rank": i if done else None, "run": t.name}
    row.update({a.key: t.values[a.key] for a in sweep.axes})
    row.update(
        {
            "best_val_acc": info.best_val_acc if info else None,
            "best_epoch": info.best_epoch if info else None,
            "train_acc": info.train_acc_at_best if info else None,
            "test_acc": info.test_acc if info else None,
            "epochs_run": len(info.history) if info else 0,
            "wall_seconds": round(info.wall_seconds, 1) if info and info.wall_seconds is not None else None,
            "status": "done" if done else (t.status if t.status == "failed" else "unfinished"),
        }
    )
    if t.status == "failed" and t.error:
        row["status"] = "failed: " + t.error.splitlines()[0][:200]
    return row


def write_tables(sweep: Sweep, top: int = 10) -> list[Path]:
    """sweep.csv, sweep.md and compare.png (top runs) in the sweep folder."""
    from clfkit.run.plots import plot_compare

    ranked = _ranked_runs(sweep)  # each run folder read once, for the tables and the figure
    rows = [_row(sweep, i, t, info) for i, (t, info) in enumerate(ranked, 1)]
    cols = list(rows[0]) if rows else []
    with atomic_open(sweep.out / "sweep.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: (round(v, 6) if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()}
            )
    short = short_names(sweep.axes)
    head = (
        ["#", "run"]
        + [short[a.key] for a in sweep.axes]
        + ["best val acc", "epoch", "train acc", "test acc", "epochs", "wall s", "status"]
    )
    lines = [
        f"Sweep of `{sweep.recipe_path}`: {len(rows)} run(s), ranked by best val acc; train and test "
        f"acc are those of the best-val epoch (the test uses best.pt).",
        "",
        "| " + " | ".join(head) + " |",
        "|"
        + "|".join("---:" if 2 + len(sweep.axes) <= i < len(head) - 1 else "---" for i in range(len(head)))
        + "|",
    ]
    for r in rows:
        cells = (
            [_fmt(r["rank"]), f"`{r['run']}`"]
            + [str(r[a.key]) for a in sweep.axes]
            + [
                _fmt(r["best_val_acc"]),
                _fmt(r["best_epoch"]),
                _fmt(r["train_acc"]),
                _fmt(r["test_acc"]),
                _fmt(r["epochs_run"]),
                _fmt(r["wall_seconds"], 1),
                r["status"],
            ]
        )
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    write_text(sweep.out / "sweep.md", "\n".join(lines) + "\n")
    files = [sweep.out / "sweep.csv", sweep.out / "sweep.md"]
    finished = [info for _, info in ranked if info is not None and info.finished]
    sweep.removed = remove_stale(sweep, bool(finished))
    if finished:
        files.append(
            plot_compare(
                finished[:top],
                sweep.out / "compare.png",
                title=f"{sweep.recipe_path.name}: top {min(top, len(finished))} of "
                f"{len(rows)} runs by best val acc",
            )
        )
    figures, tables = [("Top runs", sweep.out / "compare.png")], []
    if sweep.seeds > 1:  # mean +- sd per variant, its verdict, curves with bands (clfkit.studies.sweep.seeds)
        seed_files, tables = write_seed_files(sweep, {t.name: info for t, info in ranked if info is not None})
        files += seed_files
        figures.insert(0, ("Mean curves over seeds (band: ± 1 sd)", sweep.out / "seeds_curves.png"))
    files.append(
        write_folder_report(
            sweep.out, f"sweep {sweep.out.name}", lines[0].replace("`", ""), rows, figures, tables
        )
    )  # report.html
    sweep.written = files
    return files


SEED_FILES = ("seeds.csv", "seeds.md", "seeds_curves.png")


def remove_stale(sweep: Sweep, any_finished: bool) -> list[Path]:
    """Remove what an earlier run of this sweep folder wrote that this one would not rewrite:
    the seed comparison of a sweep that had --seeds (now without), compare.png when no run has
    finished. Left there, they would read as this sweep's results; each is rebuilt from the run
    folders by running the sweep with those settings again. Returns the removed files."""
    stale = [sweep.out / n for n in SEED_FILES] if sweep.seeds <= 1 else []
    stale += [] if any_finished else [sweep.out / "compare.png"]
    removed = []
    for path in stale:
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def write_manifest(sweep: Sweep) -> None:
    write_json(
        sweep.out / "sweep.json",
        {
            "recipe": str(sweep.recipe_path),
            "axes": [
                {"key": a.key, "options": [{"label": lbl, "overrides": o} for lbl, o in a.options]}
                for a in sweep.axes
            ],
            "runs": [{"name": t.name, "values": t.values, "overrides": t.overrides} for t in sweep.trials],
        },
    )
