"""clfkit tune --sampler (tpe | grid | random) and where pruning starts."""

from __future__ import annotations

import pytest
import yaml

from conftest import refused, tiny_recipe

optuna = pytest.importorskip("optuna")

GRID = ["optim.lr=choice(1e-3,3e-2)", "model.dropout=choice(0,0.3)"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    data = tiny_recipe(
        train__epochs=2,
        train__batch_size=32,
        data__image_size=8,
        model__blocks=[{"channels": 8, "pool": "max"}],
    ).to_dict()
    data["data"]["source"].update(train_size=96, val_size=32, test_size=16)
    path = tmp_path_factory.mktemp("tune_sampler") / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("epochs, start", [(1, 1), (2, 1), (4, 1), (5, 2), (6, 2), (9, 3), (30, 10)])
def test_pruning_starts_at_a_third_of_the_epochs(epochs, start):
    from clfkit.studies.tune import pruning_start

    assert pruning_start(epochs) == start


def test_pruners_are_scaled_to_the_run(recipe_file, tmp_path):
    from clfkit.studies.tune import make_pruner, plan_tune

    setup = plan_tune(recipe_file, GRID, trials=None, overrides=["train.epochs=9"], out=tmp_path / "t")
    assert setup.epochs == 9 and setup.pruner == "quartile"
    quartile = make_pruner(setup)
    assert type(quartile).__name__ == "PercentilePruner" and quartile._n_warmup_steps == 3
    assert (
        quartile._percentile == 75.0
    )  # Optuna keeps the top 75% of a maximized value: prunes the bottom quarter
    setup.pruner = "median"
    assert make_pruner(setup)._n_warmup_steps == 3
    setup.pruner = "halving"
    assert make_pruner(setup)._min_resource == 3
    setup.prune_from = 1  # --prune-from
    assert make_pruner(setup)._min_resource == 1
    # a searched train.epochs: the longest run sets the scale
    longest = plan_tune(recipe_file, GRID + ["train.epochs=choice(3,12)"], trials=None, out=tmp_path / "u")
    assert longest.epochs == 12


def test_quartile_prunes_only_the_bottom_quarter():
    from types import SimpleNamespace

    from clfkit.studies.tune import make_pruner

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = make_pruner(SimpleNamespace(pruner="quartile", epochs=3, prune_from=1))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for acc in (0.2, 0.4, 0.6, 0.8):  # four finished trials: their 25th percentile at epoch 1 is 0.35
        trial = study.ask()
        trial.report(acc, 1)
        study.tell(trial, acc)
    decisions = {}
    for acc in (0.3, 0.38, 0.5):
        trial = study.ask()
        trial.report(acc, 1)
        decisions[acc] = trial.should_prune()
        study.tell(trial, acc)
    assert decisions == {0.3: True, 0.38: False, 0.5: False}  # the median (0.5) rule would also stop 0.38


def test_tpe_random_start_is_a_third_of_the_trials(recipe_file, tmp_path):
    from clfkit.studies.tune import make_sampler, plan_tune

    for trials, startup in ((3, 2), (12, 4), (60, 10)):
        setup = plan_tune(recipe_file, GRID, trials=trials, out=tmp_path / "t")
        assert make_sampler(setup, 0)._n_startup_trials == startup


def test_grid_walks_every_combination_once_and_a_stopped_point_runs_again(recipe_file, tmp_path):
    from clfkit.recipe import validate_recipe
    from clfkit.train.trainer import train
    from clfkit.studies.tune import open_study, plan_tune, run_tune, trial_recipe

    def plan(trials):
        return plan_tune(
            recipe_file,
            GRID,
            trials=trials,
            overrides=["train.epochs=1"],
            out=tmp_path / "t",
            pruner="none",
            sampler="grid",
        )

    assert plan(None).trials == 4
    first = run_tune(plan(2), log=lambda s: None).rows
    assert len(first) == 2
    # a third point as a Ctrl-C or a crash leaves it: started, values drawn, still RUNNING
    study = open_study(plan(None))
    done = {(r["optim.lr"], r["model.dropout"]) for r in first}
    lr, dropout = next(p for p in [(1e-3, 0), (1e-3, 0.3), (3e-2, 0), (3e-2, 0.3)] if p not in done)
    study.enqueue_trial({"optim.lr": lr, "model.dropout": dropout})
    stopped = study.ask()
    stopped.suggest_categorical("optim.lr", [1e-3, 3e-2])
    stopped.suggest_categorical("model.dropout", [0, 0.3])
    lines = []
    rows = run_tune(plan(None), log=lines.append).rows
    assert "2 of 4 trial(s) already done" in lines[0]
    points = [(r["optim.lr"], r["model.dropout"]) for r in rows if r["state"] == "complete"]
    assert sorted(points) == [
        (1e-3, 0),
        (1e-3, 0.3),
        (3e-2, 0),
        (3e-2, 0.3),
    ]  # each once, the stopped one too
    assert [r["state"] for r in rows].count("stopped") == 1 and len(rows) == 5
    # a trial is the plain run of its values: the same seed, the same accuracy
    row = rows[0]
    params = {"optim.lr": row["optim.lr"], "model.dropout": row["model.dropout"]}
    plain = train(validate_recipe(trial_recipe(plan(None), params, "plain")), tmp_path / "plain", quiet=True)
    assert plain.summary["best_val_acc"] == row["best_val_acc"]
    lines = []
    assert len(run_tune(plan(None), log=lines.append).rows) == 5
    assert "4 of 4 trial(s) already done" in lines[0]


def test_a_grid_point_that_fails_is_not_retried(recipe_file, tmp_path):
    from clfkit.studies.tune import plan_tune, run_tune

    space = ["init=choice(null,no_such_run)", "model.dropout=choice(0)"]  # a missing init: the run fails
    setup = plan_tune(
        recipe_file, space, trials=None, overrides=["train.epochs=1"], out=tmp_path / "t", sampler="grid"
    )
    rows = run_tune(setup, log=lambda s: None).rows
    assert sorted(r["state"].split(":")[0] for r in rows) == ["complete", "fail"]
    lines = []
    assert len(run_tune(setup, log=lines.append).rows) == 2
    assert "2 of 2 trial(s) already done" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "grid", "--space", "optim.lr=loguniform(1e-4,1e-1)"], "is a range"),
        (
            ["--sampler", "grid", "--trials", "5", *[a for s in GRID for a in ("--space", s)]],
            "has 4 combination",
        ),
        (["--prune-from", "3", "--space", GRID[0]], "--prune-from 3: a trial runs 2 epoch(s); give 1 to 2"),
    ],
)
def test_bad_sampler_use_is_refused(recipe_file, tmp_path, args, message):
    out = tmp_path / "t"
    refused([message], "tune", recipe_file, "--out", out, "--quiet", *args)
    assert not out.exists()


def test_unknown_sampler_names_the_choices(recipe_file, tmp_path):
    from clfkit.studies.tune import TuneError, plan_tune

    with pytest.raises(TuneError, match="'sobol': choose one of tpe, grid, random"):
        plan_tune(recipe_file, GRID, trials=None, out=tmp_path / "t", sampler="sobol")


def test_a_study_keeps_its_sampler(recipe_file, tmp_path):
    from clfkit.studies.tune import TuneError, plan_tune, run_tune

    out = tmp_path / "t"
    run_tune(
        plan_tune(recipe_file, GRID, trials=1, overrides=["train.epochs=1"], out=out, sampler="random"),
        log=lambda s: None,
    )
    with pytest.raises(TuneError, match="--sampler random, not grid"):
        run_tune(
            plan_tune(recipe_file, GRID, trials=2, overrides=["train.epochs=1"], out=out, sampler="grid"),
            log=lambda s: None,
        )
