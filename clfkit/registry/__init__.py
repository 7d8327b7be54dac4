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

The package, one concern per module:

* ``entries``       the kinds of component and their calling contracts (KINDS), one
                    registered component (Entry) and the checks of its contract, type hints as text
* ``table``         Registry: add, get, create, remove, entries, fallbacks
* ``specs``         ``{name, args}`` specs checked against the component's signature
* ``plugins``       where ``@register`` puts a component (the process-wide state); entry-point
                    discovery, CLFKIT_PLUGINS, isolation of broken plugins
* ``scaffold``      ``clfkit plugins new``: a plugin package from ``templates/plugin``

This module holds the one registry clfkit uses, :data:`REGISTRY`, and the functions over it
that components, recipes and plugins call. They read ``REGISTRY`` when called, so a test may
swap it for a private ``Registry()``.
"""

from __future__ import annotations

import functools
from typing import Any

from clfkit.registry import specs
from clfkit.registry.entries import (
    BUILTIN,
    Entry,
    Kind,
    KINDS,
    REGULARIZER_HOOKS,
    check_kind,
    define_kind,
    type_hints,
    type_text,
)
from clfkit.registry.plugins import (
    ENTRY_POINT_GROUP,
    REGISTRATIONS,
    plugin_selection,
    plugins_disabled,
    register,
)
from clfkit.registry.specs import split_spec
from clfkit.registry.table import Registry

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "REGISTRY",
    "REGULARIZER_HOOKS",
    "Entry",
    "Kind",
    "Registry",
    "check_args",
    "check_kind",
    "check_spec",
    "create",
    "define_kind",
    "get",
    "names",
    "plugin_selection",
    "plugins_disabled",
    "register",
    "resolve_spec",
    "split_spec",
    "type_hints",
    "type_text",
    "validate_args",
]

# The one registry clfkit uses; built-ins and direct registrations land in it (its "home").
REGISTRY = Registry()
REGISTRATIONS.home = REGISTRY


def create(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Build a registered component by kind and name."""
    return REGISTRY.create(kind, name, **kwargs)


def get(kind: str, name: str) -> Entry:
    """The registered entry for ``name`` of ``kind``."""
    return REGISTRY.get(kind, name)


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted."""
    return REGISTRY.names(kind)


def check_spec(kind: str, spec: Any, path: str) -> list[tuple[str, str]]:
    """Problems with a component spec (unknown name, bad args), with dotted recipe paths."""
    return REGISTRY.check_spec(kind, spec, path)


def resolve_spec(kind: str, spec: Any) -> dict:
    """``spec`` with defaults filled in: what the resolved recipe records."""
    return REGISTRY.resolve_spec(kind, spec)


def check_args(entry: Entry, args: dict, path: str) -> list[tuple[str, str]]:
    """All problems with ``args`` for ``entry``, as (dotted path, message) pairs."""
    return specs.check_args(entry, args, path, REGISTRY.get)


def validate_args(entry: Entry, args: dict, path: str = "") -> dict:
    """Validate user ``args`` against ``entry``'s signature; raise RecipeError with paths."""
    return specs.validate_args(entry, args, REGISTRY.get, path)


register_model = functools.partial(register, "model")
register_norm = functools.partial(register, "norm")
register_activation = functools.partial(register, "activation")
register_regularizer = functools.partial(register, "regularizer")
register_augmentation = functools.partial(register, "augmentation")
register_loss = functools.partial(register, "loss")
register_optimizer = functools.partial(register, "optimizer")
register_schedule = functools.partial(register, "schedule")
register_dataset = functools.partial(register, "dataset")
