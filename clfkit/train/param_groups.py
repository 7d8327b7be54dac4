"""Parameters by depth: which ones form the classifier head, which layer every other one sits
in, and the optimizer's LR groups for ``optim.layer_decay`` and ``optim.head_lr_mult``.

The head is the model's classifier: a timm model's ``get_classifier()``, otherwise the module
that owns the model's last parameter (the final Linear of clfkit's models and of most plugin
models). Layers come from the model's ``group_matcher(coarse=False)``, the method timm's models
define (clfkit's linear, mlp, cnn and resnet define it too), read by timm's own
``group_parameters``: layer 0 is the stem, the highest layer the head. Layer ``i`` of ``L``
learns at ``lr x layer_decay ** (L - i)`` (BEiT's layer-wise decay, as timm's
``param_groups_layer_decay``), the head at ``lr x head_lr_mult``.

The groups carry ``lr_scale``; the optimizer's ``lr`` of each group is scaled once, after the
optimizer is built, so the schedule (LambdaLR: one base LR per group) keeps the ratios.
Weight-decay exclusion (the ``no_decay_norm_bias`` regularizer) splits these groups further and
keeps each one's ``lr_scale``: the two compose.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from clfkit.errors import RecipeError


def head_names(net: nn.Module) -> set[str]:
    """Names (relative to ``net``) of the classifier head's parameters."""
    get_classifier = getattr(net, "get_classifier", None)
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        head = get_classifier()
        owner = next((n for n, m in net.named_modules() if m is head), None)
        if owner is not None and any(True for _ in head.parameters()):
            return {f"{owner}.{n}" if owner else n for n, _ in head.named_parameters()}
    names = [n for n, _ in net.named_parameters()]
    if not names:
        return set()
    owner = names[-1].rsplit(".", 1)[0] if "." in names[-1] else ""
    return {n for n in names if (n.rsplit(".", 1)[0] if "." in n else "") == owner}


def layer_ids(net: nn.Module, model_name: str) -> dict[str, int]:
    """Parameter name -> layer (0: the stem) from the model's ``group_matcher``; a model
    without one cannot be decayed by layer: a RecipeError naming it."""
    from timm.models import group_parameters

    matcher = getattr(net, "group_matcher", None)
    spec = None
    if callable(matcher):
        try:
            spec = matcher(coarse=False)
        except NotImplementedError:
            spec = None
    if spec is None:
        raise RecipeError(
            [
                (
                    "optim.layer_decay",
                    (
                        f"model {model_name!r} ({type(net).__name__}) does not say its layers: layer-wise LR decay needs "
                        f"a group_matcher(coarse) method like timm's models (clfkit's linear, mlp, cnn and resnet have "
                        f"one); set optim.layer_decay: 1 (optim.head_lr_mult works with any model)"
                    ),
                )
            ]
        )
    return group_parameters(net, spec, reverse=True)


def lr_scales(model: nn.Module, layer_decay: float, head_lr_mult: float, model_name: str) -> dict[str, float]:
    """Parameter name (relative to ``model``) -> its LR multiplier. ``model`` is the network or
    clfkit's ImageClassifier around it (``.net``)."""
    net = getattr(model, "net", model)
    prefix = "net." if net is not model else ""
    head = head_names(net)
    ids = layer_ids(net, model_name) if layer_decay < 1 else {}
    top = max(ids.values(), default=0)
    return {
        prefix + name: head_lr_mult if name in head else layer_decay ** (top - ids.get(name, top))
        for name, _ in net.named_parameters()
    }


def lr_groups(
    model: nn.Module, layer_decay: float = 1.0, head_lr_mult: float = 1.0, model_name: str = "model"
) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, one per LR multiplier (``lr_scale``), stem
    first; one plain group when both knobs are 1 (the optimizer's state dict as before)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay == 1 and head_lr_mult == 1:
        return [{"params": [p for _, p in trainable]}]
    scales = lr_scales(model, layer_decay, head_lr_mult, model_name)
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in trainable:
        groups.setdefault(scales[name], []).append(p)
    return [{"params": ps, "lr_scale": s} for s, ps in groups.items()]


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> None:
    """Each group's ``lr`` times its ``lr_scale`` (the optimizer was built with one lr for all)."""
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * g.get("lr_scale", 1.0)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The recipe's LR as scheduled now (what the metrics log reports), whatever the groups."""
    g = optimizer.param_groups[0]
    return g["lr"] / g.get("lr_scale", 1.0)
