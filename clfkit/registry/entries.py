"""One registered component (:class:`Entry`) and the checks of its kind's contract: at
registration (its signature can receive what clfkit passes) and at first use (what it
returned is what the kind promises)."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import pydantic
from pydantic import BaseModel, ConfigDict

from clfkit.errors import RegistryError
from clfkit.registry.hints import type_hints, type_text
from clfkit.registry.kinds import BUILTIN, HOOK_ARGS, KINDS, REGULARIZER_HOOKS


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
        return [p for p in self.signature.parameters.values()
                if p.name not in supplied and p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

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
        config = ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=(), allow_inf_nan=False)
        return pydantic.create_model(f"{self.kind}.{self.name}", __config__=config, **fields)

    def describe_args(self) -> list[tuple[str, str, str]]:
        """(name, type, default) for each user parameter, for `clfkit plugins show`."""
        hints = type_hints(self.obj)
        refs = KINDS[self.kind].refs
        out = []
        for p in self.user_params():
            tname = (f"{refs[p.name]} component" if p.name in refs
                     else type_text(hints.get(p.name, p.annotation), literal_sep=" | "))
            default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
            out.append((p.name, tname, default))
        return out


# --------------------------------------------------------------------------- contracts
def check_contract(entry: Entry) -> None:
    """Refuse, at registration, a factory whose signature cannot receive what clfkit passes."""
    try:
        sig = entry.signature
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{entry.kind} {entry.name!r} from {entry.provider}: "
                            f"cannot read its signature ({e})") from e
    params = sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [r for r in KINDS[entry.kind].required if r not in params and not var_kw]
    if missing:
        raise RegistryError(
            f"{entry.kind} {entry.name!r} from {entry.provider} breaks the {entry.kind} contract: "
            f"its signature {sig} must accept {', '.join(missing)} "
            f"({KINDS[entry.kind].doc})")


def _refuse(entry: Entry, obj: Any, expected: str) -> None:
    raise RegistryError(
        f"{entry.kind} {entry.name!r} from {entry.provider} returned a {type(obj).__name__}; "
        f"the {entry.kind} contract expects {expected}")


def check_result(entry: Entry, obj: Any) -> None:
    """Refuse, at first use, what a factory returned when it breaks its kind's contract."""
    import torch  # here, not at the top: the registry itself does not need torch to load
    import torch.nn as nn

    expected = {"model": nn.Module, "norm": nn.Module, "activation": nn.Module, "loss": nn.Module,
                "optimizer": torch.optim.Optimizer}
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
        _check_split(entry, obj, {"on_batch_draw": ("shape", "device"),
                                  "on_batch_apply": ("x", "y", "num_classes", "draws")})
    if entry.kind == "augmentation":
        _check_augmentation(entry, obj)


def _check_split(entry: Entry, obj: Any, methods: dict[str, tuple[str, ...]]) -> None:
    """The optional draw/apply halves of a batched step (clfkit.engine.prep), where present."""
    for name, args in methods.items():
        if callable(getattr(obj, name, None)):
            _check_arity(entry, obj, name, getattr(obj, name), args)


def _check_augmentation(entry: Entry, obj: Any) -> None:
    if not callable(obj):
        _refuse(entry, obj, "a callable: a per-image transform t(image=HWC uint8 array) -> {'image': ...}, "
                            "or a batched transform with `batched = True` and __call__(x, generator) -> x")
    if getattr(obj, "batched", False):
        _check_arity(entry, obj, "__call__", obj, ("x", "generator"))
        _check_split(entry, obj, {"draw": ("shape", "device", "generator"), "apply": ("x", "draws")})
        return
    try:
        inspect.signature(obj).bind(image=None)
    except TypeError:
        _refuse(entry, obj, "a per-image transform called as t(image=HWC uint8 array) -> {'image': ...}; "
                            "a batched transform must set `batched = True` and take (x, generator)")
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
            f"{hook}({', '.join(args)})") from None
    except ValueError:  # builtins without a signature: nothing to check
        pass
