"""Shared fixtures. Tests are hermetic: tiny data made here, no downloads, built-ins only
(CLFKIT_PLUGINS is not read here; plugin tests build their own registries)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# One thread, here and (by default) in the subprocesses tests start: the test models are tiny,
# and on a shared 2-core machine two OpenMP threads spin-wait for each other: a 2-epoch TINY
# run measured 29 s with 2 threads against 7 s with 1 (train loop 20 s against 1.2 s).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The decoded-data cache (clfkit/data/cache.py) stays off unless a test turns it on with its own
# tmp dir: no test reads or writes ~/.cache, and no test sees another's entries.
os.environ["CLFKIT_CACHE"] = "0"
# Grad-CAM maps (clfkit/run/gradcam.py) stay off unless a test turns them on: importing
# pytorch-grad-cam costs every training process about 2 s; tests/test_insight.py tests them.
os.environ["CLFKIT_GRADCAM"] = "0"

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "source": {"name": "shapes", "num_classes": 4, "train_size": 480, "val_size": 96, "test_size": 96},
        "image_size": 16,
    },
    "model": {"name": "cnn", "blocks": [{"channels": 16, "pool": "max"}, {"channels": 32, "pool": "max"}]},
    "optim": {"name": "adam", "lr": 3e-3},
    "train": {"epochs": 4, "batch_size": 32},
}


def tiny_recipe(**changes):
    """TINY with top-level or dotted-path changes."""
    import copy

    from clfkit.recipe import apply_override, validate_recipe

    data = copy.deepcopy(TINY)
    for key, value in changes.items():
        apply_override(data, key.split("__"), value)
    return validate_recipe(data)


def tiny_recipe_file(folder: Path, **changes) -> Path:
    """``folder/tiny.yaml``: tiny_recipe(**changes) as a recipe file, for the CLI."""
    import yaml

    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**changes).to_dict()))
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny training run shared by export / predict / checkpoint tests."""
    from clfkit.train.trainer import train

    out = tmp_path_factory.mktemp("runs")
    return train(tiny_recipe(), out, quiet=True)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> str:
    """The URI of one local SQLite MLflow store for the whole session: creating one runs
    MLflow's database migrations (seconds), so tests share it and keep apart by experiment."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables now, once
    return uri


def new_experiment(client, name: str, folder: Path) -> str:
    """An experiment in a shared store whose artifacts stay in ``folder`` (of a store given
    by URI, artifacts go where the experiment says); its id."""
    return client.create_experiment(name, artifact_location=(folder / "art").as_uri())


def invoke(*args) -> tuple[int, str]:
    """Run the CLI in-process with ``args`` (str()-ed); (exit code, output), never a traceback."""
    from click.testing import CliRunner

    from clfkit.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def refused(words: list[str], *args, max_lines: int | None = 6) -> str:
    """The CLI refuses ``args`` as the bar asks: exit 2, one short ``error: ...`` (at most
    ``max_lines`` lines; None: any length) naming every one of ``words``."""
    code, out = invoke(*args)
    assert code == 2 and out.startswith("error: "), out
    assert max_lines is None or len(out.splitlines()) <= max_lines, out
    for w in words:
        assert w in out, f"{w!r} not in {out!r}"
    return out


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=20, seed=0) -> Path:
    """root/train/<class>/*.png with class-dependent content (cats dark, dogs bright)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", 2)):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 170 * k
                arr = np.clip(rng.normal(base, 20, (size, size + 3, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{c}_{i}.png")
    return root


@pytest.fixture(autouse=True)
def _sigint_handler_restored():
    """Every command and context manager that handles Ctrl-C must put the previous handler back:
    a leaked handler makes a library user's (or a later test's) Ctrl-C do nothing."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left SIGINT handled by {after!r} (was {before!r})")


def sigint_at_step(monkeypatch, step: int) -> None:
    """Send this process SIGINT from inside the training loop right after optimizer step
    ``step`` (the trainer's stop flag handles it after that step); monkeypatch undoes it."""
    from clfkit.train.engine.guard import NonFiniteGuard

    real_ok = NonFiniteGuard.ok

    def ok(self, loss, step_now, batch):
        if step_now == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real_ok(self, loss, step_now, batch)

    monkeypatch.setattr(NonFiniteGuard, "ok", ok)


def set_recorded_epochs(run_dir: Path, epochs: int) -> None:
    """The run recorded as one of ``epochs`` epochs, in its checkpoints and recipe.yaml alike
    (a resume refuses a recipe.yaml that disagrees with last.pt, eval one that disagrees with
    best.pt)."""
    import yaml

    from clfkit.run.checkpoint import save_checkpoint

    for name in ("last.pt", "best.pt"):  # a stopped run's checkpoints all hold its one recipe
        if (run_dir / name).is_file():
            ck = torch.load(run_dir / name, weights_only=True)
            ck["recipe"]["train"]["epochs"] = epochs
            save_checkpoint(
                run_dir / name,
                {k: v for k, v in ck.items() if k not in ("format", "format_version", "clfkit_version")},
            )
    rec = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    rec["train"]["epochs"] = epochs
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))


def extend_and_resume(run_dir: Path, epochs: int):
    """Resume a finished short run as if it had been stopped on its way to ``epochs`` epochs:
    summary.json removed, last.pt's and recipe.yaml's epochs raised. Returns resume_run's result."""
    from clfkit.train.trainer import resume_run

    (run_dir / "summary.json").unlink()
    set_recorded_epochs(run_dir, epochs)
    return resume_run(run_dir, quiet=True)


def train_folder_run(base: Path, name: str, per_class: int, val_fraction: float) -> tuple[Path, Path]:
    """(a 1-epoch tiny mlp run trained through the CLI on a folder dataset made in ``base``, that
    dataset's root): for tests about a run's data (moved, changed, evaluated elsewhere)."""
    import yaml

    root = write_image_folder(base / "data", per_class=per_class, size=8)
    recipe = {
        **TINY,
        "name": name,
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 1, "batch_size": 4},
        "data": {
            "source": {"name": "folder", "root": str(root)},
            "image_size": 8,
            "val_fraction": val_fraction,
        },
    }
    (base / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    code, out = invoke("train", base / f"{name}.yaml", "--out", base / "runs", "--quiet")
    assert code == 0, out
    return base / "runs" / name, root
