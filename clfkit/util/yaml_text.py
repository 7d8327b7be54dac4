"""The one YAML reader for what users write: recipe files, sweep files and the values of
``--set`` and ``--grid``, so the same text always means the same value.

It is ``yaml.SafeLoader`` (no code runs) with three changes:

* Scalars follow YAML 1.2's core schema, which is what people expect, not YAML 1.1's:
  ``1e-3`` and ``1E5`` are floats (1.1 reads them as strings), ``.5`` is 0.5, ``1_000`` is
  1000, ``0x10`` 16, ``0o10`` 8 and ``010`` is 10 (not octal 8); only ``true``/``false`` are
  booleans: ``on``, ``off``, ``yes``, ``no``, ``y``, ``n`` stay text (a yes/no field still
  accepts them, pydantic reads them as booleans), and ``1:30`` stays text (1.1: 5400).
* A key given twice in one mapping, at any depth, is an error naming the key's dotted path
  (``optim.lr``, ``data.augment.0.p``) and both lines (YAML would silently keep the last).
* Anchors and aliases are allowed, but the document they expand to is limited to
  ``MAX_NODES`` nodes, so an alias bomb ("billion laughs") fails at once with a short message,
  and an alias inside its own anchor (a value that would contain itself) is refused.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

MAX_NODES = 100_000  # far above any recipe (a few hundred nodes), far below a bomb's billions

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_EXP = r"[eE][-+]?[0-9]+"
_INT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
_FLOAT_RE = re.compile(
    rf"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:{_EXP})?|\.[0-9][0-9_]*(?:{_EXP})?"
    rf"|[0-9][0-9_]*{_EXP}|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class YAMLProblem(ValueError):
    """Text that is not acceptable YAML for clfkit; ``line`` is 1-based (0: unknown), ``path``
    the dotted path of the offending key ("" when the problem is not one key's)."""

    def __init__(self, message: str, line: int = 0, path: str = ""):
        super().__init__(message)
        self.line = line
        self.path = path


class Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars, duplicate keys refused and aliases budgeted."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = self.construct_scalar(node).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
        return sign * int(digits[2:] if base != 10 else digits, base)

    def construct_yaml_float(self, node: yaml.Node) -> float:
        text = self.construct_scalar(node).replace("_", "").lower()
        if text.lstrip("+-") == ".inf":
            return -math.inf if text.startswith("-") else math.inf
        return math.nan if text.endswith(".nan") else float(text)

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)  # first: the walk below must not expand a bomb
            _refuse_duplicate_keys(self, node)
        return node


for _tag, _rx, _first in (
    (_BOOL, _BOOL_RE, list("tTfF")),
    (_INT, _INT_RE, list("-+0123456789")),
    (_FLOAT, _FLOAT_RE, list("-+0123456789.")),
):
    Loader.add_implicit_resolver(_tag, _rx, _first)
Loader.add_constructor(_INT, Loader.construct_yaml_int)
Loader.add_constructor(_FLOAT, Loader.construct_yaml_float)


def _refuse_duplicate_keys(loader: Loader, root: yaml.Node) -> None:
    """A key twice in one mapping is a mistake, reported at its dotted path from the document's
    root (the first path a mapping is reached by, when aliases share it); ``<<`` merge keys are
    YAML's way to override and are not counted."""
    done: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(child, _join(path, i)) for i, child in enumerate(node.value)]))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(reversed(_check_mapping(loader, node, path)))  # document order


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_mapping(loader: Loader, node: yaml.MappingNode, path: str) -> list[tuple[yaml.Node, str]]:
    """Raise on a key given twice in ``node`` (at ``path``); returns its values with their paths."""
    seen: dict[Any, tuple[int, int]] = {}  # key -> (line, column), 1-based
    children = []
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            children.append((value_node, path))
            continue
        key = loader.construct_object(key_node, deep=True)
        line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
        children.append((value_node, _join(path, key)))
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader reports it itself
            continue
        if first is not None:
            where = (
                f"on line {line} (columns {first[1]} and {column})"
                if first[0] == line
                else f"on line {first[0]} and on line {line}"
            )
            raise YAMLProblem(f"key {key!r} is given twice, {where}; keep one", line, _join(path, key))
        seen[key] = (line, column)
    return children


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes the document expands to (each alias counted in full, shared subtrees
    measured once), stopping as soon as it passes MAX_NODES; an alias inside its own anchor
    (``a: &x [*x]``), which would expand forever, is refused."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # the nodes being measured: the ancestors of the one at hand
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if not children_done:
            if any(id(k) in open_ or k is node for k in kids):
                line = node.start_mark.line + 1
                raise YAMLProblem(
                    f"the anchor (&) on line {line} is used by an alias (*) inside "
                    f"itself, so its value would contain itself without end; "
                    f"write the value out, or move the alias outside the anchored block",
                    line,
                )
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        open_.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes.get(id(k), 1) for k in kids)
        if sizes[id(node)] > MAX_NODES:
            raise YAMLProblem(
                f"the YAML expands to more than {MAX_NODES:,} values through its "
                f"anchors (&) and aliases (*), around line {node.start_mark.line + 1}: "
                f"an alias bomb? Write the values out, or use fewer aliases",
                node.start_mark.line + 1,
            )


def load(text: str) -> Any:
    """Parse YAML text with :class:`Loader`; YAML syntax errors raise ``yaml.YAMLError``,
    clfkit's own refusals :class:`YAMLProblem`."""
    return _unshare(yaml.load(text, Loader=Loader))  # noqa: S506 (Loader is a SafeLoader)


def _unshare(value: Any) -> Any:
    """Copies of aliased parts, so that overriding one place never changes another."""
    if isinstance(value, dict):
        return {k: _unshare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshare(v) for v in value]
    return value


def parse_value(text: str) -> Any:
    """One ``--set``/``--grid`` value: YAML as in a recipe file (``1e-3`` -> 0.001, ``[1, 2]``,
    ``{name: sgd}``); empty -> ``""``; text that is not valid YAML stays that text."""
    if not text.strip():
        return ""
    try:
        return load(text)
    except yaml.YAMLError:
        return text
