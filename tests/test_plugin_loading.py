"""Plugin loading (clfkit.registry.plugins): a plugin that exits is isolated and commands keep
working, a real Ctrl-C while one loads still interrupts, `clfkit plugins` names what to load.
"""

from __future__ import annotations

import signal
import textwrap

import pytest
from cli_cases import TINY, write
from cli_cases import cli_result as invoke

from clfkit import registry
from clfkit.registry import Registry


# --------------------------------------------------------------------------- rows 12, 16: plugins
@pytest.fixture
def site(tmp_path, monkeypatch):
    """Throwaway plugin distributions on sys.path (as tests/test_plugins.py makes them)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("CLFKIT_PLUGINS", raising=False)
    tag = f"t{abs(hash(str(tmp_path))) % 10**8}"

    def make(dist: str, code: str) -> None:
        module = f"{dist.replace('-', '_')}_{tag}"
        (folder / f"{module}.py").write_text(textwrap.dedent(code))
        info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[clfkit.plugins]\n{dist} = {module}\n")

    return make


GOOD = """
    import torch.nn as nn
    from clfkit.registry import register

    @register("norm", "acme_identity")
    def acme_identity(num_features: int, dim: int = 2) -> nn.Module:
        return nn.Identity()
"""


@pytest.mark.parametrize(
    "code, words",
    [
        ("import sys\nsys.exit()\n", "sys.exit(None)"),
        ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
        ("raise SystemExit('bye')\n", "sys.exit('bye')"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("class Odd(BaseException): pass\nraise Odd('strange')\n", "Odd: strange"),
    ],
)
def test_plugin_that_exits_is_isolated_and_commands_keep_working(
    site, monkeypatch, tmp_path, caplog, code, words
):
    site("acme-good", GOOD)
    site("acme-exits", code)
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    listing = invoke("plugins", "--kind", "norm")
    assert listing.exit_code == 0, listing.output
    assert "acme_identity" in listing.output and "broken plugin acme-exits" in listing.output
    assert words in listing.output
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    check = invoke("recipe", "check", write(tmp_path / "r.yaml", TINY))
    assert check.exit_code == 0 and "recipe OK" in check.output, check.output
    assert any(r.getMessage().startswith("warning: plugin acme-exits") for r in caplog.records)


def test_real_ctrl_c_while_a_plugin_loads_still_interrupts(site):
    site("acme-slow", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(2)\n")
    # Python's own handler, armed afresh. In long mixed runs this test sometimes did not see the
    # KeyboardInterrupt while no Python-level handler had leaked (the conftest guard checks that);
    # the suspect, not yet found, is a C-level SIGINT handler some earlier test's library leaves,
    # which getsignal() cannot see. This test is about clfkit's loader, given Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            Registry().load()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_clfkit_plugins_names_what_to_load_and_unknown_names_are_listed(site, monkeypatch, tmp_path, caplog):
    site("acme-good", GOOD)
    site("acme-other", GOOD.replace("acme_identity", "acme_other"))
    monkeypatch.setenv("CLFKIT_PLUGINS", "acme_good")
    reg = Registry()
    reg.load()
    assert "acme_identity" in reg.names("norm") and "acme_other" not in reg.names("norm")
    monkeypatch.setenv("CLFKIT_PLUGINS", "acme-goood")
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    result = invoke("recipe", "check", write(tmp_path / "r.yaml", TINY))
    assert result.exit_code == 0, result.output
    (warning,) = [r.getMessage() for r in caplog.records if "CLFKIT_PLUGINS" in r.getMessage()]
    assert "CLFKIT_PLUGINS names 'acme-goood'" in warning
    assert "acme-good" in warning and "acme-other" in warning  # the installed ones
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    listing = invoke("plugins")
    assert "broken plugin acme-goood" in listing.output and "installed:" in listing.output
