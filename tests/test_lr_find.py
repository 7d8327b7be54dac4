"""clfkit lr-find: the LR range test through the CLI; it writes its plot and nothing else."""

from __future__ import annotations

import re

import numpy as np
from conftest import invoke, refused, tiny_recipe_file


def test_lr_find_writes_only_its_plot_and_suggests_an_lr(tmp_path, monkeypatch):
    recipe = tiny_recipe_file(tmp_path, data__source__train_size=128)
    monkeypatch.chdir(tmp_path)
    code, out = invoke("lr-find", recipe, "--steps", "40", "--end-lr", "100")
    assert code == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find_tiny.png", "tiny.yaml"]  # no run folder
    assert (tmp_path / "lr_find_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lr = float(re.search(r"suggested lr: (\S+) \(steepest descent", out).group(1))
    assert 1e-7 < lr < 100 and f"--set optim.lr={lr:.2e}" in out
    # an earlier plot is replaced; a folder gets the default name inside it
    assert invoke("lr-find", recipe, "--steps", "10", "-o", tmp_path / "lr_find_tiny.png")[0] == 0
    (tmp_path / "plots").mkdir()
    assert invoke("lr-find", recipe, "--steps", "10", "-o", tmp_path / "plots")[0] == 0
    assert (tmp_path / "plots" / "lr_find_tiny.png").is_file()


def test_lr_find_never_overwrites_what_is_not_a_plot(tmp_path, trained_run):
    recipe = tiny_recipe_file(tmp_path)
    notes = tmp_path / "notes.png"
    notes.write_text("my notes, not a picture")
    refused(["notes.png", "not a PNG"], "lr-find", recipe, "-o", notes)
    assert notes.read_text() == "my notes, not a picture"
    refused([".png"], "lr-find", recipe, "-o", tmp_path / "recipe.yaml")
    refused(["does not exist"], "lr-find", recipe, "-o", tmp_path / "nowhere" / "x.png")
    refused(["run folder"], "lr-find", recipe, "-o", trained_run.run_dir / "lr.png")
    assert not (trained_run.run_dir / "lr.png").exists()
    refused(["--start-lr"], "lr-find", recipe, "--start-lr", "1", "--end-lr", "0.1", "-o", tmp_path / "a.png")
    code, out = invoke(
        "lr-find", recipe, "--steps", "100000000", "-o", tmp_path / "a.png"
    )  # a typo, not a plan
    assert code == 2 and "10<=x<=10000" in out and not (tmp_path / "a.png").exists()


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    from clfkit.studies.lr_find import suggestions

    lrs = list(np.logspace(-6, 1, 71))
    x = np.log10(lrs)
    # flat, a descent steepest at lr 1e-3, a minimum at 1e-1, then divergence (steeper swings after it)
    loss = list(2 - np.tanh((x + 3) * 2) + np.where(x > -1, 30 * (x + 1) ** 2 * (1.5 + np.sin(20 * x)), 0))
    steepest, min10 = suggestions(lrs, loss)
    assert abs(np.log10(steepest) + 3) <= 0.1
    assert min10 == lrs[int(np.argmin(loss))] / 10


def _nan_checkpoint(trained_run, path):
    """A copy of a run's best.pt whose first weight is NaN: a broken ``init:``."""
    import torch

    from clfkit.run.checkpoint import save_checkpoint

    ck = torch.load(trained_run.run_dir / "best.pt", weights_only=True)
    first = next(k for k in ck["model"] if k.endswith("weight"))
    ck["model"][first] = torch.full_like(ck["model"][first], float("nan"))
    save_checkpoint(
        path, {k: v for k, v in ck.items() if k not in ("format", "format_version", "clfkit_version")}
    )
    return path


def test_a_loss_not_finite_on_the_first_step_is_said_so(tmp_path, trained_run):
    recipe = tiny_recipe_file(tmp_path, data__source__train_size=64)
    broken = _nan_checkpoint(trained_run, tmp_path / "nan.pt")
    earlier = tmp_path / "lr.png"
    earlier.write_bytes(b"\x89PNG\r\n\x1a\n earlier plot")
    out = refused(
        ["not finite", "lr=1.00e-07", "first step", "Try", "earlier one"],
        "lr-find",
        recipe,
        "--set",
        f"init={broken}",
        "-o",
        earlier,
    )
    assert "no suggestion" not in out and earlier.read_bytes().endswith(b"earlier plot")


def test_every_loop_ends_when_no_batch_comes_out(tmp_path, monkeypatch):
    """A split that gives no batch in an epoch (an empty streamed split; drop_last on data smaller
    than the batch keeps its one batch) is an error, not an endless loop."""
    from clfkit.train.engine.batches import TrainBatches

    recipe = tiny_recipe_file(
        tmp_path, data__source__train_size=2, train__drop_last=True, train__batch_size=64
    )
    code, out = invoke(
        "lr-find", recipe, "--steps", "12", "-o", tmp_path / "tiny.png"
    )  # one batch of 2 per epoch
    assert code == 0 and "12 steps" in out and out.count("wrote ") == 1, out
    monkeypatch.setattr(TrainBatches, "epoch", lambda self, epoch, start_batch=0: iter(()))
    refused(["no batch", "2 image(s)", "batch_size 64"], "lr-find", recipe, "-o", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_each_step_is_the_training_step(tmp_path, monkeypatch):
    """accumulate, gradient clipping and a frozen backbone work in lr-find as in training."""
    from conftest import tiny_recipe

    import clfkit.studies.lr_find as lr_find_module
    from clfkit.studies.lr_find import lr_find

    calls, backbone_grads = [], []
    real = lr_find_module.train_step

    def spy(state, *args, **kwargs):
        out = real(state, *args, **kwargs)
        calls.append(1)
        grads = {n: p.grad is not None for n, p in state.net.named_parameters()}  # net.3: the cnn's head
        backbone_grads.append(
            (any(g for n, g in grads.items() if not n.startswith("net.3.")), grads["net.3.weight"])
        )
        return out

    monkeypatch.setattr(lr_find_module, "train_step", spy)
    changes = {
        "data__source__train_size": 64,
        "train__batch_size": 16,
        "train__accumulate": 2,
        "train__freeze": "backbone",
        "optim": {"name": "sgd", "lr": 0.01},
    }
    clipped = lr_find(
        tiny_recipe(**changes, regularizers=[{"name": "grad_clip", "max_norm": 1e-12}]),
        tmp_path / "p.png",
        steps=12,
        end_lr=1e4,
    )
    assert len(clipped.lrs) == 12 and len(calls) == 24  # two micro-batches per optimizer step
    assert backbone_grads[-1] == (False, True)  # train.freeze: the backbone gets no gradient, the head does
    assert not any(backbone for backbone, _ in backbone_grads)
    assert (
        "accumulate 2" in clipped.settings
        and "grad_clip" in clipped.settings
        and "frozen" in clipped.settings
    )
    # clipped to nothing, no LR moves the weights: the loss stays near where it started, even at lr 1e4,
    # where the same test without the clipping diverges
    assert not clipped.stopped and max(clipped.losses) < 2 * clipped.losses[0]
    assert lr_find(tiny_recipe(**changes), tmp_path / "p.png", steps=12, end_lr=1e4).stopped
