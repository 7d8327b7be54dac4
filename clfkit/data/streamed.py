"""A streamed split: a train split that is never held whole, in memory or on disk. Its images
are read from WebDataset shards batch by batch while the epoch trains
(clfkit.train.engine.stream_batches); what the rest of clfkit needs of a train split besides the
batches (its size, class counts, input shape, a sample of images for the normalization
statistics, the exporter's parity samples and int8 calibration) it answers from the shards'
manifest and from ``images``: the first HEAD images of the stream, decoded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clfkit.data import image_files, raw_pixels
from clfkit.data.blobs import decode_blob
from clfkit.data.shards import Sample, Shards, read_shard
from clfkit.errors import DataError

HEAD = 2048  # images decoded at load: channels (auto), normalization statistics, parity samples


@dataclass
class Decoding:
    """How a raw sample becomes (HWC uint8 array, class index)."""

    class_names: list[str]
    size: tuple[int, int]
    channels: int
    resize: str

    def label(self, sample: Sample) -> int:
        """The class index of ``sample``; ValueError saying why when it has none."""
        text = sample.label
        if text is None or text == "":
            raise ValueError("no label" + sample.hint)
        n = len(self.class_names)
        if text.lstrip("-").isdigit():
            i = int(text)
            if 0 <= i < n:
                return i
            raise ValueError(f"label {i} is outside the {n} classes (0..{n - 1})")
        if text in self.class_names:
            return self.class_names.index(text)
        raise ValueError(f"label {text!r} is not one of the {n} classes")

    def __call__(self, sample: Sample) -> tuple[np.ndarray, int]:
        """(HWC uint8, class index); ValueError (bad label) or DecodeError (bad image)."""
        y = self.label(sample)
        if not sample.image:
            raise ValueError("no image in the sample")
        if sample.image.startswith(raw_pixels.MAGIC):
            return raw_pixels.decode(sample.image, self.size, self.channels, self.resize), y
        return decode_blob(sample.image, self.size, self.channels, self.resize)[0], y


@dataclass
class Decoded:
    """Samples of shards, decoded: (N, C, H, W) uint8, labels, where each came from (``SHARD#key``,
    the shard's path or URL), and the index of the shard a limit stopped the reading in (the
    number of shards when every sample was read)."""

    images: np.ndarray
    labels: np.ndarray
    where: list[str]
    stopped_in: int


def read_all(
    shards: Shards,
    decoding: Decoding,
    on_error: str,
    skipped: list[tuple[str, str]],
    limit: int | None = None,
) -> Decoded:
    """Every sample of ``shards`` (or the first ``limit`` good ones), decoded; bad samples listed
    in ``skipped`` or, with on_error: fail, an error. A shard is read up to its count, as an epoch
    reads it (one holding more is an error: clfkit.data.shards.read_shard)."""
    images, labels, where = [], [], []
    for shard, (url, count) in enumerate(zip(shards.urls, shards.counts)):
        for s in read_shard(
            url, 0, count, image_key=shards.image_key, label_key=shards.label_key, expected=count
        ):
            if limit is not None and len(images) >= limit:
                return _stacked(images, labels, where, decoding, stopped_in=shard)
            try:
                x, y = decoding(s)
            except (ValueError, image_files.DecodeError) as e:
                if on_error == "fail":
                    raise DataError(
                        f"{url}: sample {s.key!r}: {e} (set data.on_error: skip to skip such samples)"
                    ) from None
                skipped.append((f"{url}#{s.key}", str(e)))
                continue
            images.append(x.transpose(2, 0, 1))
            labels.append(y)
            where.append(f"{url}#{s.key}")
    return _stacked(images, labels, where, decoding, stopped_in=len(shards.urls))


def _stacked(images: list, labels: list, where: list[str], decoding: Decoding, stopped_in: int) -> Decoded:
    c, (h, w) = decoding.channels, decoding.size
    x = np.stack(images) if images else np.zeros((0, c, h, w), np.uint8)
    return Decoded(x, np.asarray(labels, dtype=np.int64), where, stopped_in)


@dataclass
class StreamedSplit:
    """The train split of a shard source. ``images`` is the stream's head (a uint8 tensor of at
    most HEAD images, shard order), not the split; ``len()`` is the whole split."""

    shards: Shards
    decoding: Decoding
    on_error: str
    shuffle_buffer: int
    images: torch.Tensor  # the head
    head_labels: torch.Tensor
    head_paths: list[str]  # ``SHARD#key`` of each head image
    head_stopped_in: int  # the shard the head's limit stopped in (len(shards.urls): none)
    streamed: bool = field(default=True, init=False)
    labels = None  # no per-image label tensor: the labels arrive with the batches
    paths = None

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def head_complete(self) -> bool:
        """Does the head hold every readable image of the split?"""
        return self.head_stopped_in >= len(self.shards.urls)

    @property
    def labelled(self) -> bool:
        return True

    def class_counts(self) -> list[int] | None:
        """Images per class from the shards' manifest (clfkit data pack writes them), else None."""
        return self.shards.per_class

    def describe(self) -> str:
        where = (
            self.shards.urls[0]
            if len(self.shards.urls) == 1
            else f"{self.shards.urls[0]} ... ({len(self.shards.urls)} shards)"
        )
        return f"streamed from WebDataset shards {where}"


def is_streamed(split) -> bool:
    return getattr(split, "streamed", False)
