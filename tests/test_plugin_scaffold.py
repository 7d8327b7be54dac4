"""clfkit plugins new (clfkit.registry.scaffold): names pip or the file system would refuse
are refused up front; a name at the length limit still makes a working package.
"""

from __future__ import annotations

from conftest import invoke, refused
import pytest


# --------------------------------------------------------------------------- plugins new NAME
@pytest.mark.parametrize("name", ["x_", "nets-", "a" * 65, "a" * 300])
def test_plugins_new_refuses_names_pip_or_the_file_system_would(tmp_path, name):
    """'x_' made the distribution 'clfkit-x-', which pip refuses; 300 characters was an
    OSError traceback (file name too long)."""
    refused(
        ["plugin name", "ending with a letter or digit", "at most 64"],
        "plugins",
        "new",
        "--dir",
        tmp_path,
        name,
    )
    assert list(tmp_path.iterdir()) == []


def test_plugins_new_takes_a_name_at_the_length_limit(tmp_path):
    code, out = invoke("plugins", "new", "--dir", tmp_path, "a" * 64)
    assert code == 0, out
    assert (tmp_path / f"clfkit-{'a' * 64}" / f"clfkit_{'a' * 64}").is_dir()
