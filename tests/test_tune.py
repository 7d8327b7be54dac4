"""clfkit tune: a 6-trial Optuna study on tiny data, with pruning, continued when re-run."""

from __future__ import annotations

import pytest
import yaml

from conftest import tiny_recipe

optuna = pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    # 8 px images and an 8/16-channel CNN: the study's behaviour (pruning, tables, re-runs) is the
    # test, not the accuracy; seed 0 still prunes 4 of the 6 trials
    data = tiny_recipe(
        train__epochs=4,
        train__batch_size=32,
        data__image_size=8,
        model__blocks=[{"channels": 8, "pool": "max"}, {"channels": 16, "pool": "max"}],
    ).to_dict()
    data["data"]["source"].update(train_size=128, val_size=64, test_size=32)
    path = tmp_path_factory.mktemp("tune") / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# lr from useless to fine: some trials fall behind early and are pruned
SPACES = ["optim.lr=loguniform(1e-5,1e-2)", "model.dropout=uniform(0,0.5)", "train.batch_size=choice(16,32)"]


@pytest.fixture(scope="module")
def tuned(recipe_file):
    from clfkit.studies.tune import plan_tune, run_tune

    out = recipe_file.parent / "tune"
    setup = plan_tune(recipe_file, SPACES, trials=6, out=out, pruner="halving")
    return setup, run_tune(setup, log=lambda s: None)


def test_six_trials_with_pruning(tuned):
    setup, res = tuned
    assert len(res.rows) == 6
    states = [r["state"] for r in res.rows]
    assert set(states) <= {"complete", "pruned"} and "complete" in states
    assert res.pruned >= 1, states
    pruned = [r for r in res.rows if r["state"] == "pruned"]
    assert all(r["epochs_run"] < 4 for r in pruned)  # pruned trials stopped early
    assert all(r["epochs_run"] == 4 for r in res.rows if r["state"] == "complete")
    for name in (
        "trials.csv",
        "trials.md",
        "best.yaml",
        "history.png",
        "importance.png",
        "report.html",
        "study.db",
    ):
        assert (res.out / name).is_file(), name
    md = (res.out / "trials.md").read_text()
    assert f"{res.pruned} pruned" in md and "optim.lr" in md
    assert "data:image/png;base64," in (res.out / "report.html").read_text()


def test_best_yaml_trains(tuned, tmp_path):
    from clfkit.recipe import load_recipe
    from clfkit.train.trainer import train

    setup, res = tuned
    recipe = load_recipe(res.out / "best.yaml", ["train.epochs=1"])
    assert recipe.optim.get("lr") == pytest.approx(res.rows[res.best["trial"]]["optim.lr"])
    assert train(recipe, tmp_path, quiet=True).summary["best_val_acc"] is not None


def test_rerun_continues_the_study(tuned):
    from clfkit.studies.tune import plan_tune, run_tune

    setup, res = tuned
    again = plan_tune(setup.recipe_path, SPACES, trials=6, out=setup.out, pruner="halving")
    lines = []
    assert len(run_tune(again, log=lines.append).rows) == 6  # nothing left to do
    assert "6 of 6 trial(s) already done" in lines[0]
    more = plan_tune(setup.recipe_path, SPACES, trials=7, out=setup.out, pruner="halving")
    rows = run_tune(more, log=lambda s: None).rows
    assert [r["trial"] for r in rows] == list(range(7)) and rows[:6] == res.rows[:6]


def test_another_space_in_the_same_folder_is_refused(tuned):
    from clfkit.studies.tune import TuneError, plan_tune, run_tune

    setup, _ = tuned
    other = plan_tune(setup.recipe_path, SPACES[:1], trials=6, out=setup.out)
    with pytest.raises(TuneError, match="searched"):
        run_tune(other, log=lambda s: None)


@pytest.mark.parametrize(
    "space, message",
    [
        ("optim.lrr=loguniform(1e-4,1e-1)", "did you mean 'lr'"),
        ("train.epocs=int(1,3)", "did you mean 'epochs'"),
        ("train.batch_size=choice(64,abc)", "batch_size"),
        ("model.dropout=uniform(0,1.5)", "dropout"),
        ("optim.lr=loguniform(0,1)", "low > 0"),
        ("optim.lr=uniform(1)", "takes 2 values"),
        ("optim.lr=normal(0,1)", "must be one of"),
        ("optim lr=uniform(0,1)", "dotted.path"),
    ],
)
def test_space_is_validated_like_set(recipe_file, tmp_path, space, message):
    from clfkit.errors import ClfkitError
    from clfkit.studies.tune import plan_tune

    with pytest.raises(ClfkitError, match=message):
        plan_tune(recipe_file, [space], trials=2, out=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_cli_tune(recipe_file, tmp_path):
    from click.testing import CliRunner

    from clfkit.cli import cli

    res = CliRunner().invoke(
        cli,
        [
            "tune",
            str(recipe_file),
            "--trials",
            "2",
            "--space",
            SPACES[0],
            "--set",
            "train.epochs=1",
            "--out",
            str(tmp_path / "t"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "best: trial" in res.output and "best.yaml" in res.output


def test_jobs_run_trials_in_worker_processes_on_one_study(recipe_file, tmp_path):
    """--jobs 2: two spawned workers share the SQLite study; every trial is in the table with
    its own run folder, and a re-run with --jobs finds the study done."""
    from clfkit.studies.tune import plan_tune, run_tune

    out = tmp_path / "tune-jobs"
    setup = plan_tune(recipe_file, SPACES[:1], trials=3, out=out, pruner="none", overrides=["train.epochs=1"])
    res = run_tune(setup, jobs=2, log=lambda s: None)
    trials = [r["trial"] for r in res.rows]
    assert 3 <= len(trials) <= 4 and len(set(trials)) == len(trials)  # up to jobs-1 over --trials
    assert all(r["state"] == "complete" for r in res.rows)
    assert {p.name for p in (out / "trials").iterdir()} == {f"trial-{t:03d}" for t in trials}
    lrs = [r["optim.lr"] for r in res.rows]
    assert len(set(lrs)) == len(lrs)  # the workers' samplers have their own seeds
    lines = []
    again = run_tune(
        plan_tune(recipe_file, SPACES[:1], trials=3, out=out, pruner="none", overrides=["train.epochs=1"]),
        jobs=2,
        log=lines.append,
    )
    assert [r["trial"] for r in again.rows] == trials
    assert any("already done" in line for line in lines)
