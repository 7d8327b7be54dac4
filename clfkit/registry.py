"""The component registry: one table of named factories per kind, filled by decorators.

Built-in components and plugins use the same mechanism::

    from clfkit.registry import register

    @register("model", "tiny_cnn")
    def tiny_cnn(num_classes: int, in_chans: int, width: int = 32) -> nn.Module:
        ...

A component is a plain function or class; its keyword arguments are its configuration and
are validated (by name, type and range) against its own signature when a recipe is loaded.
Arguments that clfkit supplies itself (the *context*: number of classes, input channels, ...)
are never written in recipes. Arguments named in a kind's ``refs`` (a model's ``norm`` and
``activation``) are references to components of another kind; clfkit turns them into
factories before calling.

Third-party components arrive through the ``clfkit.plugins`` entry-point group and are
discovered on first use, never by import order. A plugin that fails to load is recorded with
its distribution name and the cause, and the rest of clfkit keeps working.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib
import importlib.metadata as md
import inspect
import logging
import os
import re
import signal
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pydantic
from pydantic import BaseModel, ConfigDict

from clfkit.errors import PluginError, RecipeError, RegistryError

_log = logging.getLogger("clfkit.plugins")

ENTRY_POINT_GROUP = "clfkit.plugins"
BUILTIN = "clfkit"


# --------------------------------------------------------------------------- kinds
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
        return self.required + self.context


KINDS: dict[str, Kind] = {}


def define_kind(name: str, doc: str, required: tuple[str, ...] = (), context: tuple[str, ...] = (),
                refs: dict[str, str] | None = None) -> Kind:
    """Add a kind of component. Adding one is one line; see the calls below."""
    KINDS[name] = Kind(name, doc, tuple(required), tuple(context), dict(refs or {}))
    return KINDS[name]


define_kind("model", "builds an nn.Module mapping (N, C, H, W) float images to (N, num_classes) logits",
            required=("num_classes",), context=("in_chans", "image_size"),
            refs={"norm": "norm", "activation": "activation"})
define_kind("norm", "builds a normalization layer for `num_features` channels of `dim`-d features (1 or 2)",
            required=("num_features",), context=("dim",))
define_kind("activation", "builds an activation nn.Module", context=("inplace",))
define_kind("regularizer", "returns an object with any of the hooks on_model, on_param_groups, on_batch, on_loss, before_step")
define_kind("augmentation", "returns a per-image transform (albumentations-style) or a BatchTransform")
define_kind("loss", "builds a loss nn.Module taking (logits, targets); targets are indices or (N, C) soft labels",
            required=("num_classes",))
define_kind("optimizer", "builds a torch.optim.Optimizer over `params` (parameter groups); `device` is 'cuda' or 'cpu'",
            required=("params",), context=("device",))
define_kind("schedule", "builds a per-step LR multiplier function f(step) -> float",
            context=("total_steps", "steps_per_epoch", "epochs"))
define_kind("dataset", "returns a clfkit.data.Splits (uint8 images, labels, class names)",
            context=("image_size", "channels", "resize", "seed", "on_error"))


# --------------------------------------------------------------------------- entries
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
        text = (inspect.getdoc(self.obj) or "").strip()
        return " ".join(text.split("\n\n")[0].split())  # the first paragraph, on one line

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.obj)

    @property
    def accepts_var_kwargs(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in self.signature.parameters.values())

    def user_params(self) -> list[inspect.Parameter]:
        """The parameters a recipe may set (everything but the kind's context)."""
        supplied = set(KINDS[self.kind].supplied)
        return [p for p in self.signature.parameters.values()
                if p.name not in supplied and p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def accepts(self, arg: str) -> bool:
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
        config = ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=())
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


# --------------------------------------------------------------------------- registry
_provider: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "clfkit_provider", default=(BUILTIN, ""))
# The registry loading a plugin right now: module-level ``register`` decorators run while a
# plugin is imported land there (a private ``Registry()`` in tests, not the global one).
_loading: contextvars.ContextVar["Registry | None"] = contextvars.ContextVar("clfkit_loading", default=None)
# What each plugin entry point registered when it was loaded, to replay into later registries.
_PLUGIN_REGISTRATIONS: dict[str, list[tuple[str, str, Callable, Any]]] = {}


class Registry:
    """Named factories by kind, plus the plugins they came from."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._fallbacks: dict[str, list[Callable[[str], Entry | None]]] = {}
        self.plugin_errors: list[PluginError] = []
        self.plugins: list[tuple[str, str]] = []  # (distribution, version) loaded
        self._loaded = False
        self._lock = threading.RLock()
        self._log: list[Entry] | None = None  # registrations of the plugin being loaded

    # ---- registering
    def register(self, kind: str, name: str | None = None, *, validator=None):
        """Decorator: register a function or class as component ``name`` of ``kind``."""
        self._check_kind(kind)

        def deco(obj):
            self.add(kind, name or obj.__name__, obj, validator=validator)
            return obj

        return deco

    def add(self, kind: str, name: str, obj: Callable, *, validator: Callable[[dict], dict] | None = None) -> Entry:
        """Register ``obj`` as ``name`` of ``kind``; refuse a duplicate or a broken contract."""
        self._check_kind(kind)
        provider, version = _provider.get()
        if provider == BUILTIN:
            provider, version = _infer_provider(obj)
        if not callable(obj):
            raise RegistryError(f"{kind} {name!r} from {provider} is a {type(obj).__name__}, "
                                f"not a function or class: a {kind} must be a factory "
                                f"({KINDS[kind].doc})")
        entry = Entry(kind, name, obj, provider, version, validator)
        _check_contract(entry)
        with self._lock:
            table = self._entries.setdefault(kind, {})
            if name in table:
                old = table[name]
                raise RegistryError(
                    f"{kind} {name!r} is registered twice: by {old.provider} and by {provider}. "
                    f"Rename one of them, or uninstall one of the two packages.")
            table[name] = entry
            if self._log is not None:
                self._log.append(entry)
        return entry

    def add_fallback(self, kind: str, resolver: Callable[[str], Entry | None]) -> None:
        """Resolve names not in the table (e.g. any albumentations transform by class name)."""
        self._fallbacks.setdefault(kind, []).append(resolver)

    def remove(self, kind: str, name: str) -> None:
        """Forget a component (a plugin that failed half-way through registering)."""
        self._entries.get(kind, {}).pop(name, None)

    # ---- looking up
    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; an unknown name is an error offering the nearest names."""
        self._check_kind(kind)
        self.load()
        entry = self._entries[kind].get(name)
        if entry is not None:
            return entry
        for resolve in self._fallbacks.get(kind, []):
            entry = resolve(name)
            if entry is not None:
                return entry
        raise RegistryError(self._unknown_message(kind, name))

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted (fallbacks such as albumentations excluded)."""
        self._check_kind(kind)
        self.load()
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        """Every entry (of ``kind``, or of all kinds in kind order), sorted by name."""
        self.load()
        for k in ([kind] if kind else KINDS):
            yield from (self._entries[k][n] for n in sorted(self._entries.get(k, {})))

    def create(self, kind: str, name: str, /, **kwargs) -> Any:
        """Build component ``name`` of ``kind``. Context arguments the factory does not accept
        are dropped; user arguments are validated; references (a model's ``norm``) may be given
        as names or ``{name: ..., args}`` specs and become factories."""
        entry = self.get(kind, name)
        k = KINDS[kind]
        missing = [r for r in k.required if r not in kwargs]
        if missing:
            raise RegistryError(f"creating {kind} {name!r}: clfkit must pass {missing}")
        context = {a: kwargs.pop(a) for a in k.supplied if a in kwargs}
        user = validate_args(entry, kwargs, path=f"{kind}.{name}")
        for arg, ref_kind in k.refs.items():
            if arg in user and not callable(user[arg]):
                user[arg] = self.factory(ref_kind, user[arg])
        context = {a: v for a, v in context.items() if entry.accepts(a)}
        try:
            obj = entry.obj(**context, **user)
        except (TypeError, ValueError) as e:
            shown = {k: getattr(v, "spec", v) for k, v in user.items()}
            raise RegistryError(f"{kind} {name!r} (from {entry.provider}) failed to build "
                                f"with {shown}: {e}") from e
        _check_result(entry, obj)
        return obj

    def factory(self, kind: str, spec: str | dict) -> Callable[..., Any]:
        """A callable building component ``spec`` with context supplied at call time."""
        name, args = split_spec(spec)
        order = KINDS[kind].supplied

        def build(*positional, **context):
            context.update(zip(order, positional))  # norm(64, dim=2) -> num_features=64
            return self.create(kind, name, **context, **args)

        build.spec = {"name": name, **args}
        return build

    # ---- plugins
    def load(self) -> None:
        """Import built-ins, then every ``clfkit.plugins`` entry point (once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            importlib.import_module("clfkit.components")
            if self is not _BUILTIN_HOME:  # a private registry starts from the built-ins too
                for kind, table in _BUILTIN_HOME._entries.items():
                    self._entries.setdefault(kind, {}).update(
                        {n: e for n, e in table.items() if e.provider == BUILTIN})
                for kind, resolvers in _BUILTIN_HOME._fallbacks.items():
                    self._fallbacks.setdefault(kind, []).extend(resolvers)
            wanted = plugin_selection()
            if wanted == set():
                return
            installed = list(md.entry_points(group=ENTRY_POINT_GROUP))
            with _telling_real_ctrl_c() as pressed:
                for ep in installed:
                    if wanted is None or _dist_key(_dist_of(ep)) in wanted:
                        self.load_entry_point(ep, pressed)
            self._check_selection(wanted, installed)
            for err in self.plugin_errors:  # one line each; `clfkit plugins` lists them too
                _log.warning("warning: %s", err)

    def _check_selection(self, wanted: set[str] | None, installed: list[md.EntryPoint]) -> None:
        """A name in CLFKIT_PLUGINS that no installed plugin has is recorded (and warned about)
        with the installed names: a typo must not silently train without the plugin."""
        names = sorted({_dist_of(ep) for ep in installed})
        for key in sorted((wanted or set()) - {_dist_key(n) for n in names}):
            self.plugin_errors.append(PluginError(
                key, f"CLFKIT_PLUGINS names {key!r}, but no installed plugin distribution is called "
                     f"that; installed: {', '.join(names) or '(none)'} (or CLFKIT_PLUGINS=none / all)"))

    def load_entry_point(self, ep: md.EntryPoint, ctrl_c: threading.Event | None = None) -> None:
        """Load one plugin; a failure is recorded in ``plugin_errors`` and rolled back. That
        includes ``sys.exit()``, SystemExit and KeyboardInterrupt raised by the plugin itself;
        only a real Ctrl-C (seen by ``ctrl_c``, see _telling_real_ctrl_c) still interrupts."""
        dist = _dist_of(ep)
        version = ep.dist.version if ep.dist else ""
        token = _provider.set((dist, version))
        loading = _loading.set(self)
        self._log = []
        try:
            _check_requirement(ep)
            if ep.value in _PLUGIN_REGISTRATIONS:
                # Python imports a module once: another registry loaded this plugin already
                for kind, name, obj, validator in _PLUGIN_REGISTRATIONS[ep.value]:
                    self.add(kind, name, obj, validator=validator)
            else:
                obj = ep.load()  # a module registers with decorators as it is imported ...
                if not inspect.ismodule(obj):
                    if not callable(obj):
                        raise PluginError(dist, f"entry point {ep.value!r} names a {type(obj).__name__}; "
                                          f"it must name a module or a function to call", ep.name)
                    obj()  # ... a function registers when called (with no arguments)
                _PLUGIN_REGISTRATIONS[ep.value] = [(e.kind, e.name, e.obj, e.validator) for e in self._log]
            self.plugins.append((dist, version))
        except BaseException as e:  # a broken plugin must not break clfkit: record and roll back
            if isinstance(e, KeyboardInterrupt) and (ctrl_c is None or ctrl_c.is_set()):
                raise  # the user pressed Ctrl-C (or we cannot tell): stop as asked
            if isinstance(e, SystemExit):
                e = PluginError(dist, f"it called sys.exit({e.code!r}) while loading", ep.name)
            for entry in self._log:
                self.remove(entry.kind, entry.name)
            self.plugin_errors.append(e if isinstance(e, PluginError) else PluginError(dist, e, ep.name))
        finally:
            self._log = None
            _loading.reset(loading)
            _provider.reset(token)

    # ---- helpers
    def _check_kind(self, kind: str) -> None:
        check_kind(kind)
        self._entries.setdefault(kind, {})

    def _unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self._entries[kind])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        close += [n for n in known if n.lower() == name.lower() and n not in close]
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        msg += f" Known {kind}s: {', '.join(known) or '(none)'}."
        if self.plugin_errors:
            msg += " Note: " + "; ".join(str(e) for e in self.plugin_errors)
        return msg


def check_kind(kind: str) -> Kind:
    """The kind called ``kind``; an unknown one is a RegistryError listing the kinds."""
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return KINDS[kind]


def plugins_disabled() -> bool:
    """True when ``CLFKIT_PLUGINS=none`` (or 0, off) asks for the built-ins only."""
    return plugin_selection() == set()


def plugin_selection() -> set[str] | None:
    """The plugin distributions CLFKIT_PLUGINS asks for: None for all (unset, empty, ``all``),
    an empty set for none (``none``, ``0``, ``off``), else its comma-separated names."""
    text = os.environ.get("CLFKIT_PLUGINS", "").strip()
    if text.lower() in ("", "all"):
        return None
    if text.lower() in ("none", "0", "off"):
        return set()
    return {_dist_key(name) for name in text.split(",") if name.strip()}


def _dist_of(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist else ep.value.split(":")[0]


def _dist_key(name: str) -> str:
    """A distribution name as pip compares them: clfkit_Airbench == clfkit-airbench."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


@contextlib.contextmanager
def _telling_real_ctrl_c() -> Iterator[threading.Event | None]:
    """While plugins load, an Event set when SIGINT really arrives, to tell a user's Ctrl-C
    from a KeyboardInterrupt a plugin raises itself. None where no handler can be installed
    (not the main thread): then a KeyboardInterrupt is taken as the user's."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    pressed = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler installed outside Python: leave it alone
        yield None
        return

    def handler(signum, frame):
        pressed.set()
        if callable(previous):
            return previous(signum, frame)
        if previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_contract(entry: Entry) -> None:
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


# A regularizer's hooks and the arguments the trainer calls each with.
_HOOK_ARGS = {"on_model": ("model",), "on_param_groups": ("groups",),
              "on_batch": ("x", "y", "num_classes"), "on_loss": ("loss", "model"),
              "before_step": ("model", "optimizer")}
REGULARIZER_HOOKS = tuple(_HOOK_ARGS)


def _check_result(entry: Entry, obj: Any) -> None:
    """Refuse, at first use, what a factory returned when it breaks its kind's contract."""
    import torch
    import torch.nn as nn

    def refuse(expected: str) -> None:
        raise RegistryError(
            f"{entry.kind} {entry.name!r} from {entry.provider} returned a {type(obj).__name__}; "
            f"the {entry.kind} contract expects {expected}")

    expected = {"model": nn.Module, "norm": nn.Module, "activation": nn.Module, "loss": nn.Module,
                "optimizer": torch.optim.Optimizer}
    want = expected.get(entry.kind)
    if want is not None and not isinstance(obj, want):
        refuse(f"a {want.__module__}.{want.__name__}")
    if entry.kind == "schedule" and not callable(obj):
        refuse("a function step -> LR multiplier")
    if entry.kind == "regularizer":
        hooks = [h for h in REGULARIZER_HOOKS if callable(getattr(obj, h, None))]
        if not hooks:
            refuse(f"an object with at least one of the methods {', '.join(REGULARIZER_HOOKS)}")
        for hook in hooks:
            _check_arity(entry, obj, hook, getattr(obj, hook), _HOOK_ARGS[hook])
    if entry.kind == "augmentation":
        if not callable(obj):
            refuse("a callable: a per-image transform t(image=HWC uint8 array) -> {'image': ...}, "
                   "or a batched transform with `batched = True` and __call__(x, generator) -> x")
        if getattr(obj, "batched", False):
            _check_arity(entry, obj, "__call__", obj, ("x", "generator"))
        else:
            try:
                inspect.signature(obj).bind(image=None)
            except TypeError:
                refuse("a per-image transform called as t(image=HWC uint8 array) -> {'image': ...}; "
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


def _infer_provider(obj: Any) -> tuple[str, str]:
    """The distribution a component registered outside plugin loading comes from (a plugin's
    module imported directly, e.g. by its own tests); clfkit when it is not installed code."""
    from clfkit import __version__

    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    if top and top != "clfkit":
        dists = _packages_distributions().get(top)
        if dists and dists[0].lower() != BUILTIN:
            with contextlib.suppress(md.PackageNotFoundError):
                return dists[0], md.version(dists[0])
    return BUILTIN, __version__


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def _check_requirement(ep: md.EntryPoint) -> None:
    """A plugin may declare ``Requires-Dist: clfkit>=X``; refuse it clearly on an older clfkit."""
    if ep.dist is None:
        return
    from clfkit import __version__

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    for req in ep.dist.requires or []:
        try:
            r = Requirement(req)
        except InvalidRequirement:
            continue
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue  # an optional extra's requirement, or another platform's
        if r.name.lower() == "clfkit" and r.specifier:
            if not r.specifier.contains(Version(__version__), prereleases=True):
                raise PluginError(ep.dist.name, f"requires clfkit{r.specifier} but clfkit "
                                  f"{__version__} is installed; upgrade clfkit", ep.name)


# --------------------------------------------------------------------------- specs
def split_spec(spec: Any) -> tuple[str, dict]:
    """``"name"`` or ``{"name": ..., **args}`` -> (name, args)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, BaseModel):
        spec = spec.model_dump()
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        args = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], args
    raise RegistryError(f"a component is written as a name or {{name: ..., <args>}}, got {spec!r}")


def validate_args(entry: Entry, args: dict, path: str = "") -> dict:
    """Validate user ``args`` against ``entry``'s signature; raise RecipeError with paths."""
    problems = check_args(entry, args, path)
    if problems:
        raise RecipeError(problems, source=path or entry.name)
    return _validated(entry, args)


def _validated(entry: Entry, args: dict) -> dict:
    if entry.validator is not None:
        return entry.validator(dict(args))
    model = entry.args_model.model_validate(args)
    out = {name: getattr(model, name) for name in type(model).model_fields}
    out.update(model.model_extra or {})
    return out


def check_args(entry: Entry, args: dict, path: str) -> list[tuple[str, str]]:
    """All problems with ``args`` for ``entry``, as (dotted path, message) pairs."""
    problems: list[tuple[str, str]] = []
    kind = KINDS[entry.kind]
    supplied = [a for a in args if a in kind.supplied]
    for a in supplied:
        problems.append((f"{path}.{a}", f"is set by clfkit (from the data or the trainer), "
                                        f"not in the recipe; remove it"))
    args = {k: v for k, v in args.items() if k not in kind.supplied}
    if entry.validator is not None:
        try:
            entry.validator(dict(args))
        except Exception as e:
            problems.append((path, f"{entry.kind} {entry.name!r}: {e}"))
        return problems
    valid = [p.name for p in entry.user_params()]
    try:
        entry.args_model.model_validate(args)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden" and len(err["loc"]) > 1:
                msg = f"unknown field {err['loc'][-1]!r} here"
            elif err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][0]), valid, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                msg = (f"{entry.kind} {entry.name!r} has no argument {err['loc'][0]!r}{hint} "
                       f"Valid: {', '.join(valid) or '(none)'}")
            elif err["type"] == "missing":
                msg = f"required argument of {entry.kind} {entry.name!r} is missing"
            else:
                msg = f"{err['msg']} (got {err.get('input')!r})"
            problems.append((f"{path}.{loc}", msg))
    # references to other components (a model's norm / activation) are checked recursively
    for arg, ref_kind in kind.refs.items():
        if arg in args and args[arg] is not None and entry.accepts(arg):
            problems += check_spec(ref_kind, args[arg], f"{path}.{arg}")
    return problems


def check_spec(kind: str, spec: Any, path: str) -> list[tuple[str, str]]:
    """Problems with a component spec (unknown name, bad args), with dotted paths."""
    try:
        name, args = split_spec(spec)
        entry = REGISTRY.get(kind, name)
    except RegistryError as e:
        return [(path if isinstance(spec, str) else f"{path}.name", str(e))]
    return check_args(entry, args, path)


def resolve_spec(kind: str, spec: Any) -> dict:
    """``spec`` with defaults filled in: what the resolved recipe records."""
    name, args = split_spec(spec)
    entry = REGISTRY.get(kind, name)
    args = {k: v for k, v in args.items() if k not in KINDS[kind].supplied}
    full = _validated(entry, args)
    for arg, ref_kind in KINDS[kind].refs.items():
        if full.get(arg) is not None and entry.accepts(arg) and not callable(full[arg]):
            full[arg] = resolve_spec(ref_kind, full[arg])
    return {"name": name, **_plain(full)}


def _plain(value: Any) -> Any:
    """Make validated values YAML/JSON friendly (tuples -> lists, models -> dicts)."""
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- module API
REGISTRY = Registry()
_BUILTIN_HOME = REGISTRY  # where clfkit.components registers (tests may swap REGISTRY)


def register(kind: str, name: str | None = None, **kw):
    """Decorator registering a component in the global registry (or, while a plugin is being
    loaded, in the registry loading it)."""
    return (_loading.get() or _BUILTIN_HOME).register(kind, name, **kw)


def create(kind: str, name: str, /, **kwargs):
    """Build a registered component by kind and name."""
    return REGISTRY.create(kind, name, **kwargs)


def get(kind: str, name: str) -> Entry:
    """The registered entry for ``name`` of ``kind``."""
    return REGISTRY.get(kind, name)


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted."""
    return REGISTRY.names(kind)


register_model = functools.partial(register, "model")
register_norm = functools.partial(register, "norm")
register_activation = functools.partial(register, "activation")
register_regularizer = functools.partial(register, "regularizer")
register_augmentation = functools.partial(register, "augmentation")
register_loss = functools.partial(register, "loss")
register_optimizer = functools.partial(register, "optimizer")
register_schedule = functools.partial(register, "schedule")
register_dataset = functools.partial(register, "dataset")
