"""Run clfkit with torch hidden from the import path, as on a deployment machine without it.

Used by the tests as ``python tests/no_torch.py -m clfkit predict ...`` or
``python tests/no_torch.py -c CODE`` (or ``python tests/no_torch.py FILE.py``): a meta-path
finder placed first refuses ``torch`` and every ``torch.*`` module, then the rest of the
command line runs as ``python`` would run it.
"""

from __future__ import annotations

import runpy
import sys

HIDDEN = ("torch", "torchvision", "timm")


class HideTorch:
    """A meta-path finder that makes torch (and what needs it) unimportable."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/no_torch.py)", name=name)
        return None


def main() -> None:
    sys.meta_path.insert(0, HideTorch())
    args = sys.argv[1:]
    if args[0] == "-c":
        sys.argv = ["-c"] + args[2:]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    elif args[0] == "-m":
        sys.argv = [args[1]] + args[2:]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
