"""Running an exported clfkit model with onnxruntime: open and check the file
(:func:`load_onnx`), turn one input into the array the graph takes (:func:`prepare`), and
:class:`Predictor`, the Python API (``Predictor("m.onnx").predict(items, topk=3)``).

numpy, PIL and onnxruntime only: a deployment machine needs no torch. ``clfkit predict``
(:mod:`clfkit.deploy.batch_predict`) uses the same session settings and the same :func:`prepare`, so the
two give the same classes and probabilities for the same images.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image

from clfkit.data import image_files
from clfkit.errors import DataError, ModelFileError
from clfkit.deploy.onnx_contract import INPUT_NAME, META_PREFIX, OUTPUT_NAME, validate_metadata

Item = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class OnnxClassifier:
    """An onnxruntime session plus the clfkit metadata of the file."""

    session: Any
    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    resize: str
    metadata: dict[str, str]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 logits (N, classes); ModelFileError when the graph gives
        something else (a hand-made file with clfkit's names and metadata)."""
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        want = (len(batch), len(self.class_names))
        if out.shape != want or not np.issubdtype(out.dtype, np.floating):
            raise ModelFileError(
                f"the model's output {OUTPUT_NAME!r} is {out.dtype} {out.shape} for {len(batch)} "
                f"image(s), not float logits {want} (one per class); it is not a clfkit export: "
                f"export it with `clfkit export RUN_DIR`"
            )
        return out


def _session_options(threads: Optional[int]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Decode threads share the cores with onnxruntime's: idle onnxruntime workers that
    # spin-wait would take CPU from decoding (and from anyone sharing the machine). The memory
    # arena and memory-pattern planning stay on (their defaults): batches repeat shapes.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def load_onnx(path: str | os.PathLike, threads: Optional[int] = None) -> OnnxClassifier:
    """Open an exported clfkit model; a file that is not one gets a clear error."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        try:  # a FIFO or a device exists: "does not exist" would send the user looking elsewhere
            what = f"is {image_files.file_kind(os.stat(path).st_mode)}, not a model file"
        except OSError:
            what = "does not exist"
        raise ModelFileError(f"model file {path} {what}")
    try:
        sess = ort.InferenceSession(
            str(path), sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise ModelFileError(
            f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]})"
        ) from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    meta = sess.get_modelmeta().custom_metadata_map
    fields = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
    logits = next((o for o in outputs if o.name == OUTPUT_NAME), None)
    spec = validate_metadata(
        fields, str(path), inputs[0].shape if inputs else None, logits.shape if logits else None
    )
    if (
        [i.name for i in inputs] != [INPUT_NAME]
        or OUTPUT_NAME not in [o.name for o in outputs]
        or inputs[0].type != "tensor(uint8)"
    ):
        raise ModelFileError(
            f"{path} is an ONNX model but not a clfkit export (it needs one uint8 input "
            f"{INPUT_NAME!r} and an output {OUTPUT_NAME!r}); export it with `clfkit export RUN_DIR`"
        )
    return OnnxClassifier(sess, spec.class_names, spec.image_size, spec.channels, spec.resize, fields)


def _array_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise DataError(
            f"an array item must be uint8 HxW or HxWxC with C in 1, 3, 4; got {arr.dtype} {arr.shape}"
            + (
                " (N grayscale images: an (N, H, W, 1) array or a list of HxW arrays)"
                if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)
                else ""
            )
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    # PIL shares a contiguous array's memory read-only: every step after this makes a new image
    return Image.fromarray(np.ascontiguousarray(arr))


def prepare(item: Item, clf: OnnxClassifier) -> np.ndarray:
    """One input -> the (C, H, W) uint8 array the graph takes, through :mod:`clfkit.data.image_files`
    exactly as in training: an image file is decoded; a PIL image is read as that file would be
    (turned upright by its EXIF orientation); an HxW[xC] uint8 array (RGB order) is pixels
    already decoded, so no EXIF applies. All three are converted and resized as the model's
    metadata says, under the same pixel limit; the caller's objects are never changed.
    Raises image_files.DecodeError (a DataError)."""
    if isinstance(item, (str, os.PathLike)):
        hwc = image_files.decode(item, clf.image_size, clf.channels, clf.resize)
    elif isinstance(item, Image.Image):
        hwc = image_files.decode_callers_image(item, clf.image_size, clf.channels, clf.resize)
    elif isinstance(item, np.ndarray):
        img = _array_image(item)
        image_files.check_pixels(img)
        hwc = image_files.decode_image(img, clf.image_size, clf.channels, clf.resize, orientation=1)
    else:
        raise DataError(f"cannot classify a {type(item).__name__}: give a path, a PIL image or a uint8 array")
    return hwc.transpose(2, 0, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (probabilities that sum to 1 to print precision)."""
    z = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    """The ``topk`` most probable classes of one item, most probable first."""

    classes: list[str]
    probs: list[float]
    indices: list[int]

    @property
    def label(self) -> str:
        """The top-1 class name."""
        return self.classes[0]

    @property
    def prob(self) -> float:
        """The top-1 probability."""
        return self.probs[0]


class Predictor:
    """Classify images with an exported clfkit model, no torch needed::

        p = Predictor("exported/run.onnx")
        p.predict(["a.jpg", pil_image, hwc_uint8_array], topk=3)  # one Prediction per item

    Items are decoded and resized exactly as ``clfkit predict`` does, ``batch_size`` at a time
    (decoding in ``workers`` threads), so memory does not grow with the number of items.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        batch_size: int = 64,
        threads: Optional[int] = None,
        workers: Optional[int] = None,
    ) -> None:
        self.batch_size = _count("batch_size", batch_size)
        threads = None if threads is None else _count("threads", threads)
        self.workers = max(2, os.cpu_count() or 1) if workers is None else _count("workers", workers)
        self.model = load_onnx(model, threads)

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in the order of its outputs."""
        return self.model.class_names

    def logits(self, items: Item | Iterable[Item]) -> Iterator[np.ndarray]:
        """float32 logits (n, classes) per batch of up to ``batch_size`` items, in order; a
        single item (as :meth:`predict` reads one) is one batch of one."""
        clf = self.model
        _, iterator = _items(items)
        with ThreadPoolExecutor(self.workers) as pool:
            for start, chunk in _chunks(iterator, self.batch_size):
                yield clf(
                    np.stack(
                        list(
                            pool.map(
                                _prepare_nth, range(start, start + len(chunk)), chunk, [clf] * len(chunk)
                            )
                        )
                    )
                )

    def predict(self, items: Item | Iterable[Item], topk: int = 1) -> Prediction | list[Prediction]:
        """The ``topk`` classes and softmax probabilities of each item: one :class:`Prediction`
        for a single path, PIL image or HxW / HxWxC array, else a list in the order of ``items``
        (a list, a generator, or an (N, H, W, C) array)."""
        single, _ = _items(items)
        k = min(_count("topk", topk), len(self.class_names))
        out = []
        for logits in self.logits(items):
            probs = softmax(logits)
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            out += [
                Prediction(
                    [self.class_names[i] for i in row],
                    [float(probs[n, i]) for i in row],
                    [int(i) for i in row],
                )
                for n, row in enumerate(order)
            ]
        return out[0] if single else out


def _count(name: str, value: Any) -> int:
    """A whole number of at least 1 for the argument ``name``, or a DataError saying so."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _items(items: Any) -> tuple[bool, Iterator]:
    """(whether ``items`` is one item, an iterator over the items): the one reading of what
    :meth:`Predictor.predict` and :meth:`Predictor.logits` are given. One item: a path, a PIL
    image, an HxW or HxWxC array; many: a list, tuple or generator of those, or an (N, H, W, C)
    array. A 3-d array is always one HxWxC image, never N grayscale images (which (N, H, W, 1)
    says without doubt)."""
    single = isinstance(items, (str, os.PathLike, Image.Image)) or (
        isinstance(items, np.ndarray) and items.ndim in (2, 3)
    )
    return single, iter([items]) if single else _iterate(items)


def _iterate(items: Any) -> Iterator:
    """The items of a list, tuple, generator or (N, H, W, C) array; a DataError for what only
    looks iterable (bytes, a string, an open file, a dict, a 0-d or 1-d array) or is not."""
    if isinstance(items, np.ndarray) and items.ndim != 4:
        raise DataError(
            f"an array of items must be (N, H, W, C) uint8 (an HxW or HxWxC array is one image), "
            f"got shape {items.shape}"
        )
    what = (
        f"cannot classify a {type(items).__name__}: give a path, a PIL image, a uint8 array or a list of them"
    )
    if isinstance(items, (bytes, bytearray, memoryview)) or hasattr(items, "read"):
        raise DataError(f"{what} (for encoded image bytes: PIL.Image.open(io.BytesIO(data)))")
    if isinstance(items, (str, dict)):
        raise DataError(what)
    try:
        return iter(items)
    except TypeError:
        raise DataError(what) from None


def _prepare_nth(n: int, item: Item, clf: OnnxClassifier) -> np.ndarray:
    """:func:`prepare`, its DataError saying which item (its number, and its path if it has one)."""
    try:
        return prepare(item, clf)
    except DataError as e:
        where = f"item {n}" + (f" ({os.fspath(item)})" if isinstance(item, (str, os.PathLike)) else "")
        raise type(e)(f"{where}: {e}") from None


def _chunks(it: Iterator, size: int) -> Iterator[tuple[int, list]]:
    """(number of the first item, up to ``size`` items) until ``it`` ends."""
    start = 0
    while True:
        chunk = [x for _, x in zip(range(size), it)]
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)
