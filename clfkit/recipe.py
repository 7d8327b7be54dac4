"""Recipes: YAML files validated by pydantic, with every component checked against its own
signature when the recipe is loaded, so a typo fails before any data is read.

A component is written as a name or ``{name: ..., <args>}``::

    model: {name: resnet, depth: 18, stem: imagenet, width: 0.5}
    optim: {name: sgd, lr: 0.1, momentum: 0.9}

``load_recipe(path, overrides)`` returns a :class:`Recipe` whose component specs have every
default filled in: the *resolved* recipe, which the run folder and checkpoints record.
"""
from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from typing_extensions import Annotated

from clfkit import registry, yamltext
from clfkit.errors import RecipeError
from clfkit.names import ALLOWED, name_problem
from clfkit.suggest import did_you_mean

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

    source: Component = Field(default_factory=lambda: {"name": "shapes"},
                              description="dataset component: shapes, folder, ...")
    image_size: Union[Annotated[int, Field(ge=4, le=4096)],
                      tuple[Annotated[int, Field(ge=4, le=4096)], Annotated[int, Field(ge=4, le=4096)]]] = 32
    channels: Literal["auto", 1, 3] = Field("auto", description="auto: 1 for grayscale data, else 3")
    resize: Literal["squash", "crop"] = Field("squash", description="squash to size, or scale + center crop")
    val_fraction: Annotated[float, Field(ge=0, le=0.9)] = Field(
        0.1, description="held out of train (stratified, seeded) when the data has no val split")
    normalize: Union[Literal["auto", "init", "none", "imagenet"], Normalize] = Field(
        "auto", description="auto: mean/std of the train split; init: the init run's (needs init:); "
                            "stored with the run")
    augment: list[Component] = Field(default_factory=list, description="augmentation components, in order")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="shuffle: each train image once per epoch; balanced: as many draws, with "
                               "replacement, every class equally likely")
    on_error: Literal["skip", "fail"] = Field("skip", description="undecodable images: skip (listed) or fail")
    workers: Optional[Annotated[int, Field(ge=0, le=64)]] = Field(
        None, description="loader processes for per-image augmentations; None: one per core")
    storage: Literal["auto", "memory", "disk"] = Field(
        "auto", description="decoded images in memory, or on disk (one .npy file per split, read in large "
                            "shuffled chunks); auto: disk above the memory budget (CLFKIT_MEMORY_BUDGET, "
                            "default half the available memory)")

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
    min_delta: Annotated[float, Field(ge=0)] = Field(0.0, description="smallest change that counts as improvement")


class EMA(Strict):
    """An exponential moving average of the weights (timm's ModelEmaV3), updated every step;
    validation, best.pt and the test use the averaged weights."""

    decay: Annotated[float, Field(gt=0, lt=1)] = Field(0.999, description="weight of the old average per step")
    warmup: bool = Field(True, description="ramp the decay up from 0 over the first steps (short runs need it)")


class TrainConfig(Strict):
    """How the trainer runs."""

    epochs: Annotated[int, Field(ge=1, le=100000)] = Field(10, description="passes over the training split")
    batch_size: Annotated[int, Field(ge=1, le=65536)] = Field(
        128, description="images per forward pass (per optimizer step: batch_size x accumulate)")
    accumulate: Annotated[int, Field(ge=1, le=4096)] = Field(
        1, description="micro-batches per optimizer step (gradient accumulation); schedules count optimizer steps")
    eval_batch_size: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="None: 2x batch_size")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: Optional[bool] = Field(None, description="None: on for CUDA")
    compile: bool = Field(False, description="torch.compile the model, and the training batch preparation (augmentation, mixup, layout) as one graph (compile time reported apart)")
    deterministic: bool = Field(False, description="deterministic kernels: bit-exact reruns and resumes on CPU")
    drop_last: bool = Field(True, description="drop the last incomplete training batch")
    sync_bn: bool = Field(False, description="DDP on GPUs (torchrun): BatchNorm statistics over all "
                                             "ranks' batches (SyncBatchNorm); one process: no effect")
    checkpoint_every_steps: Optional[Annotated[int, Field(ge=1)]] = Field(
        None, description="also save last.pt every N optimizer steps (None: once per epoch)")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss: stop (last good checkpoint kept) or skip the batch and count it")
    early_stopping: Annotated[Optional[EarlyStopping], BeforeValidator(_switch)] = Field(
        None, description="stop when a val metric stops improving; true for the defaults")
    ema: Annotated[Optional[EMA], BeforeValidator(_switch)] = Field(
        None, description="moving average of the weights, used for val, best.pt and test; true for defaults")
    freeze: Optional[Literal["backbone"]] = Field(
        None, description="backbone: only the classifier head trains (frozen BatchNorm statistics stay too)")
    unfreeze_epoch: Optional[Annotated[int, Field(ge=1)]] = Field(
        None, description="with freeze: everything trains from this epoch (1-based) on")
    track: list[Literal["tensorboard", "mlflow"]] = Field(
        ["tensorboard"], description="trackers (clfkit.tracking): tensorboard when installed; mlflow needs the mlflow extra")


class Recipe(Strict):
    """A whole training run."""

    name: str = Field(description="run name; also the default run-folder and ONNX name")
    description: str = Field("", description="free text, kept with the run")
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = Field(
        0, description="seeds data generation, val split, shuffling, augmentation and init")
    data: DataConfig = Field(default_factory=DataConfig, description="the data section below")
    model: Component = Field(description="model component: linear, mlp, cnn, resnet, timm, or a plugin's")
    loss: Component = Field(default_factory=lambda: {"name": "cross_entropy"}, description="loss component")
    optim: Component = Field(default_factory=lambda: {"name": "sgd"}, description="optimizer component (lr, weight decay, ...)")
    schedule: Component = Field(default_factory=lambda: {"name": "constant"},
                                description="LR schedule component, evaluated every step")
    regularizers: list[Component] = Field(default_factory=list, description="regularizers and training-step hooks (mixup, label_smoothing, grad_clip, no_decay_norm_bias, ...)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the train section below")
    init: Optional[str] = Field(None, description="start the model from a clfkit checkpoint or run folder "
                                                  "(its best.pt); tensors load by name and shape (weights.json)")
    init_min_match: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="share of the model's tensors init must match; below it is an error")

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
COMPONENT_FIELDS = (("dataset", "data.source", False), ("model", "model", False), ("loss", "loss", False),
               ("optimizer", "optim", False), ("schedule", "schedule", False),
               ("augmentation", "data.augment", True), ("regularizer", "regularizers", True))


def _components_in(recipe: Any) -> list[tuple[str, str, Any]]:
    """(kind, dotted path, spec) for every component found in a :class:`Recipe` or in a raw,
    not yet validated recipe mapping (where missing or misshapen sections are skipped)."""
    found = []
    for kind, path, many in COMPONENT_FIELDS:
        node = recipe
        for part in path.split("."):
            node = (node.get(part) if isinstance(node, dict)
                    else getattr(node, part, None) if isinstance(node, BaseModel) else None)
        if many:
            found += [(kind, f"{path}.{i}", s) for i, s in enumerate(node)] if isinstance(node, list) else []
        elif node is not None:
            found.append((kind, path, node))
    return found


# --------------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict:
    """Read a recipe or sweep file with clfkit's YAML reader (clfkit/yamltext.py: no code
    runs, YAML 1.2 numbers, duplicate keys and alias bombs refused); errors name the line."""
    path = Path(path)
    try:
        data = yamltext.load(_recipe_text(path))
    except yamltext.YAMLProblem as e:
        raise RecipeError([(e.path, str(e))], source=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError([("", f"YAML syntax error at {where}{problem}")], source=str(path)) from None
    except UnicodeDecodeError as e:
        raise RecipeError([("", f"not a UTF-8 text file ({e})")], source=str(path)) from None
    if not isinstance(data, dict):
        got = "nothing (the file is empty, or holds only comments or null)" if data is None \
            else type(data).__name__
        raise RecipeError([("", f"a recipe is a YAML mapping of fields (name:, data:, model:, ...), "
                                f"got {got}")], source=str(path))
    return data


MAX_RECIPE_BYTES = 10_000_000  # recipes are a few KB; this bounds a read of /dev/zero or a huge file


def _recipe_text(path: Path) -> str:
    """The text of a recipe file, read once: a plain file, or a pipe such as bash's
    ``<(sed ... r.yaml)``; a folder, or more than MAX_RECIPE_BYTES, is refused."""
    if path.is_dir():
        raise RecipeError([("", f"{path} is a folder, not a recipe file")], source=str(path))
    if not path.exists():
        raise RecipeError([("", f"file {path} does not exist")], source=str(path))
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError([("", f"cannot read {path} ({e.strerror or e})")], source=str(path)) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError([("", f"{path} is larger than {MAX_RECIPE_BYTES:,} bytes: not a recipe "
                                f"(a recipe is a small YAML text file)")], source=str(path))
    return raw.decode("utf-8")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01). The value is read as in a recipe file
    (clfkit.yamltext.parse_value, the same for --grid values and sweep files)."""
    if "=" not in text:
        raise RecipeError([("", f"--set {text!r}: expected dotted.path=value, e.g. optim.lr=0.01")],
                          source="--set")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError([(key, f"--set {text!r}: not a dotted path like train.epochs")], source="--set")
    try:
        value = yamltext.parse_value(raw)
    except yamltext.YAMLProblem as e:
        raise RecipeError([(f"{key}.{e.path}" if e.path else key, f"--set {key}=...: {e}")], source="--set") from None
    return key.split("."), value


def parse_overrides(texts: list[str] | tuple[str, ...]) -> list[tuple[list[str], Any]]:
    """Every ``--set`` parsed; a path set twice, or a path set after one inside it (``model.depth=34``
    then ``model=cnn`` drops the depth), is refused: one of the two would be lost silently."""
    parsed = [parse_override(text) for text in texts]
    for i, (keys, _) in enumerate(parsed):
        earlier = next((k for k, _ in parsed[:i] if k[:len(keys)] == keys), None)
        if earlier is not None:
            what = "is set twice" if earlier == keys else f"replaces the earlier --set {'.'.join(earlier)}"
            raise RecipeError([(".".join(keys), f"--set {'.'.join(keys)} {what}; keep one (the later "
                                                f"would silently win)")], source="--set")
    return parsed


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set ``data[path] = value`` creating mappings on the way; list items by index. A
    component written as a name (``model: resnet``, an augmentation ``HorizontalFlip``)
    becomes ``{name: ...}`` when one of its arguments is set."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        here = path[: i + 1]
        key = _index(node, part, here) if isinstance(node, list) else part
        child = node[key] if isinstance(node, list) else node.get(part)
        if isinstance(child, str) and not path[i + 1].isdigit():  # `model: resnet` + model.depth=34
            child = {"name": child}
        if child is None and isinstance(node, dict):  # `--set optim.lr=...` with no optim: its default
            child = _default_component(".".join(here)) or {}
        if not isinstance(child, (dict, list)):
            raise RecipeError([(".".join(here), f"is {child!r}, not a mapping or a list; cannot set "
                                                f"{'.'.join(path)}")], source="--set")
        node[key] = child
        node = child
    if isinstance(node, list):
        node[_index(node, path[-1], path)] = value
    else:
        node[path[-1]] = value


def _default_component(path: str) -> Optional[dict]:
    """The default spec of a component field a recipe leaves out (``optim`` -> {name: sgd})."""
    if path not in {p for _, p, many in COMPONENT_FIELDS if not many}:
        return None
    holder = DataConfig if path == "data.source" else Recipe
    field = holder.model_fields.get(path.rsplit(".", 1)[-1])
    return dict(field.default_factory()) if field is not None and field.default_factory else None


def _index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError([(".".join(path), f"list index {part!r} out of range "
                                            f"(the list has {len(node)} item(s))")], source="--set")
    return int(part)


def validate_recipe(data: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping: structure (pydantic), then every component's arguments."""
    too_big = [(path, f"{value} does not fit in 64 bits (torch and numpy need it to)")
               for path, value in _ints_in(data) if not -2**63 <= value < 2**63]
    if too_big:
        raise RecipeError(too_big, source=source)
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as e:
        # report the components' problems too, so one run shows every mistake
        problems = _pydantic_problems(e, data)
        for kind, path, spec in _components_in(data):
            if not (isinstance(spec, str) or (isinstance(spec, dict) and isinstance(spec.get("name"), str))):
                continue  # a misshapen spec: pydantic has reported it already
            problems += [p for p in registry.check_spec(kind, spec, path) if p not in problems]
        raise RecipeError(problems, source=source) from None
    problems = []
    for kind, path, spec in recipe.components():
        problems += registry.check_spec(kind, spec, path)
    if problems:
        raise RecipeError(problems, source=source)
    # fill every default in, so the saved recipe says exactly what ran
    resolved = recipe.to_dict()
    for kind, path, spec in recipe.components():
        apply_override(resolved, path.split("."), registry.resolve_spec(kind, spec))
    final = Recipe.model_validate(resolved)
    # rules between components (a component's optional ``check_recipe(recipe, path)``), e.g.
    # label smoothing asked for twice, once in the loss and once as a regularizer
    for kind, path, spec in final.components():
        check = getattr(registry.get(kind, registry.split_spec(spec)[0]).obj, "check_recipe", None)
        if check is not None:
            problems += check(final, path)
    problems += _bools_read_as_numbers(data, final.to_dict())
    if final.data.normalize == "init" and not final.init:
        problems.append(("data.normalize", "`init` takes the mean/std of the init: run, but this recipe has no "
                                           "init:; name a run folder in init:, or use auto, imagenet, none or "
                                           "{mean: [...], std: [...]}"))
    if problems:
        raise RecipeError(problems, source=source)
    return final


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(keys, value) of every value in a recipe mapping that is neither a mapping nor a list."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        return [(path, node)]
    return [leaf for key, child in items for leaf in _leaves(child, (*path, key))]


def _ints_in(node: Any) -> list[tuple[str, int]]:
    """(dotted path, value) of every integer in a raw recipe mapping."""
    return [(".".join(map(str, keys)), value) for keys, value in _leaves(node)
            if isinstance(value, int) and not isinstance(value, bool)]


def _bools_read_as_numbers(data: dict, resolved: dict) -> list[tuple[str, str]]:
    """pydantic reads true/false as 1/0 where a number is expected (``batch_size: true`` would
    train with batch 1, ``lr: true`` at 1.0): a yes/no written where the resolved recipe holds a
    number is a mistake, reported at its path. Fields that take true as a shorthand (``ema:
    true``) resolve to a mapping, so they pass."""
    problems = []
    for keys, value in _leaves(data):
        if not isinstance(value, bool):
            continue
        got: Any = resolved
        for key in keys:
            ok = isinstance(got, dict) and key in got or isinstance(got, list) and isinstance(key, int) \
                and key < len(got)
            got = got[key] if ok else None
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            problems.append((".".join(map(str, keys)), f"{str(value).lower()} is a yes/no value, but this "
                                                       f"field takes a number (it would be read as {got!r}); "
                                                       f"write the number"))
    return problems


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (``dotted.path=value``) and validate a recipe file. The model-size cap
    needs the model built: :func:`clfkit.build.check_model_size` checks it, still before any
    data is read."""
    data = read_yaml(path)
    if "sweep" in data:
        raise RecipeError([("sweep", "this is a sweep file: run it with `clfkit sweep "
                                     f"{path}` (or remove the sweep: block to train one recipe)")],
                          source=str(path))
    for keys, value in parse_overrides(overrides):
        apply_override(data, keys, value)
    return validate_recipe(data, source=str(path))


def _field_loc(loc: tuple) -> tuple[tuple, Optional[type[BaseModel]]]:
    """An error location as the recipe spells it, and the model class holding its last field
    (for did-you-mean). pydantic names the union member it tried after a union field
    (``data.image_size.constrained-int``, ``data.normalize.Normalize.std``); those tags are
    dropped, found from the fields' types rather than from a list of tag spellings."""
    out: list = []
    model: Any = Recipe
    holder = None
    members: tuple = ()  # set right after a union field: the next part is a member's tag
    for part in loc:
        if members:
            model = next((m for m in members if getattr(m, "__name__", None) == part), None)
            members = ()
            continue
        out.append(part)
        holder = model
        if isinstance(part, int):  # a list item: the items' model, if any, stays current
            continue
        field = getattr(model, "model_fields", {}).get(part)
        ann = field.annotation if field is not None else None
        args = tuple(a for a in typing.get_args(ann) if a is not type(None))
        if typing.get_origin(ann) in (Union, types.UnionType) and len(args) > 1:
            members, model = args, None
        else:
            model = next((a for a in (*args, ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return tuple(out), holder


def _pydantic_problems(e: pydantic.ValidationError, data: dict) -> list[tuple[str, str]]:
    problems = []
    for err in e.errors():
        loc, model = _field_loc(err["loc"])
        path = ".".join(str(x) for x in loc)
        if err["type"] == "extra_forbidden":
            valid = list(model.model_fields) if model else []
            hint = did_you_mean(str(loc[-1]), valid, n=1)
            msg = f"unknown field{hint} Valid fields here: {', '.join(valid)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "value_error":  # our own validators' messages already show the input
            msg = str(err["ctx"]["error"])
        else:
            msg = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        if (path, msg) not in problems:
            problems.append((path, msg))
    return problems
