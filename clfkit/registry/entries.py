"""What can be registered: the kinds of component and their calling contracts (:data:`KINDS`),
one registered component (:class:`Entry`) with the checks of its kind's contract, and type
hints as text.

Kinds: adding a kind is one ``define_kind`` line below. The table is filled once, when this
module is imported, and read everywhere else (the registry's tables, recipe checks, the README).

Entries are checked at registration (the signature can receive what clfkit passes) and at
first use (what it returned is what the kind promises).

Type hints as text are what the README's component reference and ``clfkit plugins show`` print
for a component's arguments (``float (>= 0, < 1)``, ``'a' | 'b'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import functools
import inspect
import typing
from typing import Any, Callable

import pydantic
from pydantic import BaseModel, ConfigDict

from clfkit.errors import RegistryError

BUILTIN = "clfkit"  # the provider of the built-in components


@dataclass(frozen=True)
class Kind:
    """A kind of component and its calling contract.

    required: arguments the factory must accept; clfkit always passes them.
    context:  arguments clfkit passes when the factory's signature accepts them.
    refs:     arguments naming a component of another kind (``{"norm": "norm"}``); clfkit
              validates them as component specs and passes a factory.
    """

    name: str
    doc: str
    required: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    refs: dict[str, str] = field(default_factory=dict)

    @property
    def supplied(self) -> tuple[str, ...]:
        """Every argument clfkit supplies itself (never written in recipes)."""
        return self.required + self.context


# Filled by the define_kind calls at the end of this module, when it is imported, and only
# read afterwards (each Registry makes its tables from it): a constant built in steps.
KINDS: dict[str, Kind] = {}


def define_kind(
    name: str,
    doc: str,
    required: tuple[str, ...] = (),
    context: tuple[str, ...] = (),
    refs: dict[str, str] | None = None,
) -> Kind:
    """Add a kind of component. Adding one is one line; see the calls below."""
    KINDS[name] = Kind(name, doc, tuple(required), tuple(context), dict(refs or {}))
    return KINDS[name]


def check_kind(kind: str) -> Kind:
    """The kind called ``kind``; an unknown one is a RegistryError listing the kinds."""
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return KINDS[kind]


# The hooks a `regularizer` may define and the arguments the trainer calls each with. The kind
# holds training-step hooks (grad_clip, no_decay_norm_bias) as well as regularizers proper
# (mixup, label smoothing): the recipe field keeps its name, the doc below says what it holds.
HOOK_ARGS = {
    "on_model": ("model",),
    "on_param_groups": ("groups",),
    "on_batch": ("x", "y", "num_classes"),
    "on_loss": ("loss", "model"),
    "before_step": ("model", "optimizer"),
}
REGULARIZER_HOOKS = tuple(HOOK_ARGS)

define_kind(
    "model",
    "builds an nn.Module mapping (N, C, H, W) float images to (N, num_classes) logits",
    required=("num_classes",),
    context=("in_chans", "image_size"),
    refs={"norm": "norm", "activation": "activation"},
)
define_kind(
    "norm",
    "builds a normalization layer for `num_features` channels of `dim`-d features (1 or 2)",
    required=("num_features",),
    context=("dim",),
)
define_kind("activation", "builds an activation nn.Module", context=("inplace",))
define_kind(
    "regularizer",
    "returns a regularizer or a training-step hook: an object with any of the hooks "
    + ", ".join(REGULARIZER_HOOKS)
    + ", which the trainer calls at those points of "
    "every step (mixup and label smoothing regularize; grad_clip and no_decay_norm_bias "
    "are step hooks)",
)
define_kind("augmentation", "returns a per-image transform (albumentations-style) or a BatchTransform")
define_kind(
    "loss",
    "builds a loss nn.Module taking (logits, targets); targets are indices or (N, C) soft labels; "
    "`class_counts` (train images per class) and `class_names` are passed when accepted",
    required=("num_classes",),
    context=("class_counts", "class_names"),
)
define_kind(
    "optimizer",
    "builds a torch.optim.Optimizer over `params` (parameter groups); `device` is 'cuda' or 'cpu'",
    required=("params",),
    context=("device",),
)
define_kind(
    "schedule",
    "builds a per-step LR multiplier function f(step) -> float",
    context=("total_steps", "steps_per_epoch", "epochs"),
)
define_kind(
    "dataset",
    "returns a clfkit.data.Splits (uint8 images, labels, class names)",
    context=("image_size", "channels", "resize", "seed", "on_error"),
)


def type_hints(obj: Any) -> dict[str, Any]:
    """The type hints of a component's arguments (a class's ``__init__``); {} when they cannot
    be resolved (unresolvable forward references: the arguments are then checked untyped)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        return {}


def _constraints(meta: list[Any]) -> list[str]:
    out = []
    for m in meta:
        inner = getattr(m, "metadata", None)
        if isinstance(inner, list):  # a pydantic FieldInfo from Field(ge=..., ...)
            out += _constraints(inner)
            continue
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if hasattr(m, attr) and getattr(m, attr) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
    return out


def type_text(ann: Any, models: dict[str, type] | None = None, literal_sep: str = " \\| ") -> str:
    """A short, stable description of a type hint: ``float (>= 0, < 1)``, ``'a' | 'b'``.
    Pydantic models met on the way are collected in ``models`` (the README documents them);
    ``literal_sep`` joins a Literal's choices (escaped for markdown tables by default)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return "any"
    if ann is type(None):
        return "null"
    if origin is typing.Annotated:
        base = type_text(args[0], models, literal_sep)
        cons = _constraints(list(args[1:]))
        return f"{base} ({', '.join(cons)})" if cons else base
    if origin is typing.Literal:
        return literal_sep.join(repr(a) for a in args)
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return " or ".join(type_text(a, models, literal_sep) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(type_text(a, models, literal_sep) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if inspect.isclass(ann) and issubclass(ann, BaseModel) and models is not None:
        models[ann.__name__] = ann
    return ann.__name__ if inspect.isclass(ann) else str(ann).replace("typing.", "")


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    obj: Callable[..., Any]
    provider: str = BUILTIN
    version: str = ""
    # Optional override for argument validation: args dict -> validated args dict (raises).
    validator: Callable[[dict], dict] | None = None

    @property
    def doc(self) -> str:
        """The first paragraph of the component's docstring, on one line."""
        text = (inspect.getdoc(self.obj) or "").strip()
        return " ".join(text.split("\n\n")[0].split())

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The factory's signature (a class's ``__init__``, without ``self``)."""
        return inspect.signature(self.obj)

    @property
    def accepts_var_kwargs(self) -> bool:
        """Whether the factory takes ``**kwargs`` (any argument name is then accepted)."""
        return any(p.kind is p.VAR_KEYWORD for p in self.signature.parameters.values())

    def user_params(self) -> list[inspect.Parameter]:
        """The parameters a recipe may set (everything but the kind's context)."""
        supplied = set(KINDS[self.kind].supplied)
        return [
            p
            for p in self.signature.parameters.values()
            if p.name not in supplied and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def accepts(self, arg: str) -> bool:
        """Whether the factory can be called with keyword ``arg``."""
        return arg in self.signature.parameters or self.accepts_var_kwargs

    @functools.cached_property
    def args_model(self) -> type[BaseModel]:
        """A pydantic model of the user parameters, built from the signature's type hints."""
        refs = KINDS[self.kind].refs
        hints = type_hints(self.obj)
        fields: dict[str, Any] = {}
        for p in self.user_params():
            ann = Any if p.name in refs else hints.get(p.name, Any)
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (ann, default)
        extra = "allow" if self.accepts_var_kwargs else "forbid"
        # allow_inf_nan=False: an inf or NaN float argument (mixup_alpha: .inf) is a typo, never a setting
        config = ConfigDict(
            extra=extra, arbitrary_types_allowed=True, protected_namespaces=(), allow_inf_nan=False
        )
        return pydantic.create_model(f"{self.kind}.{self.name}", __config__=config, **fields)

    def describe_args(self) -> list[tuple[str, str, str]]:
        """(name, type, default) for each user parameter, for `clfkit plugins show`."""
        hints = type_hints(self.obj)
        refs = KINDS[self.kind].refs
        out = []
        for p in self.user_params():
            tname = (
                f"{refs[p.name]} component"
                if p.name in refs
                else type_text(hints.get(p.name, p.annotation), literal_sep=" | ")
            )
            default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
            out.append((p.name, tname, default))
        return out


# --------------------------------------------------------------------------- contracts
def check_contract(entry: Entry) -> None:
    """Refuse, at registration, a factory whose signature cannot receive what clfkit passes."""
    try:
        sig = entry.signature
    except (TypeError, ValueError) as e:
        raise RegistryError(
            f"{entry.kind} {entry.name!r} from {entry.provider}: cannot read its signature ({e})"
        ) from e
    params = sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [r for r in KINDS[entry.kind].required if r not in params and not var_kw]
    if missing:
        raise RegistryError(
            f"{entry.kind} {entry.name!r} from {entry.provider} breaks the {entry.kind} contract: "
            f"its signature {sig} must accept {', '.join(missing)} "
            f"({KINDS[entry.kind].doc})"
        )


def _refuse(entry: Entry, obj: Any, expected: str) -> None:
    raise RegistryError(
        f"{entry.kind} {entry.name!r} from {entry.provider} returned a {type(obj).__name__}; "
        f"the {entry.kind} contract expects {expected}"
    )


def check_result(entry: Entry, obj: Any) -> None:
    """Refuse, at first use, what a factory returned when it breaks its kind's contract."""
    import torch  # here, not at the top: the registry itself does not need torch to load
    import torch.nn as nn

    expected = {
        "model": nn.Module,
        "norm": nn.Module,
        "activation": nn.Module,
        "loss": nn.Module,
        "optimizer": torch.optim.Optimizer,
    }
    want = expected.get(entry.kind)
    if want is not None and not isinstance(obj, want):
        _refuse(entry, obj, f"a {want.__module__}.{want.__name__}")
    if entry.kind == "schedule" and not callable(obj):
        _refuse(entry, obj, "a function step -> LR multiplier")
    if entry.kind == "regularizer":
        hooks = [h for h in REGULARIZER_HOOKS if callable(getattr(obj, h, None))]
        if not hooks:
            _refuse(entry, obj, f"an object with at least one of the methods {', '.join(REGULARIZER_HOOKS)}")
        for hook in hooks:
            _check_arity(entry, obj, hook, getattr(obj, hook), HOOK_ARGS[hook])
        _check_split(
            entry,
            obj,
            {"on_batch_draw": ("shape", "device"), "on_batch_apply": ("x", "y", "num_classes", "draws")},
        )
    if entry.kind == "augmentation":
        _check_augmentation(entry, obj)


def _check_split(entry: Entry, obj: Any, methods: dict[str, tuple[str, ...]]) -> None:
    """The optional draw/apply halves of a batched step (clfkit.train.engine.prep), where present."""
    for name, args in methods.items():
        if callable(getattr(obj, name, None)):
            _check_arity(entry, obj, name, getattr(obj, name), args)


def _check_augmentation(entry: Entry, obj: Any) -> None:
    if not callable(obj):
        _refuse(
            entry,
            obj,
            "a callable: a per-image transform t(image=HWC uint8 array) -> {'image': ...}, "
            "or a batched transform with `batched = True` and __call__(x, generator) -> x",
        )
    if getattr(obj, "batched", False):
        _check_arity(entry, obj, "__call__", obj, ("x", "generator"))
        _check_split(entry, obj, {"draw": ("shape", "device", "generator"), "apply": ("x", "draws")})
        return
    try:
        inspect.signature(obj).bind(image=None)
    except TypeError:
        _refuse(
            entry,
            obj,
            "a per-image transform called as t(image=HWC uint8 array) -> {'image': ...}; "
            "a batched transform must set `batched = True` and take (x, generator)",
        )
    except ValueError:
        pass


def _check_arity(entry: Entry, obj: Any, hook: str, fn: Callable, args: tuple[str, ...]) -> None:
    """``fn`` must be callable with ``len(args)`` positional arguments."""
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        raise RegistryError(
            f"{entry.kind} {entry.name!r} from {entry.provider}: {type(obj).__name__}.{hook} has "
            f"the signature {inspect.signature(fn)}; the {entry.kind} contract calls it as "
            f"{hook}({', '.join(args)})"
        ) from None
    except ValueError:  # builtins without a signature: nothing to check
        pass
