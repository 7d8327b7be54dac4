"""Where ``@register`` decorators put components: the registry package's process-wide state,
kept in one object, :data:`REGISTRATIONS`, besides the registry clfkit uses (REGISTRY).

Why it is process-wide: a component registers as a side effect of importing its module, and
Python imports a module once per process, so what an import registered outlives any one
:class:`~clfkit.registry.table.Registry` (tests build private ones). It holds:

* ``home``: the registry that built-ins, and components registered outside plugin loading,
  go to (``clfkit.registry.REGISTRY`` as created; a private registry copies the built-ins
  from it, since importing ``clfkit.components`` again would register nothing);
* ``by_entry_point``: what each plugin entry point registered when it was imported, replayed
  into registries that load the plugin later, for the same reason;
* the plugin being loaded right now (a context variable, so per thread and task): its
  registrations go to the registry loading it, in that plugin's name.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator

from clfkit.registry.entries import Entry


@dataclass
class Loading:
    """One plugin being loaded: the registry it fills, who it is, and what it added so far."""

    registry: Any  # the clfkit.registry.table.Registry loading the plugin
    provider: str
    version: str
    added: list[Entry] = field(default_factory=list)


class Registrations:
    """The registration state of the process (see the module docstring)."""

    def __init__(self) -> None:
        self.home: Any = None  # set by clfkit.registry when it creates REGISTRY
        self.by_entry_point: dict[str, list[Entry]] = {}
        self._loading: contextvars.ContextVar[Loading | None] = contextvars.ContextVar(
            "clfkit_loading", default=None)

    def current(self) -> Loading | None:
        """The plugin being loaded in this thread or task, if any."""
        return self._loading.get()

    def target(self) -> Any:
        """The registry a ``@register`` decorator run now fills."""
        loading = self._loading.get()
        return loading.registry if loading is not None else self.home

    @contextlib.contextmanager
    def loading(self, registry: Any, provider: str, version: str = "") -> Iterator[Loading]:
        """Within: registrations go to ``registry`` as coming from ``provider`` ``version``."""
        token = self._loading.set(Loading(registry, provider, version))
        try:
            yield self._loading.get()
        finally:
            self._loading.reset(token)


REGISTRATIONS = Registrations()
