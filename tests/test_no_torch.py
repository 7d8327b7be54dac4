"""Deployment needs no torch: predict, the package and the CLI import none, and a real exported
model is classified with torch unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clfkit.deploy.export import export_run

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = str(Path(__file__).with_name("no_torch.py"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_py(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "module", ["clfkit", "clfkit.cli", "clfkit.deploy.batch_predict", "clfkit.deploy.onnx_contract"]
)
def test_deployment_modules_import_no_torch(module):
    r = run_py(
        "-c",
        f"import {module}, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules "
        f"if m.startswith('torch'))[:5]",
    )
    assert r.returncode == 0, r.stderr


def test_hidden_torch_is_really_hidden():
    r = run_py(NO_TORCH, "-c", "import torch")
    assert r.returncode != 0 and "hidden by tests/no_torch.py" in r.stderr


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("nt") / "m.onnx").path


def test_predict_cli_runs_without_torch(exported, tmp_path):
    import numpy as np
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            imgs / f"{i}.png"
        )
    out = tmp_path / "test.txt"
    r = run_py(NO_TORCH, "-m", "clfkit", "predict", str(exported), str(imgs), "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and "wrote 5 predictions" in r.stdout
