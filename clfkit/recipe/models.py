"""The recipe's pydantic models: :class:`Recipe` and its sections (data, train, EMA, early
stopping, normalization), components written as a name or ``{name: ..., <args>}``, and where
components sit in a recipe (``COMPONENT_FIELDS``). Loading, ``--set`` and the checks between
fields are in :mod:`clfkit.recipe`."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from typing_extensions import Annotated

from clfkit.util.safe_names import ALLOWED, name_problem

SEED_MAX = 2**32 - 1  # numpy's generators take seeds 0..2**32 - 1


def seed_range_problem(seed: Any) -> str:
    """What is wrong with a seed outside 0..SEED_MAX, and the valid range."""
    return f"{seed} is outside the valid seed range: a whole number from 0 to {SEED_MAX} (2**32 - 1)"


def _to_spec(value: Any) -> Any:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        if "name" not in value:
            raise ValueError("a component needs a 'name' (write it as a name or {name: ..., <args>})")
        if not isinstance(value["name"], str):
            raise ValueError(f"a component's name must be a string, got {value['name']!r}")
        return value
    raise ValueError(f"a component is a name or {{name: ..., <args>}}, got {value!r}")


# {name: ..., **args}; the args are checked against the component by Recipe validation below.
Component = Annotated[dict, BeforeValidator(_to_spec)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Normalize(Strict):
    """Per-channel mean and std on the 0..1 scale."""

    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]


IMAGENET = Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


class DataConfig(Strict):
    """Where images come from and how they are shaped before the model sees them."""

    source: Component = Field(
        default_factory=lambda: {"name": "shapes"}, description="dataset component: shapes, folder, ..."
    )
    image_size: Union[
        Annotated[int, Field(ge=4, le=4096)],
        tuple[Annotated[int, Field(ge=4, le=4096)], Annotated[int, Field(ge=4, le=4096)]],
    ] = 32
    channels: Literal["auto", 1, 3] = Field("auto", description="auto: 1 for grayscale data, else 3")
    resize: Literal["squash", "crop"] = Field("squash", description="squash to size, or scale + center crop")
    val_fraction: Annotated[float, Field(ge=0, le=0.9)] = Field(
        0.1, description="held out of train (stratified, seeded) when the data has no val split"
    )
    normalize: Union[Literal["auto", "init", "none", "imagenet"], Normalize] = Field(
        "auto",
        description="auto: mean/std of the train split; init: the init run's (needs init:); "
        "stored with the run",
    )
    augment: list[Component] = Field(default_factory=list, description="augmentation components, in order")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle",
        description="shuffle: each train image once per epoch; balanced: as many draws, with "
        "replacement, every class equally likely",
    )
    on_error: Literal["skip", "fail"] = Field("skip", description="undecodable images: skip (listed) or fail")
    workers: Optional[Annotated[int, Field(ge=0, le=64)]] = Field(
        None, description="loader processes for per-image augmentations; None: one per core"
    )
    storage: Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="decoded images in memory, or on disk (one .npy file per split, read in large "
        "shuffled chunks); auto: disk above the memory budget (CLFKIT_MEMORY_BUDGET, "
        "default half the available memory)",
    )

    @property
    def size(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)


def _switch(value: Any) -> Any:
    """``true`` turns an optional block on with its defaults, ``false`` turns it off."""
    if value is True:
        return {}
    return None if value is False else value


class EarlyStopping(Strict):
    """Stop once ``metric`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (best.pt and the test are unaffected: they use the best val-acc epoch)."""

    metric: Literal["val_acc", "val_loss"] = Field("val_acc", description="the val metric watched")
    patience: Annotated[int, Field(ge=1)] = Field(5, description="epochs without improvement before stopping")
    min_delta: Annotated[float, Field(ge=0)] = Field(
        0.0, description="smallest change that counts as improvement"
    )


class EMA(Strict):
    """An exponential moving average of the weights (timm's ModelEmaV3), updated every step;
    validation, best.pt and the test use the averaged weights."""

    decay: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.999, description="weight of the old average per step"
    )
    warmup: bool = Field(
        True, description="ramp the decay up from 0 over the first steps (short runs need it)"
    )


class TrainConfig(Strict):
    """How the trainer runs."""

    epochs: Annotated[int, Field(ge=1, le=100000)] = Field(10, description="passes over the training split")
    batch_size: Annotated[int, Field(ge=1, le=65536)] = Field(
        128, description="images per forward pass (per optimizer step: batch_size x accumulate)"
    )
    accumulate: Annotated[int, Field(ge=1, le=4096)] = Field(
        1,
        description="micro-batches per optimizer step (gradient accumulation); schedules count optimizer steps",
    )
    eval_batch_size: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="None: 2x batch_size")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    channels_last: Optional[bool] = Field(None, description="None: on for CUDA")
    compile: bool = Field(
        False,
        description="torch.compile the model, and the training batch preparation (augmentation, mixup, layout) as one graph (compile time reported apart)",
    )
    deterministic: bool = Field(
        False, description="deterministic kernels: bit-exact reruns and resumes on CPU"
    )
    drop_last: bool = Field(True, description="drop the last incomplete training batch")
    sync_bn: bool = Field(
        False,
        description="DDP on GPUs (torchrun): BatchNorm statistics over all "
        "ranks' batches (SyncBatchNorm); one process: no effect",
    )
    checkpoint_every_steps: Optional[Annotated[int, Field(ge=1)]] = Field(
        None, description="also save last.pt every N optimizer steps (None: once per epoch)"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss: stop (last good checkpoint kept) or skip the batch and count it"
    )
    early_stopping: Annotated[Optional[EarlyStopping], BeforeValidator(_switch)] = Field(
        None, description="stop when a val metric stops improving; true for the defaults"
    )
    ema: Annotated[Optional[EMA], BeforeValidator(_switch)] = Field(
        None, description="moving average of the weights, used for val, best.pt and test; true for defaults"
    )
    freeze: Optional[Literal["backbone"]] = Field(
        None, description="backbone: only the classifier head trains (frozen BatchNorm statistics stay too)"
    )
    unfreeze_epoch: Optional[Annotated[int, Field(ge=1)]] = Field(
        None, description="with freeze: everything trains from this epoch (1-based) on"
    )
    track: list[Literal["tensorboard", "mlflow"]] = Field(
        ["tensorboard"],
        description="trackers (clfkit.run.tracking): tensorboard when installed; mlflow needs the mlflow extra",
    )


class Recipe(Strict):
    """A whole training run."""

    name: str = Field(description="run name; also the default run-folder and ONNX name")
    description: str = Field("", description="free text, kept with the run")
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = Field(
        0, description="seeds data generation, val split, shuffling, augmentation and init"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="the data section below")
    model: Component = Field(description="model component: linear, mlp, cnn, resnet, timm, or a plugin's")
    loss: Component = Field(default_factory=lambda: {"name": "cross_entropy"}, description="loss component")
    optim: Component = Field(
        default_factory=lambda: {"name": "sgd"}, description="optimizer component (lr, weight decay, ...)"
    )
    schedule: Component = Field(
        default_factory=lambda: {"name": "constant"},
        description="LR schedule component, evaluated every step",
    )
    regularizers: list[Component] = Field(
        default_factory=list,
        description="regularizers and training-step hooks (mixup, label_smoothing, grad_clip, no_decay_norm_bias, ...)",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="the train section below")
    init: Optional[str] = Field(
        None,
        description="start the model from a clfkit checkpoint or run folder "
        "(its best.pt); tensors load by name and shape (weights.json)",
    )
    init_min_match: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="share of the model's tensors init must match; below it is an error"
    )

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_in_range(cls, seed: Any) -> Any:
        # numpy seeds its generators with 0..2**32 - 1; say the range, not only the bound missed
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= SEED_MAX:
            raise ValueError(seed_range_problem(seed))
        return seed

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, name: str) -> str:
        problem = name_problem(name)
        if problem is not None:  # the run folder and the ONNX file are named after it
            raise ValueError(f"{name!r} {problem}; a run name may only hold {ALLOWED}")
        return name

    def components(self) -> list[tuple[str, str, Any]]:
        """(kind, dotted path, spec) for every component in the recipe."""
        return _components_in(self)

    def to_dict(self) -> dict:
        """The recipe as plain JSON-friendly data (what run folders and checkpoints record)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The recipe as YAML, fields in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


# Where components sit in a recipe: (kind, dotted path, whether the field is a list of them).
COMPONENT_FIELDS = (
    ("dataset", "data.source", False),
    ("model", "model", False),
    ("loss", "loss", False),
    ("optimizer", "optim", False),
    ("schedule", "schedule", False),
    ("augmentation", "data.augment", True),
    ("regularizer", "regularizers", True),
)


def _components_in(recipe: Any) -> list[tuple[str, str, Any]]:
    """(kind, dotted path, spec) for every component found in a :class:`Recipe` or in a raw,
    not yet validated recipe mapping (where missing or misshapen sections are skipped)."""
    found = []
    for kind, path, many in COMPONENT_FIELDS:
        node = recipe
        for part in path.split("."):
            node = (
                node.get(part)
                if isinstance(node, dict)
                else getattr(node, part, None)
                if isinstance(node, BaseModel)
                else None
            )
        if many:
            found += [(kind, f"{path}.{i}", s) for i, s in enumerate(node)] if isinstance(node, list) else []
        elif node is not None:
            found.append((kind, path, node))
    return found
