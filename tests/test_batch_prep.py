"""BatchPrep (clfkit.train.engine.prep): the batch preparation's random draws stay eager and exact,
its pure part is one torch.compile graph under train.compile, and both give the results of the
one-call transforms they replaced. The compiled cases use torch.compile's ``aot_eager``
backend: Dynamo's capture, guards and AOT functionalization as inductor sees them, without
inductor's C++ build (tens of seconds cold on this machine); bench/gpu_bench.py's ``prep`` row
checks inductor's graph against eager on the device."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from clfkit.components.augmentations import CutoutT, Flip, PadCropT
from clfkit.components.regularizers import CutMix, LabelSmoothing, Mixup, MixupCutMix
from clfkit.train.engine.prep import BatchPrep
from clfkit.errors import RegistryError, TrainingError
from clfkit.registry.entries import Entry, check_result

NUM_CLASSES = 5
SEED = 0  # a seed whose 6 batches take every branch of mixup_cutmix (asserted)


def _chain():
    mix = MixupCutMix(Mixup(0.8, 1.0), CutMix(1.0, 1.0), switch_prob=0.5, p=0.8)
    return [Flip(0.5, -1), PadCropT(2, "reflect"), CutoutT(4, 0.7)], [mix, LabelSmoothing(0.1)]


def _batches(steps: int, short: int = 2):
    """uint8 batches of 6 images, batch ``short`` of only 4 (a drop_last=false tail)."""
    g = torch.Generator().manual_seed(123)
    for s in range(steps):
        n = 4 if s == short else 6
        yield (
            torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
            torch.randint(0, NUM_CLASSES, (n,), generator=g),
        )


def _prepare(prep, seed: int, steps: int, short: int = 2):
    torch.manual_seed(seed)  # mixup / cutmix draw from the global generators, as before
    gen = torch.Generator().manual_seed(seed)  # the epoch's augmentation generator
    return [prep(x, y, gen) for x, y in _batches(steps, short)]


# ------------------------------------------------------------------ the one-call forms replaced
def _old_rand(n, gen):
    return torch.rand(n, generator=gen)


def _old_chain(x, y, gen):
    """The batch preparation before the draw/apply split (clfkit 2026-11), written out: what a
    run with the same seed computed, so resumes and older runs stay exact."""
    x = x.float()
    x = torch.where((_old_rand(len(x), gen) < 0.5)[:, None, None, None], x.flip(-1), x)
    n, _, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dy = (_old_rand(n, gen) * 5).long().clamp_max(4)
    dx = (_old_rand(n, gen) * 5).long().clamp_max(4)
    rows, cols = torch.arange(h)[None, :] + dy[:, None], torch.arange(w)[None, :] + dx[:, None]
    x = xp.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2
    )
    cy, cx = (_old_rand(n, gen) * h).long(), (_old_rand(n, gen) * w).long()
    on = _old_rand(n, gen) < 0.7
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    my = ((ys >= cy[:, None] - 2) & (ys < cy[:, None] + 2))[:, :, None]
    mx = ((xs >= cx[:, None] - 2) & (xs < cx[:, None] + 2))[:, None, :]
    x = x.masked_fill((my & mx & on[:, None, None])[:, None], 0.0)
    y = F.one_hot(y, NUM_CLASSES).float()
    if torch.rand(()).item() <= 0.8:  # mixed at all (p)
        if torch.rand(()).item() < 0.5:  # cutmix
            lam = float(torch.distributions.Beta(1.0, 1.0).sample())
            ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1, x0, x1 = (
                max(cy - ch // 2, 0),
                min(cy + ch // 2, h),
                max(cx - cw // 2, 0),
                min(cx + cw // 2, w),
            )
            perm = torch.randperm(n)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            lam = float(torch.distributions.Beta(0.8, 0.8).sample())
            perm = torch.randperm(n)
            x = lam * x + (1 - lam) * x[perm]
        y = lam * y + (1 - lam) * y[perm]
    y = y * 0.9 + 0.1 / NUM_CLASSES
    return x.contiguous(memory_format=torch.channels_last), y


def test_eager_prep_equals_the_one_call_transforms_it_replaced():
    prep = BatchPrep(*_chain(), NUM_CLASSES, channels_last=True)
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    ours = [prep(x, y, gen) for x, y in _batches(9)]
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    theirs = [_old_chain(x, y, gen) for x, y in _batches(9)]
    for (xa, ya), (xb, yb) in zip(ours, theirs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_compiled_prep_equals_eager_bit_for_bit_and_keeps_channels_last():
    branches = []
    mix = _chain()[1][0]
    draw = mix.on_batch_draw
    mix.on_batch_draw = lambda shape, device: (lambda d: (branches.append(d and d[0]), d)[1])(
        draw(shape, device)
    )
    aug, regs = _chain()
    eager = BatchPrep(aug, [mix, regs[1]], NUM_CLASSES, channels_last=True)
    graph = BatchPrep(*_chain(), NUM_CLASSES, channels_last=True, compile=True, backend="aot_eager")
    # one batch shape (3 graphs: mixed by mixup, by cutmix, not mixed); the short batch's
    # graph is test_a_transform_without_the_split_runs_eagerly_between_the_graphs's
    a, b = _prepare(eager, SEED, 6, short=-1), _prepare(graph, SEED, 6, short=-1)
    assert set(branches) == {"mixup", "cutmix", None}  # every branch of mixup_cutmix was compared
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xb.shape == xa.shape == (6, 3, 8, 8) and xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a[0][1].shape == (6, NUM_CLASSES)  # soft targets


class Brighten:
    """A plugin-style batched transform without the draw/apply split: __call__ only."""

    batched = True

    def __call__(self, x, generator):
        scale = 0.5 + torch.rand(x.shape[0], generator=generator)
        return (x * scale[:, None, None, None]).clamp(0, 255)


class PlainMix:
    """A plugin-style regularizer with a plain on_batch (global generator, Python float)."""

    def on_batch(self, x, y, num_classes):
        lam = float(torch.rand(()))
        return lam * x + (1 - lam) * x.flip(0), y


def test_a_transform_without_the_split_runs_eagerly_between_the_graphs():
    def prep(**kw):
        return BatchPrep(
            [Flip(0.5, -1), Brighten(), PadCropT(2, "reflect")],
            [PlainMix()],
            NUM_CLASSES,
            channels_last=False,
            **kw,
        )

    eager, graph = prep(), prep(compile=True, backend="eager")  # Dynamo's capture and guards only: faster
    assert graph.eager_steps == ["Brighten", "PlainMix"]
    a, b = _prepare(eager, 1, 3), _prepare(graph, 1, 3)
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    for (xa, ya), (xb, yb), (x, y) in zip(a, b, _batches(3)):
        ref = PlainMix().on_batch(
            PadCropT(2, "reflect")(Brighten()(Flip(0.5, -1)(x.float(), gen), gen), gen), y, 0
        )[0]
        assert torch.equal(xa, ref) and torch.equal(xb, ref) and torch.equal(ya, y) and torch.equal(yb, y)
        assert xb.is_contiguous()  # channels_last off: plain NCHW for the model


class Shrink:
    """A split transform whose apply breaks the contract: it changes the image size."""

    batched = True

    def draw(self, shape, device, generator):
        return None

    def apply(self, x, draws):
        return x[..., :4, :4]


def test_a_split_transform_that_resizes_is_a_clear_error():
    prep = BatchPrep([Shrink()], [], NUM_CLASSES, channels_last=False)
    x, y = next(_batches(1))
    with pytest.raises(
        TrainingError,
        match=r"Shrink: apply changed the batch's shape from \[6, 3, 8, 8\] "
        r"to \[6, 3, 4, 4\].*__call__\(x, generator\) only",
    ):
        prep(x, y, torch.Generator())


class DrawWithoutGenerator(Brighten):
    def draw(self, shape, device):  # the contract calls draw(shape, device, generator)
        return None

    def apply(self, x, draws):
        return x


class MixDrawWrong:
    def on_batch(self, x, y, num_classes):
        return x, y

    def on_batch_draw(self, shape):  # the contract calls on_batch_draw(shape, device)
        return None


@pytest.mark.parametrize(
    "kind, obj, expected",
    [
        (
            "augmentation",
            DrawWithoutGenerator(),
            "DrawWithoutGenerator.draw has the signature (shape, device); "
            "the augmentation contract calls it as draw(shape, device, generator)",
        ),
        (
            "regularizer",
            MixDrawWrong(),
            "MixDrawWrong.on_batch_draw has the signature (shape); the regularizer "
            "contract calls it as on_batch_draw(shape, device)",
        ),
    ],
)
def test_a_draw_apply_split_with_the_wrong_signature_is_refused_when_built(kind, obj, expected):
    with pytest.raises(RegistryError, match=re.escape(f"{kind} 'acme_x' from acme: {expected}")):
        check_result(Entry(kind, "acme_x", lambda: obj, provider="acme"), obj)
