"""The registry table: named factories by kind, plus the plugins they came from. Looking a
name up loads the built-ins and the plugins first (once), never by import order."""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Iterator

from clfkit.util import yaml_text as yamltext
from clfkit.errors import ClfkitError, PluginError, RegistryError
from clfkit.registry.entries import BUILTIN, Entry, KINDS, check_contract, check_kind, check_result
from clfkit.registry.plugins import REGISTRATIONS, infer_provider, load_plugins
from clfkit.registry.specs import check_spec, resolve_spec, split_spec, validate_args
from clfkit.util.did_you_mean import did_you_mean


class Registry:
    """Named factories by kind, plus the plugins they came from."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._fallbacks: dict[str, list[Callable[[str], Entry | None]]] = {}
        self.plugin_errors: list[PluginError] = []
        self.plugins: list[tuple[str, str]] = []  # (distribution, version) loaded
        self._loaded = False
        self._lock = threading.RLock()

    # ---- registering
    def register(
        self, kind: str, name: str | None = None, *, validator: Callable[[dict], dict] | None = None
    ) -> Callable[[Any], Any]:
        """Decorator: register a function or class as component ``name`` of ``kind``."""
        self._check_kind(kind)

        def deco(obj):
            self.add(kind, name or obj.__name__, obj, validator=validator)
            return obj

        return deco

    def add(
        self, kind: str, name: str, obj: Callable, *, validator: Callable[[dict], dict] | None = None
    ) -> Entry:
        """Register ``obj`` as ``name`` of ``kind``; refuse a duplicate or a broken contract.
        While a plugin loads, the component is recorded as that plugin's."""
        self._check_kind(kind)
        loading = REGISTRATIONS.current()
        provider, version = (loading.provider, loading.version) if loading else infer_provider(obj)
        if not callable(obj):
            raise RegistryError(
                f"{kind} {name!r} from {provider} is a {type(obj).__name__}, "
                f"not a function or class: a {kind} must be a factory "
                f"({KINDS[kind].doc})"
            )
        problem = _name_problem(name)
        if problem:
            raise RegistryError(
                f"{kind} {name!r} from {provider}: {problem}; a component name is text a "
                f"recipe can write as it is, e.g. 'my_net' or 'MyNet'"
            )
        entry = Entry(kind, name, obj, provider, version, validator)
        check_contract(entry)
        with self._lock:
            table = self._entries.setdefault(kind, {})
            if name in table:
                old = table[name]
                raise RegistryError(
                    f"{kind} {name!r} is registered twice: by {old.provider} and by {provider}. "
                    f"Rename one of them, or uninstall one of the two packages."
                )
            table[name] = entry
            if loading is not None and loading.registry is self:
                loading.added.append(entry)  # rolled back if the plugin fails later
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
        for k in [kind] if kind else KINDS:
            yield from (self._entries[k][n] for n in sorted(self._entries.get(k, {})))

    # ---- building
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
        user = validate_args(entry, kwargs, self.get, path=f"{kind}.{name}")
        for arg, ref_kind in k.refs.items():
            if arg in user and not callable(user[arg]):
                user[arg] = self.factory(ref_kind, user[arg])
        context = {a: v for a, v in context.items() if entry.accepts(a)}
        try:
            obj = entry.obj(**context, **user)
        except (ClfkitError, OSError, MemoryError):
            raise  # clfkit's own errors say what they need; the machine's (a full disk) are handled above
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin's own code: named, with its error
            shown = {k: getattr(v, "spec", v) for k, v in user.items()}
            why = str(e) if isinstance(e, (TypeError, ValueError)) else f"{type(e).__name__}: {e}"
            raise RegistryError(
                f"{kind} {name!r} (from {entry.provider}) failed to build with {shown}: {why}"
            ) from e
        check_result(entry, obj)
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

    # ---- recipe specs
    def check_spec(self, kind: str, spec: Any, path: str) -> list[tuple[str, str]]:
        """Problems with a component spec (unknown name, bad args), with dotted paths."""
        return check_spec(kind, spec, path, self.get)

    def resolve_spec(self, kind: str, spec: Any) -> dict:
        """``spec`` with defaults filled in: what the resolved recipe records."""
        return resolve_spec(kind, spec, self.get)

    # ---- loading
    def load(self) -> None:
        """Import built-ins, then every ``clfkit.plugins`` entry point (once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            # Built-ins register into the home registry as clfkit.components is imported (by
            # name, as a plugin is: the registry package does not depend on its components).
            importlib.import_module("clfkit.components")
            home = REGISTRATIONS.home
            if home is not None and home is not self:  # a private registry starts from them too
                self._take_builtins(home)
            load_plugins(self)

    def _take_builtins(self, home: Registry) -> None:
        for kind, table in home._entries.items():
            self._entries.setdefault(kind, {}).update(
                {n: e for n, e in table.items() if e.provider == BUILTIN}
            )
        for kind, resolvers in home._fallbacks.items():
            self._fallbacks.setdefault(kind, []).extend(resolvers)

    # ---- helpers
    def _check_kind(self, kind: str) -> None:
        check_kind(kind)
        self._entries.setdefault(kind, {})

    def _unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self._entries[kind])
        msg = f"unknown {kind} {name!r}{did_you_mean(name, known)}"
        msg += f" Known {kind}s: {', '.join(known) or '(none)'}."
        if self.plugin_errors:
            msg += " Note: " + "; ".join(str(e) for e in self.plugin_errors)
        return msg


def _name_problem(name: Any) -> str:
    """Why a recipe could not name a component ``name`` (empty when it can): a recipe reads
    ``model: true`` as a yes/no and ``model: 1e3`` as a number, never as those names."""
    if not isinstance(name, str):
        return f"the name is a {type(name).__name__}, not text"
    if not name or name != name.strip() or any(not c.isprintable() for c in name):
        return "the name is empty, starts or ends with a space, or holds a control character"
    try:
        read = yamltext.parse_value(name)
    except yamltext.YAMLProblem:
        read = None
    if read != name:
        return f"a recipe would read it as {read!r} ({type(read).__name__}), not as the name"
    return ""
