"""Where the model looked: Grad-CAM maps (the ``grad-cam`` library, ``pytorch_grad_cam``) of the
most confident mistakes and of a few correct images per class, for report.html.

The target layer, the feature map Grad-CAM weighs by its gradients, is chosen per model:

1. the model's own ``cam_target_layer()`` method (or an attribute): a module, or a list of
   candidates deepest first. The built-in ``cnn`` (its conv features) and ``resnet`` (its
   stages, last first) name theirs this way, and a plugin model names its own the same way
   (None or [] says "none fits");
2. a timm model: the stages of its ``feature_info``, last first;
3. anything else (``mlp``, ``linear``): no feature map, and the page says so.

The first candidate that gives a (N, C, H, W) map bigger than 1x1 on the run's images is used
(small images can leave the last stage 1x1; a ViT's tokens are not a map); with none, the page
says why. A model Grad-CAM fails on is
noted on the page too: the run's other reports never depend on it.

``cam.json`` holds the layer (or why there is none) and, per image, the image and its overlay as
base64 PNGs: for a mistake the map of the predicted class and of the true one.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clfkit.util.atomic import write_json
from clfkit.run.run_folder import CAM_JSON

MISTAKES = 8  # the most confident mistakes shown with their maps
CORRECT_PER_CLASS = 2  # the most confident right answers per class
# Every map is a backward pass and two inlined PNGs in report.html: with many classes the right
# answers per class alone would be thousands. At most MAX_MAPS maps (a mistake takes two, its
# predicted and its true class), computed CAM_BATCH images at a time; cam.json and the page say
# what was left out.
MAX_MAPS = 48
CAM_BATCH = 16
THUMB_PIXELS = 96
METHOD = "Grad-CAM (pytorch-grad-cam)"
# CLFKIT_GRADCAM=0 leaves the maps out: importing pytorch-grad-cam loads scikit-learn and OpenCV
# (about 2 s on an idle 2-core CPU), paid by every process that ends a run; the test suite,
# which trains a few hundred tiny runs, sets it (tests/conftest.py) and turns it on where the
# maps are the test.
OFF_VARIABLE = "CLFKIT_GRADCAM"


def enabled() -> bool:
    """False when the user turned the maps off (``CLFKIT_GRADCAM=0``)."""
    return os.environ.get(OFF_VARIABLE, "1").strip() != "0"


def target_layer(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.nn.Module | None, str]:
    """(the module to weigh, its name) or (None, why none fits) for ``model`` (a
    clfkit.train.build.ImageClassifier, or a bare network); ``example``: one input batch. Of the
    candidates a model names (deepest first), the first whose map is bigger than 1x1."""
    net = getattr(model, "net", model)
    candidates, why = _candidates(net)
    for layer in candidates:
        name = next((n for n, m in net.named_modules() if m is layer), None)
        if name is None:
            why = f"the target layer the model names ({type(layer).__name__}) is not one of its modules"
            continue
        shape = _output_shape(model, layer, example)
        if shape is None or len(shape) != 4:
            why = (
                f"its layer {name or type(net).__name__} gives a {len(shape or ())}-d output, not a "
                f"(N, C, H, W) feature map"
            )
        elif shape[2] * shape[3] <= 1:
            why = (
                f"its layer {name} is pooled down to {shape[2]}x{shape[3]} at this image size: no map to show"
            )
        else:
            return layer, f"{name or '(the model)'} ({type(layer).__name__}, {shape[2]}x{shape[3]} map)"
    return None, why


def _candidates(net: torch.nn.Module) -> tuple[list[torch.nn.Module], str]:
    """The layers a model offers (deepest first), or ([], why none)."""
    own = getattr(net, "cam_target_layer", None)
    if own is not None:  # the model's own choice (built-ins and plugins alike)
        layer = own() if callable(own) and not isinstance(own, torch.nn.Module) else own
        layers = list(layer) if isinstance(layer, (list, tuple)) else [] if layer is None else [layer]
        if not layers:
            return [], f"the model ({type(net).__name__}) says no layer fits Grad-CAM"
        if not all(isinstance(m, torch.nn.Module) for m in layers):
            return [], "the model's cam_target_layer gave something that is not a torch module"
        return layers, ""
    info = getattr(net, "feature_info", None)  # timm models: their feature stages, deepest first
    if info is not None:
        try:
            return [net.get_submodule(f["module"]) for f in reversed(list(info))], ""
        except (AttributeError, KeyError, TypeError):
            pass
    return [], (
        f"the model ({type(net).__name__}) has no convolutional feature map for Grad-CAM "
        f"(cnn, resnet and timm CNNs have one; a plugin names its own with a cam_target_layer() method)"
    )


@torch.no_grad()
def _output_shape(model: torch.nn.Module, layer: torch.nn.Module, example: torch.Tensor) -> tuple | None:
    seen: list[tuple] = []
    hook = layer.register_forward_hook(
        lambda m, i, o: seen.append(tuple(o.shape) if torch.is_tensor(o) else ())
    )
    try:
        model.eval()
        model(example[:1].float())
    finally:
        hook.remove()
    return seen[-1] if seen else None


def _chosen(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list[int], list[int], str]:
    """(the most confident mistakes, the most confident right images per class, what the
    MAX_MAPS cap left out or ""), as indices: the right answers of the first classes that fit."""
    conf, pred = probs.max(1)
    wrong = (pred != labels).nonzero().flatten()
    mistakes = wrong[conf[wrong].argsort(descending=True)][:MISTAKES].tolist()
    room, correct, shown = MAX_MAPS - 2 * len(mistakes), [], 0
    for c in range(num_classes):
        right = ((pred == labels) & (labels == c)).nonzero().flatten()
        best = right[conf[right].argsort(descending=True)][:CORRECT_PER_CLASS].tolist()
        if len(correct) + len(best) > room:
            break
        correct += best
        shown += 1
    capped = (
        ""
        if shown == num_classes
        else (
            f"right answers shown for the first {shown} of {num_classes} classes: the page draws at most {MAX_MAPS} "
            f"Grad-CAM maps ({len(mistakes)} mistakes take {2 * len(mistakes)})"
        )
    )
    return mistakes, correct, capped


def _png(rgb: np.ndarray) -> str:
    """A uint8 (H, W, 3) image as a base64 PNG, its longer side THUMB_PIXELS."""
    pil = Image.fromarray(rgb)
    scale = THUMB_PIXELS / max(pil.size)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _rgb01(image: torch.Tensor) -> np.ndarray:
    arr = image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255.0
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def _maps(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    classes: list[int],
    device: torch.device,
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in 0..1 of ``images`` (uint8) for ``classes``, in fp32,
    CAM_BATCH images at a time (each batch holds its activations and gradients)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(0, len(images), CAM_BATCH):
            # a float input that wants its gradient: gradients reach the layer even when it is frozen
            x = images[i : i + CAM_BATCH].to(device).float().requires_grad_(True)
            out.append(
                cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes[i : i + CAM_BATCH]])
            )
    return np.concatenate(out)


def _overlay(image: torch.Tensor, mask: np.ndarray) -> str:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return _png(show_cam_on_image(_rgb01(image), mask, use_rgb=True))


def cam_cards(
    model: torch.nn.Module, data: Any, probs: torch.Tensor, class_names: list[str], device: torch.device
) -> dict[str, Any]:
    """cam.json's content for ``data`` (a labelled ImageSet) given ``probs`` (N, classes) of
    ``model`` on it: the target layer (or why none) and the chosen images with their maps."""
    labels = data.labels.cpu()
    layer, name = target_layer(model, data.images[:1].to(device))
    if layer is None:
        return {
            "method": METHOD,
            "target_layer": None,
            "note": f"no Grad-CAM: {name}",
            "mistakes": [],
            "correct": [],
        }
    mistakes, correct, capped = _chosen(probs, labels, len(class_names))
    pred = probs.argmax(1)
    picked = mistakes + correct
    images = data.images[picked] if picked else data.images[:0]
    # the maps' classes: the predicted class of every image, then the true class of each mistake
    classes = [int(pred[i]) for i in picked] + [int(labels[i]) for i in mistakes]
    maps = (
        _maps(model, layer, torch.cat([images, images[: len(mistakes)]]), classes, device) if picked else []
    )
    cards = []
    for k, i in enumerate(picked):
        card = {
            "index": i,
            "path": data.paths[i] if data.paths is not None else None,
            "true": class_names[int(labels[i])],
            "predicted": class_names[int(pred[i])],
            "confidence": round(float(probs[i].max()), 4),
            "png_base64": _png((_rgb01(images[k]) * 255).round().astype(np.uint8)),
            "cam_predicted": _overlay(images[k], maps[k]),
        }
        if k < len(mistakes):
            card["cam_true"] = _overlay(images[k], maps[len(picked) + k])
        cards.append(card)
    return {
        "method": METHOD,
        "target_layer": name,
        "note": "",
        "capped": capped,
        "maps": len(classes),
        "mistakes": cards[: len(mistakes)],
        "correct": cards[len(mistakes) :],
    }


def write_cams(
    run: str | Path,
    model: torch.nn.Module,
    data: Any,
    *,
    probs: torch.Tensor,
    split: str,
    class_names: list[str],
    device: torch.device,
    checkpoint: str = "best.pt",
) -> Path:
    """``run/cam.json``: :func:`cam_cards` of ``model`` (the weights of ``checkpoint``) on the
    ``split`` split. A model Grad-CAM fails on gets a note, not an error: the run's reports stand."""
    t0 = time.perf_counter()
    if not enabled():
        return write_no_cams(
            run,
            split,
            checkpoint,
            f"Grad-CAM maps are off ({OFF_VARIABLE}=0 in the environment)",
            images=len(data),
        )
    try:
        found = cam_cards(model, data, probs, class_names, device)
    except Exception as e:  # noqa: BLE001 - a plugin's model may defeat the hooks in any way
        found = {
            "method": METHOD,
            "target_layer": None,
            "mistakes": [],
            "correct": [],
            "note": f"Grad-CAM failed on this model ({type(e).__name__}: {str(e)[:200]})",
        }
    return _write(
        run,
        {
            "split": split,
            "checkpoint": checkpoint,
            "images": len(data),
            "seconds": round(time.perf_counter() - t0, 3),
            **found,
        },
    )


def write_no_cams(run: str | Path, split: str, checkpoint: str, note: str, images: int = 0) -> Path:
    """``run/cam.json`` without maps, ``note`` saying why: it replaces an earlier evaluation's."""
    return _write(
        run,
        {
            "split": split,
            "checkpoint": checkpoint,
            "images": images,
            "seconds": 0.0,
            "method": METHOD,
            "target_layer": None,
            "mistakes": [],
            "correct": [],
            "note": note,
        },
    )


def _write(run: str | Path, cam: dict[str, Any]) -> Path:
    path = Path(run) / CAM_JSON
    write_json(path, cam)
    return path
