"""export --int8 when the run's data moved (issue 22, class 8): a clear error naming
--data-root, and --data-root reads the data from its new place (as eval's does)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import invoke, refused, train_folder_run, write_image_folder

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a run trained on a folder dataset, that dataset's root)."""
    return train_folder_run(tmp_path_factory.mktemp("moved"), "f", per_class=8, val_fraction=0.25)


def test_int8_export_after_the_data_moved(folder_run, tmp_path):
    run, root = folder_run
    moved = tmp_path / "elsewhere"
    shutil.move(root, moved)
    try:
        refused(
            ["export --int8", str(root), "does not exist", "--data-root"],
            "export",
            run,
            "--int8",
            "--min-agreement",
            0,
            "-o",
            tmp_path / "m.onnx",
        )
        assert not (tmp_path / "m.onnx").exists()
        refused(
            ["--data-root", str(tmp_path / "nowhere"), "does not exist"],
            "export",
            run,
            "--int8",
            "--data-root",
            tmp_path / "nowhere",
            "-o",
            tmp_path / "m.onnx",
        )
        code, out = invoke(
            "export", run, "--int8", "--min-agreement", 0, "--data-root", moved, "-o", tmp_path / "m.onnx"
        )
        assert code == 0 and "int8: top-1 agreement" in out, out
        other = write_image_folder(tmp_path / "other", classes=("cat", "cow"), per_class=8, size=8)
        refused(
            ["classes", "cow", "--data-root"],
            "export",
            run,
            "--int8",
            "--min-agreement",
            0,
            "--data-root",
            other,
            "-o",
            tmp_path / "o.onnx",
        )
        refused(["--data-root", "--int8"], "export", run, "--data-root", moved, "-o", tmp_path / "p.onnx")
        # --calibrate fits on the val images: the same place, the same option
        refused(
            ["export --calibrate", str(root), "does not exist", "--data-root"],
            "export",
            run,
            "--calibrate",
            "-o",
            tmp_path / "c.onnx",
        )
        code, out = invoke("export", run, "--calibrate", "--data-root", moved, "-o", tmp_path / "c.onnx")
        assert code == 0 and "calibrated: temperature" in out, out
        refused(["clfkit eval", str(root), "--data-root"], "eval", run)  # eval says the same
    finally:
        shutil.move(moved, root)
