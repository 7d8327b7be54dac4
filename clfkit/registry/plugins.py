"""Where ``@register`` puts a component, and plugin discovery.

Registrations: the registry package's process-wide state, kept in one object,
:data:`REGISTRATIONS`, besides the registry clfkit uses (REGISTRY). Why it is process-wide: a
component registers as a side effect of importing its module, and Python imports a module once
per process, so what an import registered outlives any one
:class:`~clfkit.registry.table.Registry` (tests build private ones). It holds:

* ``home``: the registry that built-ins, and components registered outside plugin loading,
  go to (``clfkit.registry.REGISTRY`` as created; a private registry copies the built-ins
  from it, since importing ``clfkit.components`` again would register nothing);
* ``by_entry_point``: what each plugin entry point registered when it was imported, replayed
  into registries that load the plugin later, for the same reason;
* the plugin being loaded right now (a context variable, so per thread and task): its
  registrations go to the registry loading it, in that plugin's name.

Plugins: the ``clfkit.plugins`` entry points, chosen by CLFKIT_PLUGINS, each loaded in
isolation. A plugin that fails to load (an exception, an unmet ``clfkit>=X`` requirement,
``sys.exit()``, a KeyboardInterrupt it raises itself) is recorded with its distribution name
and the cause, what it registered is rolled back, and clfkit keeps working; only a real Ctrl-C
stops the loading.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
import functools
import importlib.metadata as md
import inspect
import logging
import os
import re
import signal
import threading
from typing import Any, Callable, Iterator

from clfkit.errors import PluginError
from clfkit.registry.entries import BUILTIN, Entry


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
            "clfkit_loading", default=None
        )

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


def register(kind: str, name: str | None = None, **kw: Any) -> Callable[[Any], Any]:
    """Decorator registering a component in the global registry (or, while a plugin is being
    loaded, in the registry loading it). Built-ins import it from here, the registration point,
    not the table (which imports them on first use): ``from clfkit.registry import register``
    is the same function."""
    return REGISTRATIONS.target().register(kind, name, **kw)


def add_fallback(kind: str, resolver: Callable[[str], Entry | None]) -> None:
    """Resolve names of ``kind`` not in the table with ``resolver`` (e.g. any albumentations
    transform by class name), in the registry clfkit uses."""
    REGISTRATIONS.home.add_fallback(kind, resolver)


ENTRY_POINT_GROUP = "clfkit.plugins"
_log = logging.getLogger("clfkit.plugins")


# --------------------------------------------------------------------------- selection
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
    return {dist_key(name) for name in text.split(",") if name.strip()}


def dist_of(ep: md.EntryPoint) -> str:
    """The distribution an entry point comes from (its module's name when unknown)."""
    return ep.dist.name if ep.dist else ep.value.split(":")[0]


def dist_key(name: str) -> str:
    """A distribution name as pip compares them: clfkit_Airbench == clfkit-airbench."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


# --------------------------------------------------------------------------- loading
def load_plugins(registry: Any) -> None:
    """Load every selected ``clfkit.plugins`` entry point into ``registry`` (a Registry);
    failures are recorded in ``registry.plugin_errors`` and logged as one warning each."""
    wanted = plugin_selection()
    if wanted == set():
        return
    installed = list(md.entry_points(group=ENTRY_POINT_GROUP))
    with _telling_real_ctrl_c() as pressed:
        for ep in installed:
            if wanted is None or dist_key(dist_of(ep)) in wanted:
                load_entry_point(registry, ep, pressed)
    _check_selection(registry, wanted, installed)
    for err in registry.plugin_errors:  # one line each; `clfkit plugins` lists them too
        _log.warning("warning: %s", err)


def _check_selection(registry: Any, wanted: set[str] | None, installed: list[md.EntryPoint]) -> None:
    """A name in CLFKIT_PLUGINS that no installed plugin has is recorded (and warned about)
    with the installed names: a typo must not silently train without the plugin."""
    names = sorted({dist_of(ep) for ep in installed})
    for key in sorted((wanted or set()) - {dist_key(n) for n in names}):
        registry.plugin_errors.append(
            PluginError(
                key,
                f"CLFKIT_PLUGINS names {key!r}, but no installed plugin distribution is called "
                f"that; installed: {', '.join(names) or '(none)'} (or CLFKIT_PLUGINS=none / all)",
            )
        )


def load_entry_point(registry: Any, ep: md.EntryPoint, ctrl_c: threading.Event | None = None) -> None:
    """Load one plugin into ``registry``; a failure is recorded in its ``plugin_errors`` and
    rolled back. That includes ``sys.exit()``, SystemExit and KeyboardInterrupt raised by the
    plugin itself; only a real Ctrl-C (seen by ``ctrl_c``, see _telling_real_ctrl_c) still
    interrupts."""
    dist = dist_of(ep)
    version = ep.dist.version if ep.dist else ""
    with REGISTRATIONS.loading(registry, dist, version) as loading:
        try:
            _check_requirement(ep)
            _import_or_replay(registry, ep, dist, loading.added)
            registry.plugins.append((dist, version))
        except BaseException as e:  # a broken plugin must not break clfkit: record and roll back
            if isinstance(e, KeyboardInterrupt) and (ctrl_c is None or ctrl_c.is_set()):
                raise  # the user pressed Ctrl-C (or we cannot tell): stop as asked
            if isinstance(e, SystemExit):
                e = PluginError(dist, f"it called sys.exit({e.code!r}) while loading", ep.name)
            for entry in loading.added:
                registry.remove(entry.kind, entry.name)
            registry.plugin_errors.append(e if isinstance(e, PluginError) else PluginError(dist, e, ep.name))


def _import_or_replay(registry: Any, ep: md.EntryPoint, dist: str, added: list) -> None:
    """Run the plugin's registrations: import it the first time, replay them afterwards."""
    if ep.value in REGISTRATIONS.by_entry_point:
        # Python imports a module once: another registry loaded this plugin already
        for e in REGISTRATIONS.by_entry_point[ep.value]:
            registry.add(e.kind, e.name, e.obj, validator=e.validator)
        return
    obj = ep.load()  # a module registers with decorators as it is imported ...
    if not inspect.ismodule(obj):
        if not callable(obj):
            raise PluginError(
                dist,
                f"entry point {ep.value!r} names a {type(obj).__name__}; "
                f"it must name a module or a function to call",
                ep.name,
            )
        obj()  # ... a function registers when called (with no arguments)
    REGISTRATIONS.by_entry_point[ep.value] = list(added)


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


# --------------------------------------------------------------------------- provenance
def infer_provider(obj: Any) -> tuple[str, str]:
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
                raise PluginError(
                    ep.dist.name,
                    f"requires clfkit{r.specifier} but clfkit {__version__} is installed; upgrade clfkit",
                    ep.name,
                )
