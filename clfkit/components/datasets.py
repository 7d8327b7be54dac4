"""Datasets. Contract: ``factory(image_size, channels, resize, seed, on_error, **args) ->
clfkit.data.Splits`` with uint8 (N, C, H, W) images at ``image_size``. ``channels`` is None
when the recipe says ``auto``: then the dataset decides (1 for grayscale data)."""
from __future__ import annotations

from pydantic import Field
from typing_extensions import Annotated

import torch

from clfkit.data import ImageSet, Splits
from clfkit.registry import register


@register("dataset", "shapes")
def shapes(image_size: tuple[int, int], channels: int | None, seed: int,
           num_classes: Annotated[int, Field(ge=2, le=10)] = 10,
           train_size: Annotated[int, Field(ge=2)] = 10000,
           val_size: Annotated[int, Field(ge=0)] = 1000,
           test_size: Annotated[int, Field(ge=0)] = 2000) -> Splits:
    """Built-in procedural shapes and textures (10 classes), generated from the seed; no files."""
    from clfkit.data import synthetic

    if image_size[0] != image_size[1]:
        raise ValueError(f"shapes makes square images; got image_size {image_size}")

    def make(n, split):
        if n == 0:
            return None
        x, y = synthetic.generate(n, image_size[0], num_classes, seed, split)
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        if channels == 1:
            x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
        return ImageSet(x, torch.from_numpy(y))

    return Splits(train=make(train_size, 0), val=make(val_size, 1), test=make(test_size, 2),
                  class_names=list(synthetic.CLASSES[:num_classes]),
                  description=f"built-in shapes, {num_classes} classes, seed {seed}")


@register("dataset", "folder")
def folder(image_size: tuple[int, int], channels: int | None, resize: str, on_error: str,
           root: str) -> Splits:
    """Image folders: root/train/<class>/*, optional root/val/<class>/*, optional root/test/."""
    from clfkit.data.folder import load_folder

    return load_folder(root, image_size, channels, resize, on_error)


# `clfkit recipe check` asks (num_classes, channels) without reading the data.
shapes.peek = lambda num_classes=10, **_: (num_classes, 3)


def _folder_peek(root: str, **_):
    from pathlib import Path

    train = Path(root).expanduser() / "train"
    n = sum(1 for d in train.iterdir() if d.is_dir() and not d.name.startswith(".")) if train.is_dir() else 0
    return n, 3


folder.peek = _folder_peek
