"""Built-in components. Importing this package registers them all (the registry does it on
first use); each module holds one kind (resnet.py: the resnet model, beside models.py)."""

from clfkit.components import (  # noqa: F401
    activations,
    augmentations,
    datasets,
    losses,
    models,
    norms,
    resnet,
    optimizers,
    regularizers,
    schedules,
)

# imported for their registrations; __all__ says so to linters that do not read noqa (pyflakes)
__all__ = [
    "activations",
    "augmentations",
    "datasets",
    "losses",
    "models",
    "norms",
    "optimizers",
    "regularizers",
    "resnet",
    "schedules",
]
