"""Fine-tuning knobs: layer-wise LR decay and the head's LR multiplier (clfkit.train.param_groups),
loss class weights, class-balanced sampling, mixup-or-cutmix per batch, init: checked before
the run folder exists."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from clfkit import registry
from clfkit.train.build import build_loss, build_model, build_optimizer, build_regularizers, build_schedule
from clfkit.cli import cli
from clfkit.data import ImageSet, Splits
from clfkit.train.engine.batches import TrainBatches, epoch_order
from clfkit.errors import RecipeError, RegistryError
from clfkit.recipe import validate_recipe
from conftest import extend_and_resume, tiny_recipe, write_image_folder

RESNET10 = {"name": "resnet", "depth": 10, "width": 0.125, "stem": "small"}


def recipe_with(model=RESNET10, optim=None, regularizers=(), loss="cross_entropy"):
    return validate_recipe(
        {
            "name": "k",
            "model": model,
            "loss": loss,
            "regularizers": list(regularizers),
            "optim": optim or {"name": "sgd", "lr": 0.1},
        }
    )


def built(recipe, num_classes=3):
    model = build_model(recipe, num_classes, 3, (16, 16), [0.0] * 3, [1.0] * 3)
    return model, build_optimizer(recipe, model, build_regularizers(recipe))


def lr_and_wd(model, optimizer):
    """Parameter name -> (lr, weight_decay) as the optimizer holds them."""
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def resnet10_layer(name):
    """ResNet-10's layers: the stem 0, the four one-block stages 1..4, the head (fc) 5."""
    if name.startswith("net.stem"):
        return 0
    return 5 if name.startswith("net.fc") else int(name.split(".")[2]) + 1


# ------------------------------------------------------------------ layer decay, head LR
def test_layer_decay_and_head_mult_give_each_parameter_its_lr():
    recipe = recipe_with(optim={"name": "sgd", "lr": 0.1, "layer_decay": 0.5, "head_lr_mult": 10})
    model, opt = built(recipe)
    for name, (lr, _) in lr_and_wd(model, opt).items():
        layer = resnet10_layer(name)
        want = 0.1 * 10 if layer == 5 else 0.1 * 0.5 ** (5 - layer)
        assert lr == pytest.approx(want), (name, lr, want)


def test_layer_decay_composes_with_no_decay_norm_bias():
    recipe = recipe_with(
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.05, "layer_decay": 0.8, "head_lr_mult": 2},
        regularizers=["no_decay_norm_bias"],
    )
    model, opt = built(recipe)
    got = lr_and_wd(model, opt)
    for name, p in model.named_parameters():
        layer = resnet10_layer(name)
        want_lr = 0.01 * 2 if layer == 5 else 0.01 * 0.8 ** (5 - layer)
        assert got[name] == (pytest.approx(want_lr), 0.0 if p.ndim <= 1 else 0.05), name
    assert {g["lr_scale"] for g in opt.param_groups} == {2.0, *(0.8**k for k in range(1, 6))}


def test_a_schedule_step_keeps_every_groups_ratio():
    recipe = validate_recipe(
        {
            "name": "k",
            "model": RESNET10,
            "schedule": {"name": "cosine", "warmup_epochs": 1},
            "optim": {"name": "sgd", "lr": 0.1, "layer_decay": 0.5, "head_lr_mult": 10},
            "train": {"epochs": 3},
        }
    )
    model, opt = built(recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, build_schedule(recipe, steps_per_epoch=4))
    bases = set()
    for _ in range(7):
        opt.step()
        sched.step()
        base = opt.param_groups[0]["lr"] / opt.param_groups[0]["lr_scale"]
        bases.add(round(base, 6))
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(base * g["lr_scale"])
    assert len(bases) >= 6 and max(bases) <= 0.1  # warmup, then cosine decay


def test_without_the_knobs_the_optimizer_has_one_plain_group():
    model, opt = built(recipe_with())
    assert len(opt.param_groups) == 1 and "lr_scale" not in opt.param_groups[0]
    assert opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize(
    "spec,scales",
    [
        (
            {"name": "cnn", "blocks": [{"channels": 4, "pool": "max"}, {"channels": 4, "pool": "max"}]},
            {
                "net.0.0.weight": 0.25,
                "net.0.1.weight": 0.25,
                "net.0.5.bias": 0.5,
                "net.0.6.weight": 0.5,
                "net.3.weight": 3.0,
            },
        ),
        (
            {"name": "mlp", "hidden": [8, 8]},
            {"net.blocks.0.0.weight": 0.25, "net.blocks.1.0.bias": 0.5, "net.head.weight": 3.0},
        ),
        ({"name": "linear"}, {"net.1.weight": 3.0}),
        (
            {"name": "timm", "arch": "resnet10t"},
            {"net.conv1.0.weight": 0.5**5, "net.layer4.0.conv1.weight": 0.5, "net.fc.weight": 3.0},
        ),
    ],
)
def test_every_builtin_model_says_its_layers(spec, scales):
    model, opt = built(
        recipe_with(model=spec, optim={"name": "sgd", "lr": 1.0, "layer_decay": 0.5, "head_lr_mult": 3})
    )
    got = lr_and_wd(model, opt)
    for name, want in scales.items():
        assert got[name][0] == pytest.approx(want), name


class Plain(nn.Module):
    def __init__(self, num_classes, in_chans, image_size):
        super().__init__()
        self.body = nn.Conv2d(in_chans, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


@pytest.fixture
def plainnet():
    registry.register("model", "plainnet")(
        lambda num_classes, in_chans, image_size: Plain(num_classes, in_chans, image_size)
    )
    yield "plainnet"
    registry.REGISTRY.remove("model", "plainnet")


def test_a_model_without_layers_is_a_clear_error_but_head_mult_works(plainnet):
    with pytest.raises(RecipeError) as e:
        built(recipe_with(model=plainnet, optim={"name": "sgd", "lr": 0.1, "layer_decay": 0.7}))
    msg = str(e.value)
    assert "optim.layer_decay" in msg and "'plainnet' (Plain)" in msg and "group_matcher" in msg
    model, opt = built(recipe_with(model=plainnet, optim={"name": "sgd", "lr": 0.1, "head_lr_mult": 5}))
    got = lr_and_wd(model, opt)
    assert got["net.head.weight"][0] == pytest.approx(0.5) and got["net.body.weight"][0] == pytest.approx(0.1)


# ------------------------------------------------------------------ class weights
def splits_with_counts(counts, names=None):
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    return Splits(train=ImageSet(images, labels), class_names=names or [f"c{i}" for i in range(len(counts))])


def test_balanced_weights_come_from_the_train_counts_and_match_torch():
    splits = splits_with_counts([10, 30, 60])
    loss = build_loss(
        validate_recipe(
            {"name": "k", "model": "linear", "loss": {"name": "cross_entropy", "class_weights": "balanced"}}
        ),
        3,
        splits,
    )
    want = [100 / (3 * 10), 100 / (3 * 30), 100 / (3 * 60)]
    assert loss.class_weights == pytest.approx(want)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 3, generator=g), torch.randint(3, (16,), generator=g)
    ref = F.cross_entropy(logits, y, weight=torch.tensor(want))
    assert loss(logits, y) == pytest.approx(float(ref), rel=1e-5)
    # the same one-hot target as soft labels (mixup, cutmix, label smoothing): the same loss
    assert loss(logits, F.one_hot(y, 3).float()) == pytest.approx(float(ref), rel=1e-5)
    # soft targets: each class's share weighted
    t = torch.softmax(torch.randn(16, 3, generator=g), 1)
    w = torch.tensor(want)
    manual = -(t * w * logits.log_softmax(1)).sum() / (t * w).sum()
    assert loss(logits, t) == pytest.approx(float(manual), rel=1e-5)


def test_class_weights_of_the_wrong_length_name_the_classes():
    recipe = validate_recipe(
        {"name": "k", "model": "linear", "loss": {"name": "cross_entropy", "class_weights": [1.0, 2.0]}}
    )
    with pytest.raises(RegistryError) as e:
        build_loss(recipe, 3, splits_with_counts([4, 4, 4], ["daisy", "rose", "tulip"]))
    assert "2 value(s)" in str(e.value) and "3 classes (daisy, rose, tulip)" in str(e.value)
    with pytest.raises(RecipeError) as e:  # squared_error and hinge do not take them: at load
        validate_recipe({"name": "k", "model": "linear", "loss": {"name": "hinge", "class_weights": [1, 2]}})
    assert "loss.class_weights" in str(e.value)


# ------------------------------------------------------------------ balanced sampler
def test_balanced_sampler_draws_classes_evenly_and_repeats_per_epoch():
    labels = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    data = ImageSet(
        torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).clone(), labels
    )
    batches = TrainBatches(data, 20, 3, True, torch.device("cpu"), [], 0, "balanced")
    drawn = torch.cat([y for _, y in batches.epoch(0)])
    assert len(drawn) == 100 and 35 <= int(drawn.sum()) <= 65  # ~50 of the 10-image class
    # a resumed epoch (from batch 2) draws exactly the uninterrupted epoch's remaining batches
    full = [x for x, _ in batches.epoch(4)]
    tail = [x for x, _ in batches.epoch(4, start_batch=2)]
    assert len(tail) == 3 and all(torch.equal(a, b) for a, b in zip(full[2:], tail))
    assert not torch.equal(epoch_order(100, 3, 0, batches.weights), epoch_order(100, 3, 1, batches.weights))
    shuffled = TrainBatches(data, 20, 3, True, torch.device("cpu"), [], 0)
    assert sorted(torch.cat([x[:, 0, 0, 0] for x, _ in shuffled.epoch(0)]).tolist()) == list(range(100))


def test_balanced_sampler_under_ddp_splits_each_global_batch(monkeypatch):
    from clfkit.train.engine import distributed

    labels = torch.tensor([0] * 30 + [1] * 10)
    data = ImageSet(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1), labels)
    one = torch.cat(
        [
            x.flatten()
            for x, _ in TrainBatches(data, 8, 0, True, torch.device("cpu"), [], 0, "balanced").epoch(0)
        ]
    )
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "WORLD", distributed.World(rank=rank, size=2))
        parts.append(
            [
                x.flatten()
                for x, _ in TrainBatches(data, 8, 0, True, torch.device("cpu"), [], 0, "balanced").epoch(0)
            ]
        )
    both = torch.cat([torch.cat([a, b]) for a, b in zip(*parts)])  # global batch i = rank 0's + rank 1's
    assert torch.equal(both, one)


# ------------------------------------------------------------------ mixup or cutmix
def test_mixup_cutmix_applies_exactly_one_per_batch_at_the_switch_rate():
    mix = registry.create("regularizer", "mixup_cutmix", switch_prob=0.3)
    calls = []
    for name in ("mixup", "cutmix"):
        inner = getattr(mix, name)
        orig = inner.on_batch
        inner.on_batch = lambda x, y, n, _o=orig, _n=name: (calls.append(_n), _o(x, y, n))[1]
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for batch in range(400):
        before = len(calls)
        xm, t = mix.on_batch(x, y, 3)
        assert len(calls) == before + 1 and t.shape == (4, 3)  # one of them, never both
    assert abs(calls.count("cutmix") / 400 - 0.3) < 0.06


def test_mixup_and_cutmix_listed_apart_fail_at_load():
    with pytest.raises(RecipeError) as e:
        validate_recipe({"name": "k", "model": "linear", "regularizers": ["mixup", "grad_clip", "cutmix"]})
    msg = str(e.value)
    assert "regularizers.2" in msg and "regularizers.0 (mixup)" in msg and "mixup_cutmix" in msg


# ------------------------------------------------------------------ a whole run
def test_a_run_with_every_knob_resumes_exactly_across_the_unfreeze(tmp_path):
    from clfkit.train.trainer import train

    def recipe(epochs):
        return tiny_recipe(
            train__epochs=epochs,
            train__deterministic=True,
            train__freeze="backbone",
            train__unfreeze_epoch=2,
            train__batch_size=32,
            data__source__train_size=64,
            data__source__val_size=32,
            data__source__test_size=32,
            train__track=[],
            data__sampler="balanced",
            loss={"name": "cross_entropy", "class_weights": "balanced"},
            optim={"name": "adamw", "lr": 3e-3, "layer_decay": 0.5, "head_lr_mult": 4},
            regularizers=["no_decay_norm_bias", {"name": "mixup_cutmix", "switch_prob": 0.5}],
        )

    ref = train(recipe(2), tmp_path / "ref", quiet=True)
    summary = ref.summary
    assert summary["sampler"] == "balanced" and len(summary["class_weights"]) == 4
    cut = train(recipe(1), tmp_path / "cut", quiet=True)
    res = extend_and_resume(cut.run_dir, 2)  # as if stopped after epoch 1
    a = torch.load(ref.run_dir / "last.pt", weights_only=True)
    b = torch.load(res.run_dir / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    lrs = [g["lr"] / g["lr_scale"] for g in b["optimizer"]["param_groups"]]
    assert max(lrs) == pytest.approx(min(lrs))  # every group on one schedule after the resume
    rows = [json.loads(line) for line in (ref.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(3e-3)  # the metrics log reports the recipe's lr


# ------------------------------------------------------------------ init: before the run folder
@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "other_architecture", "class_weights"])
def test_a_bad_init_or_class_weights_leaves_no_run_folder(tmp_path, case):
    root = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4, size=16)
    init = {
        "missing": tmp_path / "nope.pt",
        "not_a_checkpoint": tmp_path / "junk.pt",
        "other_architecture": tmp_path / "other.pt",
    }.get(case)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    if case == "other_architecture":
        from clfkit.run.checkpoint import save_checkpoint

        save_checkpoint(init, {"model": {"w": torch.zeros(3)}, "recipe": {}, "class_names": ["a", "b"]})
    f = tmp_path / "r.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "name": "b",
                "data": {
                    "source": {"name": "folder", "root": str(root)},
                    "image_size": 16,
                    "val_fraction": 0.25,
                },
                "model": "linear",
                "train": {"epochs": 1, "batch_size": 4},
                **(
                    {"init": str(init)}
                    if init
                    else {"loss": {"name": "cross_entropy", "class_weights": [1, 2, 3]}}
                ),
            }
        )
    )
    out = tmp_path / "runs"
    res = CliRunner().invoke(cli, ["train", str(f), "--out", str(out), "--quiet"])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert ("init" in res.output) if init else ("3 value(s), but the data has 2 classes (a, b)" in res.output)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_balanced_sampler_augments_each_draw_of_an_image_anew():
    from clfkit.train.engine.batches import PerImage

    class Noise:  # an albumentations-style transform with its own seeded generator
        def set_random_seed(self, s):
            self.g = torch.Generator().manual_seed(s)

        def __call__(self, image):
            return {"image": image + int(torch.randint(0, 200, (), generator=self.g))}

    data = ImageSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 0, 1]))
    ds = PerImage(data, [Noise()], seed=5)
    assert torch.equal(ds[3][0], ds[3][0]) and torch.equal(ds[(3, 3)][0], ds[3][0])  # shuffle: as before
    assert not torch.equal(ds[(10, 3)][0], ds[(11, 3)][0])  # two draws of image 3: two augmentations
    batches = TrainBatches(data, 4, 0, True, torch.device("cpu"), [Noise()], 0, "balanced")
    full = [x for x, _ in batches.epoch(2)]
    assert len(full) == 1 and full[0].shape == (4, 1, 2, 2)


def test_set_on_a_component_the_recipe_leaves_out_starts_from_its_default(tmp_path):
    from clfkit.recipe import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("name: x\nmodel: linear\n")
    r = load_recipe(f, ["loss.class_weights=balanced", "optim.layer_decay=0.5", "schedule.warmup_epochs=1"])
    assert r.loss["name"] == "cross_entropy" and r.loss["class_weights"] == "balanced"
    assert r.optim["name"] == "sgd" and r.optim["layer_decay"] == 0.5 and r.schedule["name"] == "constant"
