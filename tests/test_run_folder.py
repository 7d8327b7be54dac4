"""Issue 11, run folders: one writer per run (a lock taken before anything is touched), resume
refusing changed classes, best.pt chosen by one rule (and a run without a val split never
calling train accuracy "val"), and damaged run files (checkpoints, samples.npy,
metrics.jsonl) ending in clear errors. Through the real CLI: in-process (CliRunner) or as
real processes where two must run at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from clfkit.cli import cli
from conftest import TINY, set_recorded_epochs, tiny_recipe, write_image_folder
from conftest import invoke, refused

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CLFKIT_CACHE="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _tiny_file(tmp: Path, name="tiny.yaml", data=None, **train) -> Path:
    recipe = json.loads(json.dumps(TINY))
    recipe["data"]["source"].update(train_size=64, val_size=32, test_size=32)
    if data is not None:
        recipe["data"] = data
    recipe["train"].update({"epochs": 2, "batch_size": 16, **train})
    path = tmp / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _folder_data(root: Path, **changes) -> dict:
    return {"source": {"name": "folder", "root": str(root)}, "image_size": 16, **changes}


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its size and mtime: "nothing written or deleted"."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _set_epochs(run: Path, epochs: int) -> None:
    """Make a finished run resumable: it asks for more epochs."""
    set_recorded_epochs(run, epochs)


# A clfkit process that, after its first optimizer step, waits while the file argv[1] exists:
# it holds its run folder for as long as a test needs (the test kills it).
SLOW = textwrap.dedent("""
    import os, sys, time
    import torch
    hold, calls, original = sys.argv[1], [0], torch.optim.Adam.step
    def step(self, *args, **kwargs):
        calls[0] += 1
        t0 = time.time()
        while calls[0] > 1 and os.path.exists(hold) and time.time() - t0 < 120:
            time.sleep(0.05)
        return original(self, *args, **kwargs)
    torch.optim.Adam.step = step
    from clfkit.cli import main
    sys.argv = ["clfkit"] + sys.argv[2:]
    main()
""")


def _start_slow(hold: Path, *args: str) -> subprocess.Popen:
    hold.write_text("")
    return subprocess.Popen(
        [sys.executable, "-c", SLOW, str(hold), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _wait_for_lock(run: Path, proc: subprocess.Popen, also: Path | None = None, timeout=120.0) -> None:
    """Until ``proc`` holds ``run``'s lock (its pid in the lock file) and ``also`` exists."""
    lock = run / ".clfkit.lock"
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            holder = json.loads(lock.read_text()).get("pid")
        except (OSError, ValueError):
            holder = None
        if holder == proc.pid and (also is None or also.exists()):
            return
        time.sleep(0.1)
    raise AssertionError("the slow process never took the lock")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


# --------------------------------------------------------------------------- rows 10 + 23: the lock
def test_resume_and_eval_refused_while_the_run_trains(tmp_path):
    """Row 23: `--resume` (and `eval`) while the first process still trains: refused before
    anything is touched, naming the holder's pid; its temp files survive."""
    recipe = _tiny_file(tmp_path, checkpoint_every_steps=1)
    proc = _start_slow(tmp_path / "hold", "train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet")
    run = tmp_path / "runs" / "tiny"
    try:
        _wait_for_lock(run, proc, also=run / "last.pt")
        in_flight = run / ".best.pt.abc123.tmp"  # as if the trainer were writing it now
        in_flight.write_bytes(b"half")
        for args in (["train", "--resume", run], ["eval", run]):
            res = _invoke(*args)
            assert res.exit_code == 2, res.output
            assert f"pid {proc.pid}" in res.output and "another clfkit process" in res.output, res.output
            assert "Traceback" not in res.output
        assert in_flight.read_bytes() == b"half", "the refused resume removed the trainer's temp file"
        assert not (run / "eval_test.json").exists()
    finally:
        _kill(proc)


def test_two_resumes_at_once_and_no_stale_lock_after_kill(tmp_path):
    """Row 10: two `train --resume RUN`: the second is refused and writes nothing; after
    the first is killed (kill -9), a resume takes the lock and finishes, each epoch once."""
    recipe = _tiny_file(tmp_path, epochs=1)
    assert _invoke("train", recipe, "--out", tmp_path / "runs", "--quiet").exit_code == 0
    run = tmp_path / "runs" / "tiny"
    _set_epochs(run, 3)
    first = _start_slow(tmp_path / "hold", "train", "--resume", str(run), "--quiet")
    try:
        _wait_for_lock(run, first)
        before = (run / "metrics.jsonl").read_text()
        second = _invoke("train", "--resume", run)  # this test's process: another one than the holder
        assert second.exit_code == 2, second.output
        assert f"pid {first.pid}" in second.output and "train --resume" in second.output
        assert "Traceback" not in second.output
        assert (run / "metrics.jsonl").read_text() == before
    finally:
        _kill(first)
    again = _invoke("train", "--resume", run, "--quiet")
    assert again.exit_code == 0, again.output
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert not (run / ".clfkit.lock").exists(), "a clean exit removes the lock file"


def test_lock_unit_holder_details_reentry_and_release(tmp_path):
    from clfkit.run.run_folder import RunLockedError, run_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        sys.argv = ["clfkit", "eval", "somewhere"]
        from clfkit.run.run_folder import run_lock
        with run_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError) as e:
            with run_lock(tmp_path, "resume"):
                pass
        msg = str(e.value)
        assert (
            f"pid {holder.pid}" in msg and "clfkit eval somewhere" in msg and "host" in msg and "since" in msg
        )
    finally:
        _kill(holder)
    with run_lock(tmp_path):  # the killed holder left no lock
        with run_lock(tmp_path):  # the same process may take it again
            pass
        assert (tmp_path / ".clfkit.lock").exists()
    assert not (tmp_path / ".clfkit.lock").exists()
    assert _invoke("eval", tmp_path / "nope").exit_code == 2


# --------------------------------------------------------------------------- row 3: classes changed
@pytest.fixture()
def folder_run(tmp_path):
    """A finished 1-epoch run on a cat/dog folder dataset, made resumable for 2 epochs."""
    root = write_image_folder(tmp_path / "imgs", per_class=8, size=16)
    recipe = _tiny_file(tmp_path, data=_folder_data(root, val_fraction=0.25), epochs=1, batch_size=4)
    res = _invoke("train", recipe, "--out", tmp_path / "runs", "--quiet")
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "tiny"
    _set_epochs(run, 2)
    return root, run


@pytest.mark.parametrize("change", ["rename", "add", "remove"])
def test_resume_and_eval_refuse_changed_classes(folder_run, change):
    root, run = folder_run
    for split in ("train", "test"):
        if change == "rename":
            (root / split / "dog").rename(root / split / "wolf")
        elif change == "add":
            (root / split / "cat").rename(root / split / "zebra")
            write_image_folder(root, classes=("cat",), per_class=8, size=16)
        else:
            (root / split / "bird").mkdir()
            for p in (root / split / "dog").iterdir():
                p.rename(root / split / "bird" / p.name)
            (root / split / "dog").rmdir()
    before = _snapshot(run)
    res = _invoke("train", "--resume", run)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "cannot resume" in res.output and "trained on 2 classes ['cat', 'dog']" in res.output
    assert {
        "rename": "gone: 'dog'; new: 'wolf'",
        "add": "new: 'zebra'",
        "remove": "gone: 'dog'; new: 'bird'",
    }[change] in res.output, res.output
    assert _snapshot(run) == before, "a refused resume changed the run folder"
    ev = _invoke("eval", run)
    assert ev.exit_code == 2 and "classes" in ev.output and "Traceback" not in ev.output, ev.output
    assert _snapshot(run) == before


def test_resume_refuses_reordered_or_extra_class(folder_run):
    root, run = folder_run
    (root / "train" / "ant").mkdir()  # a new class that sorts first: every index shifts
    write_image_folder(root, classes=("ant",), per_class=8, size=16)
    before = _snapshot(run)
    res = _invoke("train", "--resume", run)
    assert res.exit_code == 2 and "new: 'ant'" in res.output, res.output
    assert _snapshot(run) == before


# --------------------------------------------------------------------------- row 20: no val split
def test_no_val_split_never_says_val(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=8, size=16)
    recipe = _tiny_file(tmp_path, data=_folder_data(root, val_fraction=0), epochs=3, batch_size=4)
    res = _invoke("train", recipe, "--out", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    assert "0 val" in res.output and not re.search(r"val (acc|loss)|best val", res.output), res.output
    assert "no val split, so best.pt is the last epoch (3" in res.output
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_on"] == "last_epoch" and summary["best_epoch"] == 3
    assert summary["best_val_acc"] is None and summary["val_images"] == 0
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 3
    cmp = _invoke("compare", run, "-o", tmp_path / "c.png")
    assert cmp.exit_code == 0, cmp.output
    assert cmp.output.splitlines()[0].startswith("tiny (") and ", -, " in cmp.output.splitlines()[0]
    assert "test acc of best.pt" in cmp.output and "at best val" not in cmp.output


def test_one_best_rule_for_trainer_and_readers(tmp_path):
    """RunInfo.best_row applies the trainer's rule: with val, the first epoch of the highest
    val acc; without, the last epoch (never the best train acc)."""
    from clfkit.run.reader import read_run

    for name, rows, want, on in (
        ("val", [{"val_acc": 0.5}, {"val_acc": 0.7}, {"val_acc": 0.7}, {"val_acc": 0.6}], 2, "best_val_acc"),
        ("noval", [{"train_acc": 0.9}, {"train_acc": 0.5}, {"train_acc": 0.6}], 3, "last_epoch"),
    ):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": i + 1, "train_acc": 0.5, **r}) + "\n" for i, r in enumerate(rows))
        )
        info = read_run(run)
        assert (info.best_epoch, info.selected_on) == (want, on)
        if on == "last_epoch":
            assert info.best_val_acc is None and info.legend().startswith(f"{name} (0.900, -, ")


# --------------------------------------------------------------------------- row 19: damaged run files
@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    """One finished 1-epoch run on the built-in shapes (no data path: it can be copied)."""
    tmp = tmp_path_factory.mktemp("shapes")
    res = _invoke("train", _tiny_file(tmp, epochs=1), "--out", tmp / "runs", "--quiet")
    assert res.exit_code == 0, res.output
    return tmp / "runs" / "tiny"


def _damage(path: Path, how: str) -> None:
    from clfkit.run.checkpoint import load_checkpoint, save_checkpoint

    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint at all\n" * 10)
    else:
        state = {k: v for k, v in load_checkpoint(path).items() if k not in ("format", "format_version")}
        if how == "no_input":
            del state["input"]
        elif how == "bad_classes":
            state["class_names"] = "cat,dog"
        elif how == "wrong_shape":
            key = next(k for k, v in state["model"].items() if v.ndim == 4)
            state["model"][key] = torch.zeros(3, 3)
        elif how == "bad_image_size":
            state["input"]["image_size"] = [0, 16]
        elif how == "bad_epoch":
            state["epoch"] = "two"
        save_checkpoint(path, state)


@pytest.mark.parametrize(
    "how", ["truncated", "garbage", "no_input", "bad_classes", "wrong_shape", "bad_image_size", "bad_epoch"]
)
def test_damaged_checkpoints_are_clear_errors(tmp_path, shapes_run, how):
    run = Path(shutil.copytree(shapes_run, tmp_path / "runs" / "tiny"))
    _set_epochs(run, 2)
    for name, commands in (
        (
            "last.pt",
            [
                ["train", "--resume", run],
                ["export", run, "--checkpoint", "last.pt", "-o", tmp_path / "m.onnx"],
            ],
        ),
        ("best.pt", [["eval", run], ["export", run, "-o", tmp_path / "m.onnx"], ["train", "--resume", run]]),
    ):
        if how == "bad_epoch" and name == "best.pt":
            continue  # best.pt's epoch is informative only
        saved = (run / name).read_bytes()
        _damage(run / name, how)
        before = _snapshot(run)
        for args in commands:
            if how == "bad_epoch" and args[0] != "train":
                continue
            res = _invoke(*args)
            assert res.exit_code == 2, (args, res.output, res.exception)
            assert "Traceback" not in res.output and name in res.output, (args, res.output)
            assert _snapshot(run) == before and not (tmp_path / "m.onnx").exists()
        (run / name).write_bytes(saved)


@pytest.mark.parametrize("content", ["garbage", "float", "shape", "pickle", "empty"])
def test_bad_samples_npy_is_named(tmp_path, content):
    """The parity images the exporter reads (clfkit.run.reader.read_samples)."""
    from clfkit.errors import ClfkitError
    from clfkit.run.reader import read_samples

    path = tmp_path / "samples.npy"
    if content == "garbage":
        path.write_bytes(b"\x93NUMPY garbage")
    elif content == "float":
        np.save(path, np.zeros((4, 3, 16, 16), np.float32))
    elif content == "shape":
        np.save(path, np.zeros((4, 1, 8, 8), np.uint8))
    elif content == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(path, np.zeros((0, 3, 16, 16), np.uint8))
    with pytest.raises(ClfkitError, match="samples.npy"):
        read_samples(tmp_path, (3, 16, 16))
    (tmp_path / "samples.npy").unlink()
    assert read_samples(tmp_path, (3, 16, 16)) is None
    np.save(path, np.zeros((2, 3, 16, 16), np.uint8))
    assert read_samples(tmp_path, (3, 16, 16)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    "line,why",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON list"),
        ('"text"', "JSON str"),
        ('{"epoch": "3"}', "'epoch'"),
        ('{"epoch": 2.5}', "'epoch'"),
        ('{"epoch": true}', "'epoch'"),
        ('{"epoch": 3, "val_acc": "NaN"}', "'val_acc'"),
        ('{"epoch": 3, "val_acc": NaN}', "'val_acc'"),
        ('{"epoch": 3, "train_loss": Infinity}', "'train_loss'"),
    ],
)
def test_compare_warns_about_a_garbage_metrics_line(tmp_path, line, why):
    run = tmp_path / "r"
    run.mkdir()
    good = [
        {"epoch": e, "train_acc": 0.5, "train_loss": 1.0, "val_acc": 0.4 + e / 10, "val_loss": 1.0}
        for e in (1, 2)
    ]
    (run / "metrics.jsonl").write_text(json.dumps(good[0]) + "\n" + line + "\n" + json.dumps(good[1]) + "\n")
    with pytest.warns(UserWarning, match=rf"metrics.jsonl, line 2: .*{why}"):
        res = _invoke("compare", run, "-o", tmp_path / "c.png")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "r (0.500, 0.600, -)" in res.output


def test_summary_that_is_not_an_object(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_acc": 0.5, "val_acc": 0.5}) + "\n")
    (run / "summary.json").write_text("[1, 2, 3]")
    with pytest.warns(UserWarning, match="summary.json is not a JSON object"):
        res = _invoke("compare", run, "-o", tmp_path / "c.png")
    assert res.exit_code == 0, res.output
    (run / "summary.json").write_text(
        json.dumps({"test_acc": "high", "best_epoch": 1, "wall_seconds": "NaN"})
    )
    with pytest.warns(UserWarning, match="'test_acc' is 'high'"):
        res = _invoke("compare", run, "--metric", "test_acc", "-o", tmp_path / "c.png")
    assert res.exit_code == 0 and "r (0.500, 0.500, -)" in res.output, res.output


@pytest.mark.parametrize("existing", ["nonempty", "file", "dir_is_file"])
def test_plugins_new_never_overwrites(tmp_path, existing):
    target = tmp_path / "clfkit-mine"
    dest = tmp_path
    if existing == "nonempty":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif existing == "file":
        target.write_text("mine")
    else:
        dest = tmp_path / "afile"
        dest.write_text("mine")
    before = _snapshot(tmp_path)
    res = _invoke("plugins", "new", "mine", "--dir", dest)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert any(w in res.output for w in ("not empty", "not a folder", "is a file")), res.output
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(k).parts[0] for k in before
    )


def test_plugins_new_into_empty_folder_and_permissions(tmp_path):
    (tmp_path / "clfkit-mine").mkdir()
    res = _invoke("plugins", "new", "mine", "--dir", tmp_path)
    assert res.exit_code == 0, res.output
    made = tmp_path / "clfkit-mine"
    assert (made / "pyproject.toml").is_file()
    assert made.stat().st_mode & 0o755 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["clfkit-mine"], "no temp folder left"


def test_resume_refuses_images_that_changed_channels(folder_run):
    """Same class names, but every image is now grayscale: 1 input channel instead of 3."""
    from PIL import Image

    root, run = folder_run
    for p in root.rglob("*.png"):
        Image.open(p).convert("L").save(p)
    before = _snapshot(run)
    res = _invoke("train", "--resume", run)
    assert res.exit_code == 2 and "'channels': 3" in res.output and "'channels': 1" in res.output, res.output
    assert _snapshot(run) == before


def test_sweep_restart_of_an_unstarted_run_waits_for_no_one_and_deletes_nothing_held(tmp_path):
    """A sweep re-run restarts a run folder that never got to last.pt, but only under the run's
    lock: a folder another process is writing into is refused, with its files left alone."""
    import subprocess
    import sys

    from clfkit.run.run_folder import RunLockedError
    from clfkit.studies.sweep import run_trial

    run = tmp_path / "sweep" / "lr=0.1"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    (run / "partial.tmp").write_text("another process's file")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom clfkit.run.run_folder import run_lock\n"
            f"with run_lock({str(run)!r}, 'train'):\n    print('held', flush=True)\n    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=str(holder.pid)):
            run_trial(tiny_recipe(name="x").to_dict(), str(run))
        assert (run / "partial.tmp").read_text() == "another process's file"
    finally:
        holder.kill()
        holder.wait()


def _clfkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "clfkit", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --------------------------------------------------------------------------- resume after editing the recipe
@pytest.fixture
def stopped_run(monkeypatch, tmp_path) -> Path:
    """A 2-epoch run stopped by Ctrl-C in its first epoch."""
    from conftest import sigint_at_step, tiny_recipe

    from clfkit.train import trainer
    from clfkit.util.signals import Interrupted

    with monkeypatch.context() as m:
        sigint_at_step(m, 3)
        with pytest.raises(Interrupted):
            trainer.train(tiny_recipe(train__epochs=2), tmp_path, quiet=True)
    return tmp_path / "tiny"


def test_resume_refuses_a_recipe_yaml_edited_since_the_run_started(stopped_run):
    """--resume trains last.pt's recipe: an edited recipe.yaml was silently ignored, and the run
    folder then recorded an lr and epoch count its run never used."""
    from clfkit.run.resume import ResumeError
    from clfkit.train.trainer import resume_run

    recipe = stopped_run / "recipe.yaml"
    original = recipe.read_bytes()
    recipe.write_text(recipe.read_text().replace("lr: 0.003", "lr: 0.5").replace("epochs: 2", "epochs: 9"))
    last = (stopped_run / "last.pt").read_bytes()
    res = _clfkit("train", "--resume", stopped_run, cwd=stopped_run.parent)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "was edited since the run started (optim.lr: 0.003 -> 0.5; train.epochs: 2 -> 9)" in res.stderr
    assert "clfkit train " + str(recipe) in res.stderr
    assert (stopped_run / "last.pt").read_bytes() == last and not (stopped_run / "summary.json").exists()
    recipe.write_text("train: [\n")
    with pytest.raises(ResumeError, match="no longer reads as the run's recipe"):
        resume_run(stopped_run, quiet=True)
    recipe.unlink()  # deleted: written back from last.pt, and the run goes on
    resume_run(stopped_run, quiet=True)
    assert recipe.read_bytes() == original and (stopped_run / "summary.json").exists()


# --------------------------------------------------------------------------- eval / export on odd run folders
def test_a_finished_run_without_best_pt_is_not_silently_evaluated_on_last_pt(trained_run, tmp_path):
    """eval rewrote per_class.csv, confusion.png and report.html from last.pt, and export made
    last.pt the run's model, without a word."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    (run / "best.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for command in ("eval", "export"):
        refused([str(run), "finished run without its best.pt", "--checkpoint last.pt"], command, run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    code, out = invoke("eval", run, "--checkpoint", "last.pt")
    assert code == 0, out


# --------------------------------------------------------------------------- --resume combinations
@pytest.mark.parametrize("extra", [["--out", "elsewhere"], ["--track", "tensorboard"]])
def test_resume_refuses_out_and_track_it_would_ignore(trained_run, tmp_path, extra):
    """--out was ignored (the run went on in its own folder) and --track too, silently."""
    refused(
        ["--resume", "--out", "--track", "give no RECIPE"], "train", "--resume", trained_run.run_dir, *extra
    )
    assert not (tmp_path / "elsewhere").exists()


def test_resume_of_the_folder_holding_runs_names_them(trained_run, tmp_path):
    """'--resume runs' said 'the run stopped before its first checkpoint'."""
    import shutil

    shutil.copytree(trained_run.run_dir, tmp_path / "runs" / "tiny")
    refused(
        ["is not a run folder, it holds run folders", str(tmp_path / "runs" / "tiny")],
        "train",
        "--resume",
        tmp_path / "runs",
    )
