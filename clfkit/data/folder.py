"""Image folders on disk: ``root/train/<class>/*``, optional ``root/val/<class>/*``, optional
``root/test/`` (class folders, or a flat folder of unlabelled images)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clfkit import imageio
from clfkit.data import ImageSet, Splits
from clfkit.errors import DataError


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _scan_labelled(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = _class_dirs(split_dir)
    items: list[tuple[Path, int]] = []
    for label, d in enumerate(classes):
        images, _ = imageio.list_images(d)
        if not images:
            raise DataError(f"class folder {d} holds no images (looked for "
                            f"{', '.join(imageio.IMAGE_EXTENSIONS)}); remove it or add images")
        items += [(p, label) for p in images]
    return [d.name for d in classes], items


def decode_files(paths: list[Path], size: tuple[int, int], channels: Optional[int], resize: str,
                 on_error: str, skipped: list[tuple[str, str]], show=str) -> list[Optional[tuple[np.ndarray, bool]]]:
    """Decode files in threads (PIL releases the GIL while decoding): per file (HWC uint8 array,
    is grayscale), or None when it could not be decoded (reported in ``skipped`` under
    ``show(path)``, or raised when ``on_error`` is "fail"). ``channels`` None decodes to RGB;
    the caller picks 1 or 3 afterwards from the grayscale flags."""
    def work(p: Path):
        try:
            img = imageio.open_image(p)
            gray = imageio.is_grayscale(img)
            return imageio.decode_image(img, size, 3 if channels is None else channels, resize), gray
        except imageio.DecodeError as e:
            return str(e)

    workers = min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, paths))
    for i, (p, r) in enumerate(zip(paths, results)):
        if isinstance(r, str):
            if on_error == "fail":
                raise DataError(f"{show(p)}: {r} (set data.on_error: skip to skip such files)")
            skipped.append((show(p), r))
            results[i] = None
    return results


def auto_channels(decoded: list[Optional[tuple[np.ndarray, bool]]]) -> int:
    """1 when every decoded (training) image is grayscale, else 3."""
    return 1 if all(r[1] for r in decoded if r is not None) else 3


def to_image_set(decoded, labels, paths, gray: bool) -> Optional[ImageSet]:
    """The decoded images as an ImageSet (bad files dropped); ``gray``: keep one of the RGB
    channels, which are equal for grayscale images."""
    ok = [i for i, r in enumerate(decoded) if r is not None]
    if not ok:
        return None
    arrays = [decoded[i][0][..., :1] if gray else decoded[i][0] for i in ok]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    lab = torch.tensor([labels[i] for i in ok], dtype=torch.int64) if labels is not None else None
    return ImageSet(images, lab, [paths[i] for i in ok] if paths is not None else None)


def load_folder(root: str | os.PathLike, image_size: tuple[int, int], channels: Optional[int] = None,
                resize: str = "squash", on_error: str = "skip") -> Splits:
    """Read an image-folder dataset into memory. ``channels`` None: 1 if every training image
    is grayscale, else 3."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {root}/train/<class>/<images>")
    class_names, train_items = _scan_labelled(train_dir)
    if len(class_names) < 2:
        raise DataError(f"{train_dir} must hold at least two class folders, found "
                        f"{class_names or 'none'}")
    splits: dict[str, tuple[list[Path], Optional[list[int]]]] = {
        "train": ([p for p, _ in train_items], [l for _, l in train_items])}
    val_dir = root / "val"
    if val_dir.is_dir():
        val_classes, val_items = _scan_labelled(val_dir)
        if val_classes != class_names:
            raise DataError(f"train and val have different class folders: only in train "
                            f"{sorted(set(class_names) - set(val_classes))}, only in val "
                            f"{sorted(set(val_classes) - set(class_names))}")
        splits["val"] = ([p for p, _ in val_items], [l for _, l in val_items])
    test_dir = root / "test"
    if test_dir.is_dir():
        if _class_dirs(test_dir):
            test_classes, test_items = _scan_labelled(test_dir)
            unknown = sorted(set(test_classes) - set(class_names))
            if unknown:
                raise DataError(f"test has class folders that train lacks: {unknown}")
            remap = [class_names.index(c) for c in test_classes]
            splits["test"] = ([p for p, _ in test_items], [remap[l] for _, l in test_items])
        else:
            images, _ = imageio.list_images(test_dir)
            if images:
                splits["test"] = (images, None)

    skipped: list[tuple[str, str]] = []
    decoded = {name: decode_files(paths, image_size, channels, resize, on_error, skipped,
                                  show=lambda p: p.relative_to(root).as_posix())
               for name, (paths, _) in splits.items()}
    gray = channels is None and auto_channels(decoded["train"]) == 1  # grayscale data needs no recipe change
    sets = {name: to_image_set(decoded[name], labels, [p.relative_to(root / name).as_posix() for p in paths], gray)
            for name, (paths, labels) in splits.items()}
    if sets["train"] is None:
        raise DataError(f"no readable training images under {train_dir} "
                        f"({len(skipped)} files could not be decoded)")
    return Splits(train=sets["train"], class_names=class_names, val=sets.get("val"),
                  test=sets.get("test"), skipped=skipped, description=f"image folder {root}")
