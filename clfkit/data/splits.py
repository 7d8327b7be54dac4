"""What a dataset gives the trainer: :class:`ImageSet` (uint8 images, labels, paths) and
:class:`Splits` (train/val/test and the class names), and the seeded stratified split.

The datasets these studies use (28-128 px, up to ~100k images) fit in memory once decoded;
holding them as one uint8 tensor makes batching an index operation, lets augmentation run
batched on the training device, and makes re-runs independent of the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W); labels int64 (N,) or None when unlabelled."""

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    paths: Optional[list[str]] = None  # for folder data: path of each image, relative to root

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        labels = self.labels[idx] if self.labels is not None else None
        # a disk split (clfkit.data.disk_storage) stays on disk: the subset is a list of its rows
        images = self.images.select(idx) if getattr(self.images, "on_disk", False) else self.images[idx]
        return ImageSet(images, labels, paths)


@dataclass
class Splits:
    """What a dataset component returns. ``val`` None means "carve it from train"."""

    train: ImageSet
    class_names: list[str]
    val: Optional[ImageSet] = None
    test: Optional[ImageSet] = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    description: str = ""
    # A hash of the files read (names and content) when the dataset is read from files: the
    # data cache keys its entry by it. None for generated data.
    fingerprint: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[-2:])


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): ``fraction`` of each class held out, at least one per class
    with two or more images, chosen by a seeded permutation."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n = max(1, min(n, len(idx) - 1))
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values
