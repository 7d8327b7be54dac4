"""clfkit tune's study (clfkit.studies.tune): a continued grid runs no more than asked, choice
values optuna cannot tell apart or store are refused, an unreadable or foreign study.db, a study
continued under another recipe or --set, odd folder names, the seed range, one tune per folder.
No trial trains in most of them: the study is driven directly.
"""

from __future__ import annotations

import pytest

from conftest import refused, tiny_recipe, tiny_recipe_file
from conftest import invoke
import csv
from pathlib import Path
import yaml

optuna = pytest.importorskip("optuna")

LR4 = ["optim.lr=choice(0.001,0.002,0.003,0.004)"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    return tiny_recipe_file(tmp_path_factory.mktemp("rt18"), train__epochs=1, data__image_size=8)


def _states(study):
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_a_continued_grid_with_fewer_trials_runs_no_more_than_asked(recipe_file, tmp_path):
    """A Ctrl-C'd grid of 4 left 4 points queued; continuing with --trials 2 ran all of them
    (3 trials for --trials 2). The queue is now cut back to what --trials asks."""
    from clfkit.studies.tune import plan_tune
    from clfkit.studies.tune.results import trial_rows, write_results
    from clfkit.studies.tune.study import open_study, queue_grid, queued

    def plan(trials):
        return plan_tune(recipe_file, LR4, trials=trials, out=tmp_path / "t", sampler="grid")

    (tmp_path / "t").mkdir()
    study = open_study(plan(None))
    assert queue_grid(study, plan(None)) == 4 and queued(study) == 4
    # the first point was stopped by Ctrl-C (a FAIL without an error: it runs again)
    first = study.ask()
    plan(None).dims[0].suggest(first)  # the trial takes its queued value, as a real one does
    stopped_lr = study.get_trials()[0].system_attrs["fixed_params"]["optim.lr"]
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    setup = plan(2)
    assert queue_grid(open_study(setup), setup) == 2
    waiting = [
        t.system_attrs["fixed_params"]["optim.lr"]
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    ]
    assert len(waiting) == 2 and stopped_lr in waiting  # the stopped point runs again, first in line
    assert _states(study).count("WAITING") == 2
    rows = trial_rows(study, setup.dims)
    assert [r["state"] for r in rows] == ["stopped"]  # withdrawn points are no rows; Ctrl-C is not "fail"
    setup.pruner = "none"
    write_results(setup, log=lambda s: None)
    assert (tmp_path / "t" / "trials.csv").read_text().splitlines()[1:] == [
        f"0,trials/trial-000,{stopped_lr},,0,,stopped"
    ]
    report = (tmp_path / "t" / "report.html").read_text()
    assert (
        "no pruning" in report and "none pruner" not in report and not (tmp_path / "t" / "best.yaml").exists()
    )
    # back to the whole grid: the withdrawn points are queued again, nothing twice
    setup = plan(None)
    assert queue_grid(open_study(setup), setup) == 4 and queued(study) == 4


@pytest.mark.parametrize(
    "space, words",
    [
        ("model.dropout=choice(0,0.0)", ["0 and 0.0", "same value"]),
        ("train.channels_last=choice(true,1)", ["True and 1", "same value"]),
        (
            "model.blocks=choice([{channels: 4}],[{channels: 8}])",
            ["numbers, strings", "[{'channels': 4}]", "sweep"],
        ),
        ("optim.lr=choice(0.1,)", ["empty value", "choice(v1,v2,...)"]),
        ("optim.lr=choice()", ["empty value"]),
    ],
)
def test_choice_values_optuna_cannot_tell_apart_or_store_are_refused(recipe_file, tmp_path, space, words):
    """0 and 0.0 both ran as 0 (Optuna stores a choice as the index of the first == value);
    a list choice trained, then the plots died with a traceback (unhashable list)."""
    refused(
        ["--space", *words],
        "tune",
        recipe_file,
        "--sampler",
        "grid",
        "--space",
        space,
        "--out",
        tmp_path / "t",
    )
    assert not (tmp_path / "t").exists()


def test_a_quoted_choice_value_keeps_its_comma(recipe_file, tmp_path):
    from clfkit.studies.sweep.plan import split_top_level
    from clfkit.studies.tune import plan_tune

    assert split_top_level('"a,b", b') == ['"a,b"', "b"]
    assert split_top_level("it's,b") == ["it's", "b"]
    assert split_top_level("'it''s,x', [1,'y,z'], {a: 'p,q'}") == ["'it''s,x'", "[1,'y,z']", "{a: 'p,q'}"]
    setup = plan_tune(recipe_file, ['name=choice("a,b", c)'], trials=None, out=tmp_path / "t", sampler="grid")
    assert setup.dims[0].args == ["a,b", "c"]


@pytest.mark.parametrize("content", [b"garbage\n", b"SQLite format 3\x00" + b"\x00" * 200])
def test_an_unreadable_study_db_is_a_clear_error(recipe_file, tmp_path, content):
    out = tmp_path / "t"
    out.mkdir()
    (out / "study.db").write_bytes(content)
    refused(
        [str(out / "study.db"), "not a readable Optuna study", "--out"],
        "tune",
        recipe_file,
        "--sampler",
        "grid",
        "--space",
        LR4[0],
        "--out",
        out,
        max_lines=2,
    )
    assert (out / "study.db").read_bytes() == content
    assert sorted(p.name for p in out.iterdir()) == ["study.db"]


def test_tune_out_into_a_run_folder_is_refused_and_leaves_it_alone(recipe_file, tmp_path):
    """--out runs/fold (a training run) wrote study.db, trials/, best.yaml there and replaced
    the run's own report.html."""
    run = tmp_path / "fold"
    run.mkdir()
    (run / "report.html").write_text("the run's report")
    (run / "recipe.yaml").write_text("name: fold\n")
    refused(
        ["--out", str(run), "not a tune folder", "recipe.yaml, report.html"],
        "tune",
        recipe_file,
        "--sampler",
        "grid",
        "--space",
        LR4[0],
        "--out",
        run,
        max_lines=2,
    )
    assert sorted(p.name for p in run.iterdir()) == ["recipe.yaml", "report.html"]
    assert (run / "report.html").read_text() == "the run's report"


def test_a_second_tune_on_the_same_folder_is_refused_while_the_first_runs(recipe_file, tmp_path):
    """The same command started twice: the second marked the first's running trial failed,
    and the first died with a traceback (ValueError: Cannot tell a FAIL trial)."""
    import subprocess
    import sys

    out = tmp_path / "t"
    out.mkdir()
    holder = (
        "import fcntl, json, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'pid': os.getpid(), 'command': 'clfkit tune first'}).encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", holder, str(out / ".clfkit.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "locked"
        refused(
            [
                f"cannot tune into {out}",
                "another clfkit tune is running there",
                "clfkit tune first",
                "run the same command again",
            ],
            "tune",
            recipe_file,
            "--sampler",
            "grid",
            "--space",
            LR4[0],
            "--out",
            out,
            max_lines=2,
        )
    finally:
        first.kill()
        first.wait()
    assert not (out / "study.db").exists()


ODD_NAMES = ["a?b", "50%41", "n#1", "sp ace ü"]


# --------------------------------------------------------------------------- odd folder names
@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_study_db_is_in_a_tune_folder_with_an_odd_name(recipe_file, tmp_path, name):
    """--out 't?x' kept study.db in a file named 't' beside it (SQLAlchemy read '?x' as URL
    options), so 't?y' continued the same study; '50%41' opened '50A' and was refused as
    'not a readable Optuna study'."""
    pytest.importorskip("optuna")
    from clfkit.studies.tune import plan_tune
    from clfkit.studies.tune.study import open_study

    out = tmp_path / name
    out.mkdir()
    open_study(plan_tune(recipe_file, ["optim.lr=choice(0.1,0.01)"], trials=None, out=out, sampler="grid"))
    assert (out / "study.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --------------------------------------------------------------------------- --seed
def test_a_seed_at_the_top_of_its_range_runs_every_trial(recipe_file, tmp_path):
    """--seed 4294967295 died with numpy's 'Seed must be between 0 and 2**32 - 1' traceback
    after the first trial (the sampler's seed is --seed plus the trials drawn); --seed -1
    before any."""
    pytest.importorskip("optuna")
    from clfkit.studies.tune import TuneError, plan_tune

    code, out = invoke(
        "tune",
        recipe_file,
        "--trials",
        2,
        "--seed",
        2**32 - 1,
        "--space",
        "optim.lr=loguniform(1e-3,1e-1)",
        "--out",
        tmp_path / "t",
        "--quiet",
    )
    assert code == 0, out
    assert len((tmp_path / "t" / "trials.csv").read_text().splitlines()) == 3
    code, out = invoke(
        "tune",
        recipe_file,
        "--seed",
        -1,
        "--space",
        "optim.lr=loguniform(1e-3,1e-1)",
        "--out",
        tmp_path / "u",
    )
    assert code == 2 and "--seed" in out and "4294967295" in out and not (tmp_path / "u").exists()
    with pytest.raises(TuneError, match="--seed -1: give a seed from 0 to 4294967295"):
        plan_tune(recipe_file, ["optim.lr=loguniform(1e-3,1e-1)"], trials=2, out=tmp_path / "v", seed=-1)


@pytest.fixture
def tune_recipe(tmp_path) -> Path:
    data = tiny_recipe(train__epochs=1, data__image_size=8).to_dict()
    data["data"]["source"].update(train_size=64, val_size=32, test_size=32)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


SPACE = "optim.lr=uniform(1e-3,1e-2)"


def _tune(recipe: Path, out: Path, trials: int, *extra) -> tuple[int, str]:
    return invoke(
        "tune",
        recipe,
        "--trials",
        trials,
        "--space",
        SPACE,
        "--out",
        out,
        "--quiet",
        "--pruner",
        "none",
        *extra,
    )


def test_tune_refuses_to_continue_a_study_under_another_recipe(tune_recipe, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "t"
    assert _tune(tune_recipe, out, 1)[0] == 0
    table = (out / "trials.csv").read_bytes()
    # before: trials trained with another --set joined the study; best.yaml mixed the two
    refused(
        ["study.db", "another recipe or --set", "train.epochs", "another --out"],
        "tune",
        tune_recipe,
        "--trials",
        2,
        "--space",
        SPACE,
        "--out",
        out,
        "--quiet",
        "--pruner",
        "none",
        "--set",
        "train.epochs=2",
    )
    assert (out / "trials.csv").read_bytes() == table
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-000"]
    # the same recipe and --set continue it, with values not redrawn from the first run's seed
    assert _tune(tune_recipe, out, 2)[0] == 0
    with open(out / "trials.csv", newline="") as f:
        lrs = [row["optim.lr"] for row in csv.DictReader(f)]
    assert len(lrs) == 2 and lrs[0] != lrs[1], lrs


@pytest.mark.parametrize("space", [SPACE, "optim=choice(adam,sgd)"])
def test_tune_refuses_a_set_on_a_searched_field(tune_recipe, tmp_path, space):
    pytest.importorskip("optuna")
    out = tmp_path / "t"
    # before: the --set was silently replaced by every trial's value
    refused(
        ["--set optim.lr", "searched", space],
        "tune",
        tune_recipe,
        "--trials",
        1,
        "--space",
        space,
        "--set",
        "optim.lr=0.5",
        "--out",
        out,
    )
    assert not out.exists()
