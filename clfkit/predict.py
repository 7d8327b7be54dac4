"""Batch inference with onnxruntime over a folder of images, written to ``test.txt``.

Everything needed to prepare an image (size, channels, resize method) comes from the ONNX
file's clfkit metadata; normalization is inside the graph. Files are walked recursively in
sorted order; decoding (threads) overlaps with inference.
"""
from __future__ import annotations

import csv
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from clfkit import imageio
from clfkit.errors import DataError, ModelFileError
from clfkit.io import atomic_open
from clfkit.onnx_contract import INPUT_NAME, META_PREFIX, OUTPUT_NAME, validate_metadata


FORMATS = ("name", "index", "csv")
# -o with one of these suffixes is a mistyped argument order, not a place for predictions
NOT_PREDICTIONS = (".onnx", ".pt", ".pth", ".safetensors", ".npy")

# --------------------------------------------------------------------------- path escaping
# A file name may hold any byte but "/" and NUL, and need not be UTF-8. So that test.txt stays one
# UTF-8 line per image, the path field (and a class name) is escaped: "\\" for a backslash,
# "\n" "\t" "\r" for those, "\xNN" for any other ASCII control character and for each byte of a
# name that is not UTF-8, "\uNNNN" for Unicode line breaks (U+0085, U+2028, U+2029), and a space
# at the very start or end of the field as "\x20" (so stripping a line loses nothing). A class
# name's spaces are "\x20" too: the class is always the last space-separated field.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNESCAPE = re.compile(r"\\(\\|n|t|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")


def _escape_char(ch: str) -> str:
    o = ord(ch)
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, as os.fsdecode (surrogateescape) gives it
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if o in (0x85, 0x2028, 0x2029) or 0xD800 <= o <= 0xDFFF:
        return f"\\u{o:04x}"
    return ch


def escape_field(text: str, *, spaces: bool = False) -> str:
    """One field of a test.txt line; ``spaces=True`` escapes every space (class names)."""
    out = "".join(_escape_char(ch) for ch in text)
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


def read_predictions(path: str | os.PathLike, fmt: str = "name") -> list[tuple[str, str]]:
    """test.txt back as (relative path, class name or index) pairs, unescaped."""
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            rows = list(csv.reader(f))[1:]
            return [(unescape_field(r[0]), r[1]) for r in rows]
        pairs = [line.rstrip("\n").rsplit(" ", 1) for line in f if line.strip()]
    return [(unescape_field(p), unescape_field(c)) for p, c in pairs]


@dataclass
class OnnxClassifier:
    """An onnxruntime session plus the clfkit metadata of the file."""

    session: object
    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    resize: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def load_onnx(path: str | os.PathLike, threads: Optional[int] = None) -> OnnxClassifier:
    """Open an exported clfkit model; a file that is not one gets a clear error."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a model file" if path.is_dir() else "does not exist"
        raise ModelFileError(f"model file {path} {what}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # predict_folder's decode threads share the cores with onnxruntime's: idle onnxruntime
    # workers that spin-wait would take CPU from decoding (and from anyone sharing the machine).
    # The memory arena and memory-pattern planning stay on (their defaults): batches repeat shapes.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelFileError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    meta = sess.get_modelmeta().custom_metadata_map
    fields = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
    logits = next((o for o in outputs if o.name == OUTPUT_NAME), None)
    spec = validate_metadata(fields, str(path), inputs[0].shape if inputs else None, logits.shape if logits else None)
    if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs] \
            or inputs[0].type != "tensor(uint8)":
        raise ModelFileError(f"{path} is an ONNX model but not a clfkit export (it needs one uint8 input "
                             f"{INPUT_NAME!r} and an output {OUTPUT_NAME!r}); export it with `clfkit export RUN_DIR`")
    return OnnxClassifier(sess, spec.class_names, spec.image_size, spec.channels, spec.resize)


def _list_inputs(root: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) under the image folder; an error when there is nothing to classify."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; give the folder that holds the images")
    images, others = imageio.list_images(root)
    if not images:
        found = f"only {len(others)} file(s) without an image extension" if others else "nothing"
        raise DataError(f"image folder {root} holds no images: {found} (looked recursively for "
                        f"{', '.join(imageio.IMAGE_EXTENSIONS)})")
    return images, others


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_output(out: Path, model: Path, root: Path, images: list[Path]) -> None:
    """Refuse an output that would replace an input: the model, an image (also through a symlink
    or a hard link), anything inside the image folder, or a folder."""
    if out.is_dir():
        raise DataError(f"-o {out} is a folder; give a file name, e.g. {out / 'test.txt'}")
    resolved = out.resolve()
    why = None
    if resolved == model.resolve() or _same_file(out, model):
        why = "is the model file"
    elif resolved.is_relative_to(root.resolve()):
        why = f"is inside the image folder {root}"
    elif out.exists() and any(_same_file(out, p) for p in images):
        why = "is one of the input images"
    elif out.suffix.lower() in NOT_PREDICTIONS or imageio.is_image_file(out):
        why = f"names a model or image file ({out.suffix}), not a predictions file"
    if why:
        raise DataError(f"-o {out} {why}; predictions are never written over or among the inputs. "
                        f"Write them elsewhere, e.g. -o {root.resolve().parent / 'test.txt'}")


@dataclass
class PredictResult:
    out: Path
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def predict_folder(model_path: str | os.PathLike, image_dir: str | os.PathLike, out: str | os.PathLike = "test.txt",
                   *, batch_size: int = 256, fmt: str = "name", threads: Optional[int] = None) -> PredictResult:
    """Classify every image under ``image_dir``; write ``<relative path> <class>`` lines
    (``fmt="index"``: class indices; ``fmt="csv"``: a CSV with header
    ``path,class,index,confidence``, the confidence being the softmax probability)."""
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = Path(image_dir)
    images, others = _list_inputs(root)
    clf = load_onnx(model_path, threads)
    _check_output(Path(out), Path(model_path), root, images)
    skipped = [(escape_field(p.relative_to(root).as_posix()), "not an image file (extension)") for p in others]

    h, w = clf.image_size
    # escaped once: a class name is one field, the last on a "name" line (so its spaces too)
    labels = [escape_field(n, spaces=fmt == "name") for n in clf.class_names]

    def decode_into(buf: np.ndarray, j: int, p: Path) -> Optional[str]:
        """Decode straight into row ``j`` of a preallocated NCHW batch: no stack or copy later."""
        try:
            buf[j] = imageio.decode(p, clf.image_size, clf.channels, clf.resize).transpose(2, 0, 1)
            return None
        except imageio.DecodeError as e:
            return str(e)

    chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    # Two batch buffers: threads decode batch i+1 into one while onnxruntime reads the other.
    bufs = [np.empty((min(batch_size, len(images)), clf.channels, h, w), np.uint8) for _ in range(2)]
    written = 0
    with ThreadPoolExecutor(max(2, (os.cpu_count() or 1))) as pool, atomic_open(out, "w") as f:
        table = csv.writer(f, lineterminator="\n") if fmt == "csv" else None
        if table is not None:
            table.writerow(["path", "class", "index", "confidence"])
        submit = lambda k: [pool.submit(decode_into, bufs[k % 2], j, p) for j, p in enumerate(chunks[k])]  # noqa: E731
        pending = submit(0)
        for i, chunk in enumerate(chunks):
            errors = [fut.result() for fut in pending]
            if i + 1 < len(chunks):  # decode the next batch while this one runs
                pending = submit(i + 1)
            skipped += [(escape_field(p.relative_to(root).as_posix()), err) for p, err in zip(chunk, errors) if err]
            ok = [j for j, err in enumerate(errors) if err is None]
            if not ok:
                continue
            buf = bufs[i % 2]
            batch = buf[:len(chunk)] if len(ok) == len(chunk) else buf[ok]
            logits = clf(batch)
            pred = logits.argmax(1)
            if table is not None:
                z = np.exp(logits - logits.max(1, keepdims=True))
                conf = (z.max(1) / z.sum(1)).tolist()
            for n, (j, k) in enumerate(zip(ok, pred.tolist())):
                rel = escape_field(chunk[j].relative_to(root).as_posix())
                if table is not None:
                    table.writerow([rel, labels[k], k, f"{conf[n]:.6f}"])
                else:
                    f.write(f"{rel} {labels[k] if fmt == 'name' else k}\n")
                written += 1
        if not written:  # raising here leaves no output file behind
            first = skipped[len(others)] if len(skipped) > len(others) else ("", "")
            raise DataError(f"none of the {len(images)} image file(s) under {root} could be decoded "
                            f"(first: {first[0]}: {first[1]}); nothing was written")
    skipped.sort()
    return PredictResult(Path(out), written, skipped)
