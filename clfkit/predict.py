"""Batch inference with onnxruntime over a folder of images, written to ``test.txt``.

Everything needed to prepare an image (size, channels, resize method) comes from the ONNX
file's clfkit metadata; normalization is inside the graph. Files are walked recursively in
sorted order; decoding (threads) overlaps with inference.
"""
from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from clfkit import imageio
from clfkit.errors import DataError, ModelFileError
from clfkit.export import INPUT_NAME, META_PREFIX, OUTPUT_NAME
from clfkit.io import atomic_open


FORMATS = ("name", "index", "csv")


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
        raise ModelFileError(f"model file {path} does not exist")
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
    meta = sess.get_modelmeta().custom_metadata_map
    need = ["class_names", "image_size", "channels"]
    missing = [k for k in need if META_PREFIX + k not in meta]
    if missing:
        raise ModelFileError(f"{path} is an ONNX model but lacks clfkit metadata ({', '.join(META_PREFIX + k for k in missing)}); "
                             f"export it with `clfkit export RUN_DIR`")
    try:
        names = json.loads(meta[META_PREFIX + "class_names"])
        h, w = json.loads(meta[META_PREFIX + "image_size"])
        c = int(meta[META_PREFIX + "channels"])
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: malformed clfkit metadata ({e})") from None
    return OnnxClassifier(sess, names, (h, w), c, meta.get(META_PREFIX + "resize", "squash"))


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
    clf = load_onnx(model_path, threads)
    root = Path(image_dir)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    images, others = imageio.list_images(root)
    skipped = [(p.relative_to(root).as_posix(), "not an image file (extension)") for p in others]
    if not images:
        raise DataError(f"{root} holds no images (looked recursively for {', '.join(imageio.IMAGE_EXTENSIONS)})")

    h, w = clf.image_size

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
            skipped += [(p.relative_to(root).as_posix(), err) for p, err in zip(chunk, errors) if err]
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
                rel = chunk[j].relative_to(root).as_posix()
                if table is not None:
                    table.writerow([rel, clf.class_names[k], k, f"{conf[n]:.6f}"])
                else:
                    f.write(f"{rel} {clf.class_names[k] if fmt == 'name' else k}\n")
                written += 1
    skipped.sort()
    return PredictResult(Path(out), written, skipped)
