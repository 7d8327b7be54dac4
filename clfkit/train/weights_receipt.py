"""Weights in, with a receipt: which tensors of a weights file a model took, which it keeps
freshly initialized and why, and which the file had that the model does not.

Used by the timm model's ``weights:`` (clfkit.components.models) and by the recipe's
``init:`` (clfkit.train.init_weights). A file matching fewer than ``min_match`` of the model's tensors
holds another architecture: that is an error, never a silent start from scratch. The trainer
prints :meth:`WeightsReceipt.line` and writes :meth:`WeightsReceipt.to_dict` to weights.json.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Optional

import torch

from clfkit.errors import ModelFileError

# where a training checkpoint (clfkit's, timm's train.py, a Lightning-like dict) keeps its weights
_WRAPPER_KEYS = ("model", "state_dict_ema", "state_dict", "model_state_dict")


@dataclass
class WeightsReceipt:
    """What loading ``source`` into a model did. ``reinitialized`` and ``unexpected``: (tensor
    name, why); ``adapted``: loaded after a change (a first conv for other input channels)."""

    source: str
    field: str  # the recipe field that asked for it: init, model.weights
    total: int  # the model's tensors (parameters and buffers) considered
    loaded: list[str] = dc_field(default_factory=list)
    adapted: list[tuple[str, str]] = dc_field(default_factory=list)
    reinitialized: list[tuple[str, str]] = dc_field(default_factory=list)
    unexpected: list[tuple[str, str]] = dc_field(default_factory=list)
    how: str = "by name and shape"
    head: Optional[str] = None  # what became of the classifier when it did not load as is
    notes: list[str] = dc_field(default_factory=list)  # said on the console and in weights.json

    def line(self) -> str:
        """The console line (counts and the main reason), then one line per note."""
        head_reinit = self.head and all(w != self.head for _, w in self.adapted)  # else said as adapted
        why = f" ({self.head})" if head_reinit else ""
        reasons = "; ".join(dict.fromkeys(w for _, w in self.adapted))
        adapted = f", {len(self.adapted)} adapted ({reasons})" if self.adapted else ""
        notes = "".join(f"\n{self.field}: note: {n}" for n in self.notes)
        return (
            f"{self.field}: {self.source}: {len(self.loaded)}/{self.total} tensors loaded{adapted}, "
            f"{len(self.reinitialized)} re-initialized{why}, {len(self.unexpected)} unexpected "
            f"[weights.json]{notes}"
        )

    def to_dict(self) -> dict[str, Any]:
        """weights.json's entry: every list in full."""
        return {
            "source": self.source,
            "field": self.field,
            "how": self.how,
            "total": self.total,
            "loaded": self.loaded,
            "adapted": [{"tensor": k, "why": w} for k, w in self.adapted],
            "reinitialized": [{"tensor": k, "why": w} for k, w in self.reinitialized],
            "unexpected": [{"tensor": k, "why": w} for k, w in self.unexpected],
            "head": self.head,
            "notes": self.notes,
        }


def read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """A weights file as {name: tensor}: .safetensors, a torch state dict, or a training
    checkpoint wrapping one (under model / state_dict_ema / state_dict); a ``module.`` prefix
    (DDP) is dropped. Anything else is a clear error naming ``what`` (the recipe field) and the file."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a file that is not theirs
        # torch's weights_only refusal is a page about pickle; the type says enough
        cause = (
            ""
            if "Weights only load failed" in str(e)
            else f": {str(e).splitlines()[0][:160]}"
            if str(e)
            else ""
        )
        raise ModelFileError(
            f"{what} {path} cannot be read as a state dict ({type(e).__name__}{cause}); "
            f"give a .safetensors file or a torch.save()d state dict of tensors"
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ModelFileError(
            f"{what} {path} is not a state dict (a mapping of parameter names to "
            f"tensors); got {type(state).__name__}"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def compare(
    own: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    *,
    source: str,
    field_name: str,
    head: Iterable[str] = (),
    first_conv: Optional[str] = None,
) -> WeightsReceipt:
    """The receipt of loading ``state`` into a model whose state dict is ``own``, by name and
    shape. ``head``: the classifier's tensor names, loaded whole or not at all (an old bias
    under a new weight would be neither model); when only their class count differs the
    receipt says so. ``first_conv`` (a weight name) counts as adapted when only its input
    channels differ (timm adapts it)."""
    receipt = WeightsReceipt(source=source, field=field_name, total=len(own))
    head = [k for k in own if k in set(head)]
    for k, v in own.items():
        if k in head:
            continue
        why = _mismatch(v, state.get(k))
        if why is None:
            receipt.loaded.append(k)
        elif k == first_conv and k in state and state[k].ndim == 4 and state[k].shape[0] == v.shape[0]:
            receipt.adapted.append((k, f"first conv {state[k].shape[1]} -> {v.shape[1]} input channels"))
        else:
            receipt.reinitialized.append((k, why))
    receipt.unexpected = [(k, "not in the model") for k in state if k not in own]
    if head:
        _compare_head(receipt, {k: own[k] for k in head}, state)
    return receipt


def _mismatch(mine: torch.Tensor, theirs: Optional[torch.Tensor]) -> Optional[str]:
    """Why the file's tensor cannot load into the model's (None when it can)."""
    if theirs is None:
        return "not in the file"
    if tuple(theirs.shape) != tuple(mine.shape):
        return f"shape in the file {tuple(theirs.shape)}, in the model {tuple(mine.shape)}"
    return None


def _compare_head(
    receipt: WeightsReceipt, head: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> None:
    """The classifier's tensors: all loaded, or all re-initialized with the true reason (other
    class counts; else the first tensor that does not fit, which costs the whole head)."""
    problems = [(k, _mismatch(v, state.get(k))) for k, v in head.items()]
    problems = [(k, why) for k, why in problems if why is not None]
    if not problems:
        receipt.loaded += list(head)
        return
    owner = head_owner(head)
    counts = class_counts(head, state)
    if counts is not None:
        why = f"classifier {counts[0]} -> {counts[1]} classes"
        receipt.head = f"classifier {owner} {counts[0]} -> {counts[1]} classes"
    else:
        k, first = problems[0]
        why = f"classifier loaded whole or not at all: {k}: {first}"
        receipt.head = f"classifier {owner}: {k}: {first}"
    receipt.reinitialized += [(k, why) for k in head]


def head_owner(head: Iterable[str]) -> str:
    """The module(s) that hold the head tensors ``head``, for messages: "net.fc"."""
    return ", ".join(dict.fromkeys(k.rsplit(".", 1)[0] for k in head))


def class_counts(head: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> Optional[tuple[int, int]]:
    """(classes in the file, classes in the model) when every head tensor is in the file and
    differs from the model's in its first (class) dimension only; else None."""
    counts = set()
    for k, v in head.items():
        theirs = state.get(k)
        if (
            theirs is None
            or theirs.ndim != v.ndim
            or v.ndim == 0
            or tuple(theirs.shape[1:]) != tuple(v.shape[1:])
        ):
            return None
        counts.add((int(theirs.shape[0]), int(v.shape[0])))
    return next(iter(counts)) if len(counts) == 1 else None


def require_match(receipt: WeightsReceipt, min_match: float, bar_field: str) -> None:
    """Refuse a file that matches fewer than ``min_match`` of the model's tensors: it holds
    weights of another architecture (the error names the file and the first mismatches)."""
    matched = len(receipt.loaded) + len(receipt.adapted)
    if matched >= min_match * receipt.total:
        return
    head_only = all(why.startswith("classifier") for _, why in receipt.reinitialized)
    if receipt.head and head_only and not receipt.unexpected:
        # the classifier is all that differs: the file is this architecture, the model is mostly head
        raise ModelFileError(
            f"{receipt.field} {receipt.source}: only the classifier differs ({receipt.head}), but it is "
            f"{len(receipt.reinitialized)} of the model's {receipt.total} tensors, so {matched} would load "
            f"(needs {min_match:g} of them): next to nothing to start from. Train without {receipt.field}"
            + (f", or lower the bar with {bar_field}" if matched else "")
        )
    first = "; ".join(f"{k} ({why})" for k, why in receipt.reinitialized[:3])
    extra = "; ".join(k for k, _ in receipt.unexpected[:3])
    raise ModelFileError(
        f"{receipt.field} {receipt.source} matches only {matched} of the model's {receipt.total} tensors "
        f"(needs {min_match:g} of them), so it holds weights of another architecture; first mismatches: "
        f"{first}"
        + (f"; in the file but not the model: {extra}" if extra else "")
        + f". Use weights saved from this model, or lower the bar with {bar_field}"
    )
