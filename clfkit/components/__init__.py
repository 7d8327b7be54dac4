"""Built-in components. Importing this package registers them all (the registry does it on
first use); each module holds one kind."""
from clfkit.components import (  # noqa: F401
    activations,
    augmentations,
    datasets,
    losses,
    models,
    norms,
    optimizers,
    regularizers,
    schedules,
)
