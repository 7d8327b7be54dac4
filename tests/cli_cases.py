"""Shared by the misuse tests that check click's Result directly: a tiny linear recipe, a YAML
writer, the CLI's Result for some arguments, and the check that a refusal is a clear error.
(conftest's ``TINY`` is a CNN that trains; its ``invoke`` returns a tuple.)"""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from clfkit.cli import cli

TINY = {
    "name": "tiny",
    "data": {
        "source": {"name": "shapes", "num_classes": 2, "train_size": 64, "val_size": 16, "test_size": 16},
        "image_size": 8,
    },
    "model": "linear",
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 1, "batch_size": 16},
}


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def cli_result(*args: str):
    """The CLI's click Result (exit code, output) for ``args``."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def clear_error(result, *words: str) -> str:
    """Exit 2, `error: ...` naming the words, no traceback."""
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text and not isinstance(result.exception, (AssertionError, TypeError)), text
    for w in words:
        assert w in text, (w, text)
    return text
