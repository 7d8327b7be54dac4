"""Batch inference with onnxruntime over a folder of images, written to ``test.txt``.

Everything needed to prepare an image (size, channels, resize method) comes from the ONNX
file's clfkit metadata; normalization is inside the graph. Files are walked recursively in
sorted order, lazily: memory does not grow with the folder. Decoding (threads) overlaps with
inference, lines are written as batches finish into a temp file that replaces the output only
when every image is done (an error or Ctrl-C leaves no half-written file).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from clfkit.data import image_files
from clfkit.errors import DataError
from clfkit.util.atomic import atomic_open
from clfkit.util.output_file import overwrite_refusal, run_file_refusal
from clfkit.deploy.predictor import OnnxClassifier, load_onnx, prepare, softmax


FORMATS = ("name", "index", "csv")
# -o with one of these suffixes is a mistyped argument order, not a place for predictions
NOT_PREDICTIONS = (".onnx", ".pt", ".pth", ".safetensors", ".npy")
# an existing file is replaced only when it looks like an earlier predictions file
PREDICTION_SUFFIXES = (".txt", ".csv", ".tsv", "")

# --------------------------------------------------------------------------- path escaping
# A file name may hold any byte but "/" and NUL, and need not be UTF-8. So that test.txt stays one
# UTF-8 line per image, the path field (and a class name) is escaped: "\\" for a backslash,
# "\n" "\t" "\r" for those, "\xNN" for any other ASCII control character and for each byte of a
# name that is not UTF-8, "\uNNNN" for Unicode line breaks (U+0085, U+2028, U+2029), and a space
# at the very start or end of the field as "\x20" (so stripping a line loses nothing). A class
# name's spaces are "\x20" too on a one-class line: the class is always the last space-separated
# field. A --topk line separates its fields by tabs, which no escaped field holds.
_UNESCAPE = re.compile(r"\\(\\|n|t|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")


def escape_field(text: str, *, spaces: bool = False) -> str:
    """One field of a test.txt line; ``spaces=True`` escapes every space (class names)."""
    out = image_files.escape_path(text)  # the escapes of skipped.txt and every other list of names
    if spaces:
        return out.replace(" ", "\\x20")
    if out.startswith(" "):
        out = "\\x20" + out[1:]
    if out.endswith(" "):
        out = out[:-1] + "\\x20"
    return out


def unescape_field(text: str) -> str:
    """Inverse of :func:`escape_field`; undecodable bytes come back as os.fsdecode gives them,
    so ``os.fsencode(unescape_field(f))`` is the file name's bytes."""

    def one(m: re.Match) -> str:
        code = m.group(1)
        if code[0] == "x":
            byte = int(code[1:], 16)
            return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)
        if code[0] == "u":
            return chr(int(code[1:], 16))
        return {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}[code]

    return _UNESCAPE.sub(one, text)


def read_ranked(path: str | os.PathLike, fmt: str = "name") -> list[tuple[str, list[str]]]:
    """A predictions file back as (relative path, [classes, likeliest first]) per image,
    unescaped: one class per line as ``predict`` writes by default, or the K of ``--topk K``.
    The one reader of the one writer (:func:`_line_writer`): a line holding a tab is a top-k
    line (fields split at tabs; a tab inside a field is always escaped), else the class is
    its last space-separated field (a class name's spaces are escaped there)."""
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            rows = list(csv.reader(f))
            ranked = [(r[0], r[1::2] if rows[0][1:2] == ["class_1"] else r[1:2]) for r in rows[1:] if r]
        else:
            ranked = []
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                fields = line.split("\t") if "\t" in line else line.rsplit(" ", 1)
                if len(fields) < 2 or "" in fields:
                    raise DataError(
                        f"{path}, line {number}: {line[:80]!r} is not '<path> <class>' nor "
                        f"'<path>\\t<class 1>\\t<class 2>...' (clfkit predict's formats)"
                    )
                ranked.append((fields[0], fields[1:]))
    return [(unescape_field(p), [unescape_field(c) for c in classes]) for p, classes in ranked]


def read_predictions(path: str | os.PathLike, fmt: str = "name") -> list[tuple[str, str]]:
    """A predictions file back as (relative path, predicted class name or index) pairs,
    unescaped; of a ``--topk`` file, the likeliest class (:func:`read_ranked` gives all K)."""
    return [(p, classes[0]) for p, classes in read_ranked(path, fmt)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _refusal(out: Path, model: Path, root: Path, images: Callable[[], Iterable[Path]]) -> Optional[str]:
    """Why ``out`` may not receive the predictions, or None. Links are resolved: a write goes
    to the target (clfkit.util.atomic), so the target is what must not be an input or a run's file."""
    resolved = out.resolve()
    if out.is_dir():
        return "is a folder"
    if resolved == model.resolve() or _same_file(out, model):
        return "is the model file" + (f" (through the link to {resolved})" if out.is_symlink() else "")
    if resolved.is_relative_to(root.resolve()):
        return f"is inside the image folder {root}"
    if out.exists() and any(_same_file(out, p) for p in images()):
        return "is one of the input images"
    if run_file_refusal(out):
        return run_file_refusal(out)
    for name in {out, resolved}:
        if name.suffix.lower() in NOT_PREDICTIONS or image_files.is_image_file(name):
            return f"names a model or image file ({name}), not a predictions file"
    return overwrite_refusal(out, PREDICTION_SUFFIXES, "predictions file")


def _check_output(out: Path, model: Path, root: Path, images: Callable[[], Iterable[Path]]) -> None:
    """Refuse an output that would replace an input (the model, an image, also through a
    symbolic or hard link, anything inside the image folder), a file of a run folder, a file
    of another kind, or a folder; the suggested path is one that would be accepted.
    ``images()`` walks the inputs again (only when ``out`` exists)."""
    why = _refusal(out, model, root, images)
    if why is None:
        return
    candidates = ([out / "test.txt"] if out.is_dir() else []) + [
        root.resolve().parent / "test.txt",
        Path.cwd() / "test.txt",
    ]
    fine = next((c for c in candidates if _refusal(c, model, root, images) is None), None)
    hint = f"e.g. -o {fine}" if fine is not None else "give a new file name outside the image folder"
    if out.is_dir():
        raise DataError(f"-o {out} is a folder; give a file name, {hint}")
    raise DataError(
        f"-o {out} {why}; predictions are never written over or among the inputs, nor over "
        f"another file. Write them elsewhere, {hint}"
    )


# --------------------------------------------------------------------------- walking the folder
def walk_files(
    root: Path, not_followed: Optional[list[tuple[Path, str]]] = None, _seen: Optional[set] = None
) -> Iterator[Path]:
    """Every non-hidden file under ``root``, lazily, in the order of their relative POSIX paths
    (the order of :func:`image_files.list_images`): one folder's names are sorted with a folder
    keyed as ``name/``, which is where its files fall in that order. Symbolic links to folders
    are followed, as training's walk follows them, except to a folder already walked (a second
    link, or a loop back up); those and unreadable folders go to ``not_followed``."""
    _seen = {image_files.folder_identity(root)} if _seen is None else _seen
    try:
        with os.scandir(root) as it:
            entries = [(e.name, e.is_dir()) for e in it if not e.name.startswith(".")]
    except OSError as e:
        if not_followed is not None:
            not_followed.append((root, f"cannot list the folder ({e.strerror or e})"))
        return
    for name, is_dir in sorted(entries, key=lambda e: e[0] + "/" if e[1] else e[0]):
        if not is_dir:
            yield root / name
            continue
        ident = image_files.folder_identity(root / name)
        if ident in _seen:
            if not_followed is not None:
                not_followed.append(
                    (
                        root / name,
                        "a link to a folder read already, or to one holding it (a loop); not followed",
                    )
                )
            continue
        _seen.add(ident)
        yield from walk_files(root / name, not_followed, _seen)


def _first_image(root: Path, not_followed: list[tuple[Path, str]]) -> Iterator[Path]:
    """All files under ``root`` (lazily); an error now if none is an image."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; give the folder that holds the images")
    files = walk_files(root, not_followed)
    head = []
    for p in files:
        head.append(p)
        if image_files.is_image_file(p):
            return itertools.chain(head, files)
    found = f"only {len(head)} file(s) without an image extension" if head else "nothing"
    raise DataError(
        f"image folder {root} holds no images: {found} (looked recursively for "
        f"{', '.join(image_files.IMAGE_EXTENSIONS)})"
    )


def _chunks(files: Iterator[Path], size: int, skipped: list, root: Path) -> Iterator[list[Path]]:
    """Images in lists of ``size``; other files go to ``skipped`` as they pass."""
    chunk: list[Path] = []
    for p in files:
        if not image_files.is_image_file(p):
            skipped.append((escape_field(p.relative_to(root).as_posix()), "not an image file (extension)"))
            continue
        chunk.append(p)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- decode + infer
def _batches(
    clf: OnnxClassifier, chunks: Iterator[list[Path]], batch_size: int, workers: int
) -> Iterator[tuple[list[Path], list[Optional[str]], Optional[np.ndarray]]]:
    """(chunk, decode error per image or None, logits of the decoded ones) per chunk. Threads
    decode chunk i+1 straight into one of two preallocated NCHW buffers while onnxruntime runs
    chunk i from the other: no stack or copy, and memory bounded by two batches."""
    h, w = clf.image_size
    bufs = [np.empty((batch_size, clf.channels, h, w), np.uint8) for _ in range(2)]

    def decode_into(buf: np.ndarray, j: int, p: Path) -> Optional[str]:
        try:
            buf[j] = prepare(p, clf)
            return None
        except image_files.DecodeError as e:
            return str(e)

    with ThreadPoolExecutor(workers) as pool:
        submit = lambda k, chunk: [pool.submit(decode_into, bufs[k % 2], j, p) for j, p in enumerate(chunk)]  # noqa: E731
        chunk = next(chunks, None)
        pending = submit(0, chunk) if chunk else []
        for i in itertools.count():
            if chunk is None:
                return
            errors = [fut.result() for fut in pending]
            nxt = next(chunks, None)
            if nxt is not None:  # decode the next batch while this one runs
                pending = submit(i + 1, nxt)
            ok = [j for j, err in enumerate(errors) if err is None]
            buf = bufs[i % 2]
            batch = buf[: len(chunk)] if len(ok) == len(chunk) else buf[ok]
            yield chunk, errors, (clf(batch) if ok else None)
            chunk = nxt


# --------------------------------------------------------------------------- writing test.txt
def _line_writer(f, fmt: str, class_names: list[str], topk: int = 1) -> Callable[[str, np.ndarray], None]:
    """A function writing the lines of one batch: (relative paths, logits). Read back by
    :func:`read_ranked`."""
    if topk > 1:
        return _topk_writer(f, fmt, class_names, topk)
    # escaped once: a class name is one field, the last on a "name" line (so its spaces too)
    labels = [escape_field(n, spaces=fmt == "name") for n in class_names]
    table = csv.writer(f, lineterminator="\n") if fmt == "csv" else None
    if table is not None:
        table.writerow(["path", "class", "index", "confidence"])

    def write(rels: list[str], logits: np.ndarray) -> None:
        pred = logits.argmax(1).tolist()
        if table is not None:
            conf = softmax(logits).max(1).tolist()
            table.writerows([rel, labels[k], k, f"{c:.6f}"] for rel, k, c in zip(rels, pred, conf))
        else:
            f.writelines(f"{rel} {labels[k] if fmt == 'name' else k}\n" for rel, k in zip(rels, pred))

    return write


def _topk_writer(f, fmt: str, class_names: list[str], topk: int) -> Callable[[str, np.ndarray], None]:
    """``--topk K``: the K likeliest classes per image, likeliest first. csv: columns
    path,class_1,prob_1,...,class_K,prob_K; name / index: the path and the K classes separated
    by tabs (a path may hold spaces, so "x.jpg tulip daisy" could not say where the path ends;
    a tab in a path or class name is always escaped as \\t)."""
    labels = [escape_field(n) for n in class_names]
    table = csv.writer(f, lineterminator="\n") if fmt == "csv" else None
    if table is not None:
        table.writerow(["path"] + [c for i in range(1, topk + 1) for c in (f"class_{i}", f"prob_{i}")])

    def write(rels: list[str], logits: np.ndarray) -> None:
        probs = softmax(logits)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        for rel, ks, p in zip(rels, order.tolist(), probs):
            if table is not None:
                table.writerow([rel] + [v for k in ks for v in (labels[k], f"{p[k]:.6f}")])
            else:
                f.write("\t".join([rel] + [labels[k] if fmt == "name" else str(k) for k in ks]) + "\n")

    return write


@contextlib.contextmanager
def _progress(root: Path, show: bool) -> Iterator[Callable[[int], None]]:
    """advance(n) for a progress bar with rate on stderr (when ``show``), else a no-op."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:,.0f} images/s")

    total = sum(1 for p in walk_files(root) if image_files.is_image_file(p))  # names only: cheap
    columns = (
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("predict", total=total)
        yield lambda n: bar.advance(task, n)


@dataclass
class PredictResult:
    out: Path
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def predict_folder(
    model_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    out: str | os.PathLike = "test.txt",
    *,
    batch_size: int = 256,
    fmt: str = "name",
    threads: Optional[int] = None,
    workers: Optional[int] = None,
    progress: bool = False,
    topk: int = 1,
) -> PredictResult:
    """Classify every image under ``image_dir``; write ``<relative path> <class>`` lines
    (``fmt="index"``: class indices; ``fmt="csv"``: a CSV with header
    ``path,class,index,confidence``, the confidence being the softmax probability).
    ``workers``: decode threads [all cores, at least 2]; ``progress``: a bar with the rate on
    stderr. ``topk`` > 1: the K likeliest classes per line (see :func:`_topk_writer`)."""
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = Path(image_dir)
    not_followed: list[tuple[Path, str]] = []
    files = _first_image(root, not_followed)
    clf = load_onnx(model_path, threads)
    if not 1 <= topk <= len(clf.class_names):
        raise DataError(
            f"--topk {topk}: the model has {len(clf.class_names)} classes; give 1 to {len(clf.class_names)}"
        )
    _check_output(
        Path(out),
        Path(model_path),
        root,
        lambda: (p for p in walk_files(root) if image_files.is_image_file(p)),
    )
    skipped: list[tuple[str, str]] = []
    written = bad = 0
    chunks = _chunks(files, batch_size, skipped, root)
    with _progress(root, progress) as advance, atomic_open(out, "w") as f:
        write = _line_writer(f, fmt, clf.class_names, topk)
        for chunk, errors, logits in _batches(
            clf, chunks, batch_size, workers or max(2, os.cpu_count() or 1)
        ):
            rels = [escape_field(p.relative_to(root).as_posix()) for p in chunk]
            skipped += [(rel, err) for rel, err in zip(rels, errors) if err]
            bad += sum(err is not None for err in errors)
            if logits is not None:
                write([rel for rel, err in zip(rels, errors) if err is None], logits)
                written += len(logits)
            advance(len(chunk))
        if not written:  # raising here leaves no output file behind
            first = next(((p, e) for p, e in skipped if e != "not an image file (extension)"), ("", ""))
            raise DataError(
                f"none of the {bad} image file(s) under {root} could be decoded "
                f"(first: {first[0]}: {first[1]}); nothing was written"
            )
    skipped += [(escape_field(p.relative_to(root).as_posix()), why) for p, why in not_followed]
    skipped.sort()
    return PredictResult(Path(out), written, skipped)
