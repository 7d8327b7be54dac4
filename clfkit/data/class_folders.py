"""Image folders on disk: ``root/train/<class>/*``, optional ``root/val/<class>/*``, optional
``root/test/`` (class folders, or a flat folder of unlabelled images).

Symbolic links are followed (datasets are often assembled from links), but a link may not
make a class out of other classes' images: a class folder that links to a folder holding the
split, or two class folders that reach the same folder, are errors; a link further down that
loops back up is not followed and is listed in ``skipped``.

Every file is read once: the same bytes are hashed (:attr:`Splits.fingerprint`, the data
cache's key) and decoded, so the cache can never pair one file content with another's pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from clfkit.data import image_files
from clfkit.data import ImageSet, Splits, disk_storage as storage
from clfkit.data.decode_pool import FileResult, Output, decode_into
from clfkit.errors import DataError, NotImagesWarning
from clfkit.util.safe_names import check_class_names, check_same_spelling

LAYOUT = "<root>/train/<class>/<images>, optional <root>/val/<class>/<images> and <root>/test/"


def _show(path: str | os.PathLike) -> str:
    return image_files.escape_path(str(path))


# --------------------------------------------------------------------------- scanning
@dataclass
class FolderPlan:
    """What a folder dataset will read: per split the image files and their labels (None for
    an unlabelled test folder), before any file is opened."""

    root: Path
    class_names: list[str]
    splits: dict[str, tuple[list[str], Optional[list[int]]]]  # paths as strings (image_files.Listing)
    not_followed: list[tuple[str, str]] = field(default_factory=list)  # (shown path, why)
    # files left out, not data (not hashed, not in skipped.txt) but said aloud: without an image
    # extension, or beside the class folders of a split (in no class)
    not_images: list[str] = field(default_factory=list)  # shown paths
    in_no_class: list[str] = field(default_factory=list)

    def show(self, path: str | os.PathLike) -> str:
        """A path as skipped.txt and messages print it: relative to the root, escaped."""
        return image_files.escape_path(relative_names([path], self.root)[0])


def _split_folder(root: Path, name: str, required: bool) -> Optional[Path]:
    """``root/name`` when it is a folder; None when absent and optional; else a DataError."""
    path = root / name
    if path.is_dir():
        return path
    if path.is_symlink() and not path.exists():
        raise DataError(
            f"{_show(path)} is a symbolic link to {_show(Path(os.readlink(path)))}, which "
            f"does not exist; fix or remove the link (expected {LAYOUT})"
        )
    if path.exists():
        raise DataError(f"{_show(path)} is a file, not a folder; expected {LAYOUT}")
    if required:
        raise DataError(
            f"{_show(root)} has no train/ folder (it is empty or holds other things); expected {LAYOUT}"
        )
    return None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as e:
        raise DataError(f"cannot list {_show(folder)}: {e.strerror or e}") from None


def class_folders(split_dir: Path) -> list[Path]:
    """The class folders of a split. A dangling link (not named like an image) or a link to a
    folder that holds the split (a loop: it would hold every other class) is an error."""
    real_split = os.path.realpath(split_dir)
    classes = []
    for p in _entries(split_dir):
        if p.is_symlink() and not p.exists() and not image_files.is_image_file(p):
            raise DataError(
                f"class folder {_show(p)} is a symbolic link to "
                f"{_show(Path(os.readlink(p)))}, which does not exist; fix or remove the link"
            )
        if not p.is_dir():
            continue
        real = os.path.realpath(p)
        if image_files.contains(real, real_split):
            raise DataError(
                f"class folder {_show(p)} is a link to {_show(Path(real))}, which holds "
                f"{_show(split_dir)} itself: it would be a class made of every other class's "
                f"images; remove the link"
            )
        _check_class_name(p)
        classes.append(p)
    return classes


def _check_class_name(folder: Path) -> None:
    """Class names go into checkpoints, the ONNX file and prediction lines: they must be text
    that prints on one line."""
    name = folder.name
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name):  # Cs: non-UTF-8 bytes
        raise DataError(
            f"class folder name {image_files.escape_path(name)!r} (in {_show(folder.parent)}) is not "
            f"valid UTF-8 or holds a control character such as a newline or tab; class names "
            f"are written to the ONNX file and to prediction files: rename the folder"
        )


def _scan_labelled(split_dir: Path, plan: FolderPlan) -> tuple[list[str], list[tuple[str, int]]]:
    classes = class_folders(split_dir)
    plan.in_no_class += [plan.show(p) for p in _entries(split_dir) if not p.is_dir() and p.exists()]
    items: list[tuple[str, int]] = []
    owner: dict[tuple[int, int], Path] = {}  # every folder read, to catch one read by two classes
    for label, d in enumerate(classes):
        listing = image_files.walk_files(d)
        for ident, folder in listing.folders.items():
            if ident in owner:
                raise DataError(
                    f"{_show(folder)} and {_show(owner[ident])} are the same folder (through "
                    f"a symbolic link): its images would belong to two classes; remove the link"
                )
            owner[ident] = folder
        plan.not_followed += [(plan.show(p), why) for p, why in listing.not_followed]
        plan.not_images += [plan.show(p) for p in listing.others]
        if not listing.images:
            raise DataError(
                f"class folder {_show(d)} holds no images (looked for "
                f"{', '.join(image_files.IMAGE_EXTENSIONS)}); remove it or add images"
            )
        items += [(p, label) for p in listing.images]
    names = [d.name for d in classes]
    check_class_names(names, _show(split_dir))
    return names, items


def scan_folder(root: str | os.PathLike) -> FolderPlan:
    """List an image-folder dataset (no image is opened). Raises DataError for a layout that
    cannot be read as classes."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {_show(root)} does not exist or is not a folder; expected {LAYOUT}")
    plan = FolderPlan(root, [], {})
    train_dir = _split_folder(root, "train", required=True)
    plan.class_names, train_items = _scan_labelled(train_dir, plan)
    if len(plan.class_names) < 2:
        raise DataError(
            f"{_show(train_dir)} must hold at least two class folders, found {plan.class_names or 'none'}"
        )
    plan.splits["train"] = ([p for p, _ in train_items], [l for _, l in train_items])
    val_dir = _split_folder(root, "val", required=False)
    if val_dir is not None:
        val_classes, val_items = _scan_labelled(val_dir, plan)
        check_same_spelling(
            plan.class_names, val_classes, f"train ({_show(train_dir)})", f"val ({_show(val_dir)})"
        )
        if val_classes != plan.class_names:
            raise DataError(
                f"train and val have different class folders: only in train "
                f"{sorted(set(plan.class_names) - set(val_classes))}, only in val "
                f"{sorted(set(val_classes) - set(plan.class_names))}"
            )
        plan.splits["val"] = ([p for p, _ in val_items], [l for _, l in val_items])
    test_dir = _split_folder(root, "test", required=False)
    if test_dir is not None:
        _scan_test(test_dir, plan)
    return plan


def _scan_test(test_dir: Path, plan: FolderPlan) -> None:
    if class_folders(test_dir):
        test_classes, test_items = _scan_labelled(test_dir, plan)
        check_same_spelling(plan.class_names, test_classes, "train", f"test ({_show(test_dir)})")
        unknown = sorted(set(test_classes) - set(plan.class_names))
        if unknown:
            raise DataError(f"test has class folders that train lacks: {unknown}")
        remap = [plan.class_names.index(c) for c in test_classes]
        plan.splits["test"] = ([p for p, _ in test_items], [remap[l] for _, l in test_items])
    else:
        listing = image_files.walk_files(test_dir)
        plan.not_followed += [(plan.show(p), why) for p, why in listing.not_followed]
        plan.not_images += [plan.show(p) for p in listing.others]
        if listing.images:
            plan.splits["test"] = (listing.images, None)


def warn_not_images(plan: FolderPlan) -> None:
    """Warnings (each shown once a run: the same text from the same line) naming files the
    dataset leaves out: a phone's .heic photos, or images dropped into train/ beside the class
    folders, would otherwise vanish without a word."""

    def some(paths: list[str]) -> str:
        return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")

    if plan.not_images:
        warnings.warn(
            f"{len(plan.not_images)} file(s) under {_show(plan.root)} are not read, their extension "
            f"is not an image's: {some(plan.not_images)} (clfkit reads "
            f"{' '.join(image_files.IMAGE_EXTENSIONS)}); convert them or move them out of the "
            f"dataset",
            NotImagesWarning,
            stacklevel=2,
        )
    if plan.in_no_class:
        warnings.warn(
            f"{len(plan.in_no_class)} file(s) under {_show(plan.root)} lie beside the class folders, "
            f"in no class, and are not read: {some(plan.in_no_class)}; move images into "
            f"<split>/<class>/",
            NotImagesWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------- reading and hashing
def read_and_hash(path: Path) -> tuple[Optional[bytes], str, Optional[str]]:
    """(bytes or None, content hash, why it cannot be read or None). An unreadable file hashes
    to its reason, so fixing it changes the fingerprint too."""
    try:
        data = image_files.read_file(path)
    except image_files.DecodeError as e:
        return None, f"unreadable: {e}", str(e)
    return data, hashlib.blake2b(data, digest_size=16).hexdigest(), None


def plan_fingerprint(plan: FolderPlan, digests: dict[str, list[str]]) -> str:
    """A hash of everything a folder dataset's decoded form depends on: class names, each
    split's files (paths, labels, content hashes) and the links not followed."""
    h = hashlib.blake2b(digest_size=20)
    # json with ASCII escapes: unambiguous for any name, newlines and non-UTF-8 bytes included
    h.update(json.dumps([plan.class_names, plan.not_followed]).encode())
    for name, (paths, labels) in plan.splits.items():  # the root is part of the cache key already
        h.update(json.dumps([name, [str(p) for p in paths], labels, digests[name]]).encode())
    return h.hexdigest()


def _workers() -> int:
    return min(32, (os.cpu_count() or 1) * 2)


def _hash_files(paths: list[str], pool: ThreadPoolExecutor) -> list[str]:
    # File reads and hashlib release the GIL. Tasks of 64 files: one task per small file
    # costs more in thread hand-offs than the hashing itself.
    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
    return [d for part in pool.map(lambda c: [read_and_hash(p)[1] for p in c], chunks) for d in part]


def folder_fingerprint(root: str | os.PathLike) -> str:
    """The fingerprint :func:`load_folder` would give, from reading (not decoding) every file."""
    plan = scan_folder(root)
    warn_not_images(plan)
    with ThreadPoolExecutor(_workers()) as pool:
        digests = {name: _hash_files(paths, pool) for name, (paths, _) in plan.splits.items()}
    return plan_fingerprint(plan, digests)


DecodeResult = Optional[tuple[np.ndarray, bool]]  # (HWC uint8 array, is grayscale), None if unreadable


def decode_files(
    paths: list[Path],
    size: tuple[int, int],
    channels: Optional[int],
    *,
    resize: str,
    on_error: str,
    skipped: list[tuple[str, str]],
    show: Callable[[Path], str] = _show,
    digests: Optional[list[str]] = None,
) -> list[DecodeResult]:
    """Decode files in threads (PIL releases the GIL while decoding): per file (HWC uint8 array,
    is grayscale), or None when it could not be decoded (reported in ``skipped`` under
    ``show(path)``, or raised when ``on_error`` is "fail"). ``channels`` None decodes to RGB;
    the caller picks 1 or 3 afterwards from the grayscale flags. ``digests``, when given,
    receives each file's content hash, of the very bytes that were decoded."""

    def work(p: Path) -> tuple[DecodeResult | str, str]:
        data, digest, unreadable = read_and_hash(p)
        if unreadable:
            return unreadable, digest
        try:
            img = image_files.open_image(p, data)
            gray = image_files.is_grayscale(img)
            return (
                image_files.decode_image(img, size, 3 if channels is None else channels, resize),
                gray,
            ), digest
        except image_files.DecodeError as e:
            return str(e), digest

    with ThreadPoolExecutor(_workers()) as pool:
        done = list(pool.map(work, paths))
    results: list[DecodeResult] = []
    for p, (r, _) in zip(paths, done):
        if isinstance(r, str):
            if on_error == "fail":
                raise DataError(f"{show(p)}: {r} (set data.on_error: skip to skip such files)")
            skipped.append((show(p), r))
            r = None
        results.append(r)
    if digests is not None:
        digests += [d for _, d in done]
    return results


def auto_channels(decoded: list[DecodeResult]) -> int:
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


def _check_every_class_readable(
    plan: FolderPlan, readable_files: list[bool], skipped: list[tuple[str, str]]
) -> None:
    """A class whose every training image failed to decode would be a class the model never
    sees: an error, not a silent gap."""
    paths, labels = plan.splits["train"]
    readable = {labels[i] for i, ok in enumerate(readable_files) if ok}
    empty = [c for k, c in enumerate(plan.class_names) if k not in readable]
    if not readable:
        raise DataError(
            f"no readable training images under {_show(plan.root / 'train')} "
            f"({len(skipped)} files could not be decoded, e.g. {skipped[0][0]}: {skipped[0][1]})"
        )
    if empty:
        raise DataError(
            f"no image of class folder(s) {[image_files.escape_path(c) for c in empty]} in "
            f"{_show(plan.root / 'train')} could be decoded; fix or remove them "
            f"(unreadable files are listed with data.on_error: skip in skipped.txt)"
        )


def _note_errors(
    paths: list[str],
    results: list[FileResult],
    on_error: str,
    skipped: list[tuple[str, str]],
    show: Callable[[str], str],
) -> None:
    for p, r in zip(paths, results):
        if r.error is not None:
            if on_error == "fail":
                raise DataError(f"{show(p)}: {r.error} (set data.on_error: skip to skip such files)")
            skipped.append((show(p), r.error))


def _finish_split(
    out: Output,
    results: list[FileResult],
    labels: Optional[list[int]],
    paths: list[str],
    gray: bool,
    final: Optional[Path],
) -> Optional[ImageSet]:
    """The decoded rows as an ImageSet: undecodable files dropped, one channel kept for
    grayscale data. A disk split (``final``) is renamed into place, or copied there in blocks
    when rows must be dropped."""
    ok = np.array([i for i, r in enumerate(results) if r.error is None], dtype=np.int64)
    if not len(ok):
        return None
    keep_all = len(ok) == len(results) and not gray
    if final is None:
        arr = out.array()
        images = torch.from_numpy(arr if keep_all else np.ascontiguousarray(arr[ok, :1] if gray else arr[ok]))
    else:
        if keep_all:
            os.replace(out.path, final)
        else:
            storage.copy_rows(storage.DiskImages(out.path), ok, final, 1 if gray else None)
            os.unlink(out.path)
        images = storage.DiskImages(final)
    lab = torch.tensor([labels[i] for i in ok], dtype=torch.int64) if labels is not None else None
    return ImageSet(images, lab, [paths[i] for i in ok])


def relative_names(paths: list[str | os.PathLike], base: Path) -> list[str]:
    """Each path relative to ``base``, with / (the names a split keeps). String slicing: the walk
    built every path under ``base``, and Path.relative_to costs 7 us a file (0.14 s of a 20k
    decode that takes 2.3 s on 2 cores)."""
    prefix = os.path.join(str(base), "")
    return [
        s[len(prefix) :].replace(os.sep, "/")
        if s.startswith(prefix)
        else Path(s).relative_to(base).as_posix()
        for s in map(os.fspath, paths)
    ]


def load_folder(
    root: str | os.PathLike,
    image_size: tuple[int, int],
    channels: Optional[int] = None,
    resize: str = "squash",
    on_error: str = "skip",
) -> Splits:
    """Read an image-folder dataset, decoding with every core. ``channels`` None: 1 if every
    training image is grayscale, else 3. Under a disk :class:`storage.Target` (set by the data
    cache) each split is decoded straight into its .npy file, never held in memory whole."""
    plan = scan_folder(root)
    warn_not_images(plan)
    skipped: list[tuple[str, str]] = list(plan.not_followed)
    target = storage.current_target()
    shape = (3 if channels is None else channels, *image_size)
    rows = sum(len(paths) for paths, _ in plan.splits.values())
    to_disk = target is not None and storage.resolve(target.storage, rows * int(np.prod(shape))) == "disk"
    decoded: dict[str, tuple[Output, list[FileResult]]] = {}
    for name, (paths, _) in plan.splits.items():
        out = Output(len(paths), shape, path=target.folder / f".{name}.decoding.npy" if to_disk else None)
        results = decode_into(paths, image_size, shape[0], resize, out)
        _note_errors(paths, results, on_error, skipped, plan.show)
        decoded[name] = (out, results)
    train_results = decoded["train"][1]
    _check_every_class_readable(plan, [r.error is None for r in train_results], skipped)
    # grayscale data needs no recipe change
    gray = channels is None and all(r.gray for r in train_results if r.error is None)
    sets = {
        name: _finish_split(
            *decoded[name],
            labels,
            relative_names(paths, plan.root / name),
            gray,
            target.folder / f"{name}.images.npy" if to_disk else None,
        )
        for name, (paths, labels) in plan.splits.items()
    }
    digests = {name: [r.digest for r in results] for name, (_, results) in decoded.items()}
    return Splits(
        train=sets["train"],
        class_names=plan.class_names,
        val=sets.get("val"),
        test=sets.get("test"),
        skipped=skipped,
        description=f"image folder {_show(plan.root)}",
        fingerprint=plan_fingerprint(plan, digests),
    )
