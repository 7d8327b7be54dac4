"""The contract between exporter and predictor: the metadata names of an exported ONNX file, the
pre-processing it promises (input name, dtype, layout, size, channels, resize), and the one
validator everything that reads an exported model goes through.

No torch here: predict imports this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from clfkit.errors import ModelFileError

INPUT_NAME, OUTPUT_NAME = "image", "logits"
META_PREFIX = "clfkit."
META_FORMAT = 1
REQUIRED = ("class_names", "image_size", "channels", "resize")
RESIZE_METHODS = ("squash", "crop")
CHANNELS = (1, 3)
# Each side at most this, and no more pixels than a decodable image may have (image_files.MAX_PIXELS).
MAX_SIDE, MAX_PIXELS = 16384, 64_000_000


@dataclass
class ModelSpec:
    """What a predictor needs to prepare images and name the outputs, all checked."""

    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    resize: str


class _Bad(Exception):
    """One field's problem: (field, what is wrong and what is valid)."""


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError:
        raise _Bad(key, f"is not JSON: {meta[key][:60]!r}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _class_names(meta: dict[str, str], n_outputs: Optional[int]) -> list[str]:
    names = _json(meta, "class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _Bad(
            "class_names", f"must be a JSON list of non-empty strings, got {meta['class_names'][:60]!r}"
        )
    if len(set(names)) != len(names):
        raise _Bad("class_names", "holds a name twice; class names must be unique")
    if n_outputs is not None and len(names) != n_outputs:
        raise _Bad("class_names", f"lists {len(names)} classes but the graph outputs {n_outputs} logits")
    return names


def _image_size(meta: dict[str, str], graph_hw: tuple) -> tuple[int, int]:
    size = _json(meta, "image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
        raise _Bad(
            "image_size", f"must be a JSON list [height, width] of integers, got {meta['image_size'][:60]!r}"
        )
    h, w = size
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and h * w <= MAX_PIXELS):
        raise _Bad(
            "image_size", f"{[h, w]} is out of range (each side 1..{MAX_SIDE}, at most {MAX_PIXELS:,} pixels)"
        )
    if all(_is_int(d) for d in graph_hw) and tuple(graph_hw) != (h, w):
        raise _Bad("image_size", f"says {[h, w]} but the graph's input is {list(graph_hw)}")
    return h, w


def _channels(meta: dict[str, str], graph_c: Any) -> int:
    text = meta["channels"].strip()
    if text not in ("1", "3"):
        raise _Bad("channels", f"must be 1 or 3, got {meta['channels'][:60]!r}")
    if _is_int(graph_c) and graph_c != int(text):
        raise _Bad("channels", f"says {text} but the graph's input has {graph_c} channels")
    return int(text)


def _stats(meta: dict[str, str], key: str, channels: int) -> None:
    """mean/std are inside the graph; wrong ones mean the file was edited, so refuse it."""
    if key not in meta:
        return
    v = _json(meta, key)
    ok = (
        isinstance(v, list)
        and len(v) == channels
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )
    if not ok or (key == "std" and any(x <= 0 for x in v)):
        raise _Bad(
            key,
            f"must be a JSON list of {channels} finite numbers{' > 0' if key == 'std' else ''} "
            f"(one per channel), got {meta[key][:60]!r}",
        )


def _format(meta: dict[str, str]) -> None:
    if "format" not in meta:
        return
    text = meta["format"].strip()
    if not text.isdigit():
        raise _Bad("format", f"must be an integer, got {meta['format'][:60]!r}")
    if int(text) > META_FORMAT:
        raise _Bad(
            "format", f"is {text}: written by a newer clfkit (this one reads {META_FORMAT}); upgrade clfkit"
        )


def validate_metadata(
    meta: dict[str, str], source: str, input_shape: Optional[list] = None, output_shape: Optional[list] = None
) -> ModelSpec:
    """Check an exported model's clfkit metadata (keys without the prefix) against its graph's
    input (N, C, H, W) and output (N, classes) shapes; ModelFileError names the bad field."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(
            f"{source} lacks clfkit metadata ({', '.join(META_PREFIX + k for k in missing)}); "
            f"export it again with `clfkit export RUN_DIR`"
        )
    in_shape = list(input_shape) if input_shape and len(input_shape) == 4 else [None] * 4
    out_shape = list(output_shape) if output_shape and len(output_shape) == 2 else [None] * 2
    try:
        _format(meta)
        channels = _channels(meta, in_shape[1])
        spec = ModelSpec(
            _class_names(meta, out_shape[1] if _is_int(out_shape[1]) else None),
            _image_size(meta, tuple(in_shape[2:])),
            channels,
            meta["resize"].strip(),
        )
        if spec.resize not in RESIZE_METHODS:
            raise _Bad("resize", f"must be one of {', '.join(RESIZE_METHODS)}, got {meta['resize'][:60]!r}")
        _stats(meta, "mean", channels)
        _stats(meta, "std", channels)
    except _Bad as e:
        field, why = e.args
        raise ModelFileError(
            f"{source}: metadata field {META_PREFIX}{field} {why}. The file was edited or "
            f"damaged; export the run again with `clfkit export RUN_DIR`"
        ) from None
    return spec


def build_metadata(class_names: list[str], input_spec: dict[str, Any], **extra: str) -> dict[str, str]:
    """The metadata the exporter writes (keys without the prefix); ``extra`` adds free-text fields."""
    h, w = input_spec["image_size"]
    c = input_spec["channels"]
    return {
        "format": str(META_FORMAT),
        "class_names": json.dumps(class_names),
        "image_size": json.dumps([h, w]),
        "channels": str(c),
        "color": "RGB" if c == 3 else "L",
        "resize": input_spec.get("resize", "squash"),
        "mean": json.dumps(input_spec["mean"]),
        "std": json.dumps(input_spec["std"]),
        **extra,
    }
