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


def _decode_all(items: list[Path], root: Path, size, channels, resize, on_error, skipped):
    """Decode in threads (PIL releases the GIL while decoding). Returns (arrays, gray, ok-mask)."""
    def work(p: Path):
        try:
            img = imageio.open_image(p)
            gray = imageio.is_grayscale(img)
            return imageio.decode_image(img, size, 3 if channels is None else channels, resize), gray, None
        except imageio.DecodeError as e:
            return None, False, str(e)

    workers = min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, items))
    ok = []
    for p, (arr, _, err) in zip(items, results):
        if err is not None:
            rel = p.relative_to(root).as_posix()
            if on_error == "fail":
                raise DataError(f"{rel}: {err} (set data.on_error: skip to skip such files)")
            skipped.append((rel, err))
        ok.append(err is None)
    return results, ok


def _to_set(results, ok, labels, paths) -> ImageSet:
    arrays = [r[0] for r, good in zip(results, ok) if good]
    if not arrays:
        return None
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    lab = None
    if labels is not None:
        lab = torch.tensor([l for l, good in zip(labels, ok) if good], dtype=torch.int64)
    return ImageSet(images, lab, [p for p, good in zip(paths, ok) if good])


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
    decoded = {}
    for name, (paths, labels) in splits.items():
        decoded[name] = _decode_all(paths, root, image_size, None, resize, on_error, skipped)
    if channels is None:  # grayscale data needs no recipe change
        results, ok = decoded["train"]
        channels = 1 if all(r[1] for r, good in zip(results, ok) if good) else 3
    sets = {}
    for name, (paths, labels) in splits.items():
        results, ok = decoded[name]
        if channels == 1:
            results = [((r[0][..., :1] if r[0] is not None else None), r[1], r[2]) for r in results]
        rel = [p.relative_to(root / name).as_posix() for p in paths]
        sets[name] = _to_set(results, ok, labels, rel)
    if sets["train"] is None:
        raise DataError(f"no readable training images under {train_dir} "
                        f"({len(skipped)} files could not be decoded)")
    return Splits(train=sets["train"], class_names=class_names, val=sets.get("val"),
                  test=sets.get("test"), skipped=skipped, description=f"image folder {root}")
