"""A procedural image-classification dataset: shapes and textures, no download.

Each image is one object (a shape, or a patch of texture) at a random position and scale, in
a random colour, on a random two-colour gradient background, with Gaussian noise. The class
is the object's kind, never its colour or place, so a linear model on pixels does poorly while
a small CNN learns it. Images depend only on (seed, split, index): the same seed always gives
the same dataset.
"""

from __future__ import annotations

import numpy as np

CLASSES = (
    "circle",
    "square",
    "triangle",
    "ring",
    "cross",
    "hstripes",
    "vstripes",
    "checker",
    "dots",
    "diamond",
)


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if avoid is None or np.abs(c - avoid).sum() > 180:
            return c
    return 255 - avoid


def render(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # background: a linear gradient between two random colours
    b0, b1 = _colour(rng), _colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((np.cos(angle) * xx + np.sin(angle) * yy) / size)[..., None]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = b0 * (1 - t) + b1 * t
    fg = _colour(rng, avoid=(b0 + b1) / 2)

    r = rng.uniform(0.22, 0.40) * size  # object radius
    cy, cx = rng.uniform(r, size - r, 2)  # object fully inside
    dy, dx = (yy - cy) / r, (xx - cx) / r  # object coordinates, -1..1
    name = CLASSES[kind]
    period = rng.uniform(0.45, 0.7)  # texture period in object units
    if name == "circle":
        mask = dx**2 + dy**2 <= 1
    elif name == "square":
        mask = (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    elif name == "triangle":
        mask = (dy <= 0.8) & (dy >= -0.9 + 2 * np.abs(dx) * 0.95)
    elif name == "ring":
        d = dx**2 + dy**2
        mask = (d <= 1) & (d >= 0.42)
    elif name == "cross":
        mask = ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1))
    elif name == "diamond":
        mask = np.abs(dx) + np.abs(dy) <= 1
    else:  # textures fill a square patch
        patch = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
        if name == "hstripes":
            tex = np.mod(dy / period, 1) < 0.5
        elif name == "vstripes":
            tex = np.mod(dx / period, 1) < 0.5
        elif name == "checker":
            tex = (np.mod(dx / period, 1) < 0.5) ^ (np.mod(dy / period, 1) < 0.5)
        else:  # dots
            gy, gx = np.mod(dy / period, 1) - 0.5, np.mod(dx / period, 1) - 0.5
            tex = gx**2 + gy**2 < 0.09
        mask = patch & tex
    img = np.where(mask[..., None], fg, img)
    img = img + rng.normal(0, rng.uniform(4, 20), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(n: int, size: int, num_classes: int, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (N, size, size, 3) uint8 and balanced labels (N,) int64."""
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be 2..{len(CLASSES)}, got {num_classes}")
    rng = np.random.default_rng([seed, split])
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, k in enumerate(labels):
        images[i] = render(int(k), size, rng)
    return images, labels.astype(np.int64)
