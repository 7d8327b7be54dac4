"""Augmentations. Contract: a factory returns either

- a per-image transform, albumentations-style: ``t(image=HWC uint8 ndarray) -> {"image": ...}``
  (run on the CPU in DataLoader workers), or
- a batched transform: an object with ``batched = True`` and ``__call__(x, generator) -> x``
  where x is a float (N, C, H, W) tensor in 0..255 on the training device, with per-sample
  randomness drawn from ``generator``. These run on the GPU when training there. A batched
  transform may also split its randomness from its work: ``draw(shape, device, generator)``
  draws all of the batch's random numbers (``shape``: the batch's (N, C, H, W)) and
  ``apply(x, draws) -> x`` is a pure tensor function of them that keeps the shape; BatchPrep
  then compiles ``apply`` with the rest of the batch preparation under ``train.compile``
  (clfkit.train.engine.prep). Without the split, ``__call__`` runs eagerly.

Any albumentations transform can be named by its class name (``{name: ColorJitter, ...}``);
its arguments are checked by constructing it when the recipe is loaded. The names below are
batched versions of the common small-image transforms and win over albumentations' names.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.entries import Entry
from clfkit.registry.plugins import add_fallback, register

Prob = Annotated[float, Field(ge=0, le=1)]


def _rand(n, gen, device):
    """``n`` uniforms from ``gen`` (its device), or from ``device``'s global generator, on ``device``."""
    return torch.rand(n, generator=gen, device=gen.device if gen is not None else device).to(device)


class Split:
    """A batched transform whose randomness is drawn apart from its work: ``draw`` (eager,
    from the generator) and ``apply`` (a pure tensor function BatchPrep may compile)."""

    batched = True

    def __call__(self, x, gen=None):
        return self.apply(x, self.draw(x.shape, x.device, gen))


class Flip(Split):
    def __init__(self, p: float, dim: int):
        self.p, self.dim = p, dim

    def draw(self, shape, device, gen):
        return _rand(shape[0], gen, device)

    def apply(self, x, u):
        return torch.where((u < self.p)[:, None, None, None], x.flip(self.dim), x)


@register("augmentation", "HorizontalFlip")
def horizontal_flip(p: Prob = 0.5) -> Flip:
    """Mirror left-right with probability p (batched, per sample)."""
    return Flip(p, -1)


@register("augmentation", "VerticalFlip")
def vertical_flip(p: Prob = 0.5) -> Flip:
    """Mirror top-bottom with probability p (batched, per sample)."""
    return Flip(p, -2)


class PadCropT(Split):
    def __init__(self, padding: int, mode: str):
        self.padding, self.mode = padding, mode

    def draw(self, shape, device, gen):
        return _rand(shape[0], gen, device), _rand(shape[0], gen, device)  # rows' offset, then columns'

    def apply(self, x, draws):
        n, _, h, w = x.shape
        p = self.padding
        xp = F.pad(x, (p, p, p, p), mode=self.mode)
        dev = x.device
        dy, dx = ((u * (2 * p + 1)).long().clamp_max(2 * p) for u in draws)
        rows = torch.arange(h, device=dev)[None, :] + dy[:, None]  # (N, H)
        cols = torch.arange(w, device=dev)[None, :] + dx[:, None]  # (N, W)
        idx = torch.arange(n, device=dev)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
        # (N, C, H, W) view with channels_last strides: no copy back to NCHW here, which the
        # channels_last runtime would only undo (BatchPrep sets the layout the model wants)
        return out.permute(0, 3, 1, 2)


@register("augmentation", "PadCrop")
def pad_crop(padding: Annotated[int, Field(ge=1)] = 4, mode: str = "reflect") -> PadCropT:
    """Pad by ``padding`` pixels (reflect, replicate or constant) and crop back at a random
    offset: the standard CIFAR random translation (batched, per sample)."""
    if mode not in ("reflect", "replicate", "constant"):
        raise ValueError(f"mode must be reflect, replicate or constant, got {mode!r}")
    return PadCropT(padding, mode)


class CutoutT(Split):
    def __init__(self, size: int, p: float):
        self.size, self.p = size, p

    def draw(self, shape, device, gen):
        return tuple(_rand(shape[0], gen, device) for _ in range(3))  # centre row, column, apply?

    def apply(self, x, draws):
        n, _, h, w = x.shape
        dev = x.device
        cy, cx = (draws[0] * h).long(), (draws[1] * w).long()
        apply = draws[2] < self.p
        ys = torch.arange(h, device=dev)[None, :]
        xs = torch.arange(w, device=dev)[None, :]
        # rows cy - size//2 ... cy - size//2 + size - 1: exactly `size` wide (clipped at edges)
        lo_y, lo_x = cy[:, None] - self.size // 2, cx[:, None] - self.size // 2
        my = ((ys >= lo_y) & (ys < lo_y + self.size))[:, :, None]
        mx = ((xs >= lo_x) & (xs < lo_x + self.size))[:, None, :]
        mask = (my & mx & apply[:, None, None])[:, None]
        return x.masked_fill(mask, 0.0)


@register("augmentation", "Cutout")
def cutout(size: Annotated[int, Field(ge=1)] = 8, p: Prob = 1.0) -> CutoutT:
    """Zero a size x size square at a random centre, clipped at the border (DeVries & Taylor
    2017), with probability p per sample (batched)."""
    return CutoutT(size, p)


# --------------------------------------------------------------------------- albumentations
# Transforms whose job clfkit does itself: listed in data.augment they would apply twice or
# hand the model floats where it expects 0..255 images.
_NOT_AUGMENTATIONS = {
    "Normalize": "clfkit normalizes inside the model (data.normalize: auto, imagenet, init, none or "
    "{mean, std}), so the exported ONNX file does it too; remove Normalize from data.augment",
    "ToTensorV2": "clfkit makes tensors itself; remove ToTensorV2 from data.augment",
    "ToFloat": "clfkit scales 0..255 images itself (data.normalize); remove ToFloat from data.augment",
    "FromFloat": "clfkit's images are already uint8; remove FromFloat from data.augment",
}


def _albumentations_entry(name: str) -> Entry | None:
    """Any albumentations transform by class name; its args are checked by building it."""
    try:
        import albumentations as A
    except ImportError:
        return None
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        return None
    if name in _NOT_AUGMENTATIONS:

        def refuse(args: dict) -> dict:
            raise ValueError(_NOT_AUGMENTATIONS[name])

        return Entry(
            "augmentation",
            name,
            cls,
            provider=f"albumentations {A.__version__}",
            version=A.__version__,
            validator=refuse,
        )

    def validate(args: dict) -> dict:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # albumentations warns on unknown args
            cls(**args)
        return args

    return Entry(
        "augmentation",
        name,
        cls,
        provider=f"albumentations {A.__version__}",
        version=A.__version__,
        validator=validate,
    )


add_fallback("augmentation", _albumentations_entry)
