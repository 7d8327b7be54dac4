"""Sweeps over seeds (``clfkit sweep ... --seeds N``, or ``seeds: N`` in a sweep block): is a
variant's difference real, or the noise one seed against another makes?

Each variant (a combination of the other axes) runs under N seeds. Per variant, of its finished
runs: best val acc and test acc as mean +- sd (sample sd, n - 1), and the 95% interval of the
mean val acc from the t-distribution (mean +- t(0.975, n - 1) * sd / sqrt(n)).

The verdict compares each variant with the best one (highest mean best val acc, the metric a
sweep ranks by) by Welch's t-test (unequal variances, scipy.stats.ttest_ind(equal_var=False)):
p >= 0.05 is "within noise" of the best, a smaller p "worse than best". One seed gives no
estimate of the noise, so no verdict. Overlapping 95% intervals would be a stricter test (it
misses real differences more often); Welch's test is the usual one for two small samples.

Written into the sweep folder: ``seeds.csv`` / ``seeds.md`` (the table), ``seeds_curves.png``
(per variant the mean val accuracy and loss per epoch, a band of +- 1 sd), and, in report.html,
the table, the curves and the per-class accuracy of the best variant minus the baseline (the
first variant of the plan: the sweep's first value of every axis), each class's mean over seeds.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clfkit.util.atomic import atomic_open, write_bytes, write_text
from clfkit.run.run_folder import RunFolder
from clfkit.run.reader import RunInfo
from clfkit.studies.sweep.plan import SEED_AXIS, Sweep, Trial

ALPHA = 0.05  # Welch's test: p below this is a difference bigger than the seeds' noise
WITHIN_NOISE = "within noise"
ACCURACY = (0.0, 1.0)  # the bounds a mean accuracy's interval is clipped to


def variants(sweep: Sweep, infos: dict[str, RunInfo]) -> list[tuple[str, list[RunInfo]]]:
    """(variant name, its finished runs) in plan order; a variant's name is its run name
    without the seed (``(recipe)`` when the seed is the only axis)."""
    groups: dict[str, list[RunInfo]] = {}
    for t in sweep.trials:
        groups.setdefault(variant_name(sweep, t), [])
        info = infos.get(t.name)
        if info is not None and info.finished:
            groups[variant_name(sweep, t)].append(info)
    return list(groups.items())


def variant_name(sweep: Sweep, trial: Trial) -> str:
    parts = [p for p in trial.name.split(",") if not p.startswith(f"{SEED_AXIS}=")]
    return ",".join(parts) or "(recipe)"


def mean_sd_ci(values: list[float], bounds: tuple[float, float] | None = None) -> dict[str, float | None]:
    """n, mean, sample sd and the 95% t-interval of the mean (None where n is too small). With
    ``bounds`` (an accuracy's 0..1) the interval is clipped to them: a t-interval is symmetric,
    so near 100% it would promise accuracies over 1."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = float(np.mean(values))
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n": n, "mean": mean, "sd": sd, "ci_low": low, "ci_high": high}


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's t-test between ``a`` and ``b``; None with fewer than 2 of either.
    Two samples without spread: 1 when their means are equal, else 0."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    with (
        warnings.catch_warnings()
    ):  # nearly equal accuracies: scipy warns of precision loss, p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def seed_rows(groups: list[tuple[str, list[RunInfo]]]) -> list[dict[str, Any]]:
    """The comparison table: one row per variant, best mean val acc first, with its verdict."""
    stats = []
    for name, runs in groups:
        val = [r.best_val_acc for r in runs if r.best_val_acc is not None]
        test = [r.test_acc for r in runs if r.test_acc is not None]
        stats.append((name, val, mean_sd_ci(val, ACCURACY), mean_sd_ci(test, ACCURACY)))
    ranked = sorted((s for s in stats if s[2]["mean"] is not None), key=lambda s: -s[2]["mean"])
    ranked += [s for s in stats if s[2]["mean"] is None]
    best_val = ranked[0][1] if ranked else []
    rows = []
    for i, (name, val, v, t) in enumerate(ranked):
        p = None if i == 0 else welch_p(val, best_val)
        verdict = (
            "best"
            if i == 0 and v["mean"] is not None
            else "no finished run"
            if v["mean"] is None
            else "one seed: no noise estimate"
            if p is None
            else WITHIN_NOISE
            if p >= ALPHA
            else f"worse than best (p < {ALPHA})"
        )
        rows.append(
            {
                "variant": name,
                "seeds": v["n"],
                "val_acc_mean": v["mean"],
                "val_acc_sd": v["sd"],
                "val_acc_ci95_low": v["ci_low"],
                "val_acc_ci95_high": v["ci_high"],
                "test_acc_mean": t["mean"],
                "test_acc_sd": t["sd"],
                "delta_vs_best": None
                if v["mean"] is None or not best_val
                else v["mean"] - float(np.mean(best_val)),
                "welch_p": p,
                "verdict": verdict,
            }
        )
    return rows


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def seeds_markdown(rows: list[dict[str, Any]], seeds: int) -> str:
    head = (
        f"Variants under {seeds} seeds each: best val acc and test acc as mean ± sd, 95% t-interval of the "
        f"mean val acc; verdict by Welch's t-test against the best variant (p >= {ALPHA}: {WITHIN_NOISE})."
    )
    lines = [
        head,
        "",
        "| variant | seeds | val acc | 95% interval | test acc | Δ val vs best | p | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ci = (
            f"[{r['val_acc_ci95_low']:.4f}, {r['val_acc_ci95_high']:.4f}]"
            if r["val_acc_ci95_low"] is not None
            else "-"
        )
        cells = [
            f"`{r['variant']}`",
            str(r["seeds"]),
            _pm(r["val_acc_mean"], r["val_acc_sd"]),
            ci,
            _pm(r["test_acc_mean"], r["test_acc_sd"]),
            "-" if r["delta_vs_best"] is None else f"{r['delta_vs_best']:+.4f}",
            "-" if r["welch_p"] is None else f"{r['welch_p']:.3f}",
            r["verdict"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def per_class_accuracy(run: RunInfo) -> dict[str, float]:
    """class -> accuracy from a run's per_class.csv ({} when it has none or it cannot be read)."""
    try:
        with RunFolder(run.path).per_class.open(encoding="utf-8", newline="") as f:
            return {r["class"]: float(r["accuracy"]) for r in csv.DictReader(f) if r.get("accuracy")}
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return {}


def class_deltas(groups: list[tuple[str, list[RunInfo]]], best: str) -> tuple[str, list[dict[str, Any]]]:
    """(the note above the table, rows: per class the baseline's and the best variant's mean
    accuracy over seeds and their difference)."""
    by_name = dict(groups)
    baseline = groups[0][0] if groups else None
    if baseline is None or best not in by_name:
        return "no finished variant", []
    if best == baseline:
        return f"the baseline ({baseline}, the plan's first variant) is the best variant: no deltas", []

    def means(runs: list[RunInfo]) -> dict[str, float]:
        tables = [per_class_accuracy(r) for r in runs]
        names = sorted({c for t in tables for c in t})
        return {c: float(np.mean([t[c] for t in tables if c in t])) for c in names}

    base, top = means(by_name[baseline]), means(by_name[best])
    rows = [
        {"class": c, f"baseline ({baseline})": base[c], f"best ({best})": top[c], "delta": top[c] - base[c]}
        for c in top
        if c in base
    ]
    return (
        (
            f"Per-class accuracy (per_class.csv of each run: its test split, or val without one), mean over "
            f"seeds: best variant {best} minus baseline {baseline} (the plan's first variant)."
        ),
        sorted(rows, key=lambda r: r["delta"]),
    )


def plot_seed_curves(groups: list[tuple[str, list[RunInfo]]], path: Path, title: str) -> Path:
    """seeds_curves.png: per variant the mean val accuracy and val loss per epoch over its
    seeds, a band of +- 1 sd."""
    fig = Figure(figsize=(13.0, 4.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    colors = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    with matplotlib.rc_context({"text.parse_math": False}):
        for k, (name, runs) in enumerate(groups):
            for ax, key in zip(axes, ("val_acc", "val_loss")):
                by_epoch: dict[int, list[float]] = {}
                for r in runs:
                    for row in r.history:
                        if row.get(key) is not None:
                            by_epoch.setdefault(row["epoch"], []).append(row[key])
                if not by_epoch:
                    continue
                x = sorted(by_epoch)
                m = np.array([np.mean(by_epoch[e]) for e in x])
                sd = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in x])
                ax.plot(x, m, "-o", ms=3, color=colors(k % colors.N), label=f"{name} ({len(runs)} seeds)")
                ax.fill_between(x, m - sd, m + sd, color=colors(k % colors.N), alpha=0.2)
        for ax, label in zip(axes, ("val accuracy", "val loss")):
            ax.set(xlabel="epoch", ylabel=f"{label}, mean ± sd over seeds")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(title, fontsize=11)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    write_bytes(path, buf.getvalue())
    return path


def write_seed_files(
    sweep: Sweep, infos: dict[str, RunInfo]
) -> tuple[list[Path], list[tuple[str, str, list]]]:
    """seeds.csv, seeds.md and seeds_curves.png; returns (files, report.html's tables as
    (title, note, rows))."""
    groups = variants(sweep, infos)
    rows = seed_rows(groups)
    cols = list(rows[0]) if rows else ["variant"]
    with atomic_open(sweep.out / "seeds.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: ("" if v is None else round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
            )
    md = seeds_markdown(rows, sweep.seeds)
    write_text(sweep.out / "seeds.md", md)
    curves = plot_seed_curves(
        groups,
        sweep.out / "seeds_curves.png",
        f"{sweep.recipe_path.name}: {len(groups)} variant(s) x {sweep.seeds} seeds",
    )
    best = rows[0]["variant"] if rows and rows[0]["val_acc_mean"] is not None else ""
    note, deltas = class_deltas(groups, best)
    tables = [
        ("Variants over seeds", md.splitlines()[0], rows),
        ("Per-class: best variant - baseline", note, deltas),
    ]
    return [sweep.out / "seeds.csv", sweep.out / "seeds.md", curves], tables
