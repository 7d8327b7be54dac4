"""Every bad input gets a short message saying what and where, a non-zero exit, and no
traceback (unless --debug). One table row per case; each runs the real CLI (click's
CliRunner, in-process) on files made in a tmp folder."""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from clfkit.cli import cli

from conftest import TINY, write_image_folder


# --------------------------------------------------------------------------- file makers
def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and header claiming width x height, no pixel data: what a
    decompression bomb looks like to a decoder that checks the size first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_jpeg(path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def folder_recipe(tmp: Path, root: Path, **data_changes) -> Path:
    recipe = json.loads(json.dumps(TINY))
    recipe["data"] = {"source": {"name": "folder", "root": str(root)}, "image_size": 16, **data_changes}
    recipe["train"] = {"epochs": 1, "batch_size": 4}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def tiny_recipe_file(tmp: Path, text: str | None = None, **train) -> Path:
    path = tmp / "recipe.yaml"
    if text is None:
        recipe = json.loads(json.dumps(TINY))
        recipe["train"].update({"epochs": 1, **train})
        text = yaml.safe_dump(recipe)
    path.write_text(text)
    return path


def onnx_without_metadata(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by any onnxruntime clfkit supports
    onnx.save(model, path)


# --------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]]  # builds the files, returns CLI arguments
    words: list[str]  # all must appear in the message
    code: int = 2
    check: Callable[[Path], None] = field(default=lambda tmp: None)
    needs_model: bool = False


def _images(tmp: Path, extra: Callable[[Path], None] | None = None) -> Path:
    root = write_image_folder(tmp / "data", per_class=4, size=16)
    if extra:
        extra(root / "train" / "cat")
    return root


def _train(tmp: Path, root: Path, **data) -> list[str]:
    return ["train", str(folder_recipe(tmp, root, **data)), "--out", str(tmp / "runs"), "--quiet"]


def _predict_args(tmp: Path, model: Path, images: Path, out: Path | None = None) -> list[str]:
    return ["predict", str(model), str(images), "-o", str(out or tmp / "test.txt")]


def _no_run_folder(tmp: Path) -> None:
    assert not (tmp / "runs").exists() or not any((tmp / "runs").iterdir()), "a data error left a run folder"


def _skipped_listed(tmp: Path) -> None:
    run = tmp / "runs" / "tiny"
    lines = (run / "skipped.txt").read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("train/cat/") for line in lines)
    assert json.loads((run / "summary.json").read_text())["skipped_files"] == 3


def _three_bad(d: Path) -> None:
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    truncated_jpeg(d / "half.jpg")


CASES = [
    # ---- data
    Case(
        "data-root-missing",
        lambda t: _train(t, t / "nope"),
        ["data root", "nope", "does not exist"],
        check=_no_run_folder,
    ),
    Case(
        "data-root-empty",
        lambda t: _train(t, (t / "empty").mkdir() or t / "empty"),
        ["has no train/ folder", "empty"],
        check=_no_run_folder,
    ),
    Case(
        "class-folder-without-images",
        lambda t: _train(t, _images(t, lambda d: (d.parent / "bird").mkdir())),
        ["class folder", "bird", "holds no images"],
        check=_no_run_folder,
    ),
    Case(
        "train-val-class-mismatch",
        lambda t: _train(t, _mismatched_val(t)),
        ["train and val have different class folders", "dog", "bird"],
        check=_no_run_folder,
    ),
    Case(
        "zero-byte-image-fail",
        lambda t: _train(t, _images(t, lambda d: (d / "zero.png").write_bytes(b"")), on_error="fail"),
        ["train/cat/zero.png", "empty file", "data.on_error: skip"],
        check=_no_run_folder,
    ),
    Case(
        "truncated-jpeg-fail",
        lambda t: _train(t, _images(t, lambda d: truncated_jpeg(d / "half.jpg")), on_error="fail"),
        ["train/cat/half.jpg", "data.on_error: skip"],
    ),
    Case(
        "not-an-image-with-png-extension-fail",
        lambda t: _train(t, _images(t, lambda d: (d / "notes.png").write_text("hello")), on_error="fail"),
        ["train/cat/notes.png", "not a readable image"],
    ),
    Case(
        "decompression-bomb-fail",
        lambda t: _train(
            t, _images(t, lambda d: png_header_only(d / "bomb.png", 20000, 20000)), on_error="fail"
        ),
        ["train/cat/bomb.png", "decompression bomb"],
    ),
    Case(
        "corrupt-files-skip-are-counted-and-listed",
        lambda t: _train(t, _images(t, _three_bad), on_error="skip"),
        [],
        code=0,
        check=_skipped_listed,
    ),
    Case("all-training-images-unreadable", lambda t: _train(t, _all_bad(t)), ["no readable training images"]),
    # ---- recipes
    Case("recipe-missing", lambda t: ["train", str(t / "nope.yaml")], ["nope.yaml", "does not exist"]),
    Case(
        "yaml-syntax-error",
        lambda t: ["train", str(tiny_recipe_file(t, "name: x\nmodel: {name: cnn\ntrain: 1\n"))],
        ["YAML syntax error", "line 3, column"],
    ),
    Case(
        "yaml-tab-indent",
        lambda t: ["train", str(tiny_recipe_file(t, "name: x\nmodel:\n\tname: cnn\n"))],
        ["YAML syntax error", "line 3, column 1"],
    ),
    Case(
        "yaml-python-tag-refused",
        lambda t: [
            "train",
            str(tiny_recipe_file(t, "name: !!python/object/apply:os.system ['touch PWNED']\n")),
        ],
        ["YAML syntax error", "python/object/apply"],
        check=lambda t: _not_pwned(t),
    ),
    Case(
        "recipe-not-a-mapping",
        lambda t: ["train", str(tiny_recipe_file(t, "- a\n- b\n"))],
        ["a recipe is a YAML mapping", "list"],
    ),
    Case(
        "recipe-binary",
        lambda t: ["train", str(_write(t / "r.yaml", b"\xff\xfe\x00garbage"))],
        ["not a UTF-8"],
    ),
    Case(
        "wrong-type",
        lambda t: ["train", str(tiny_recipe_file(t)), "--set", "train.epochs=many"],
        ["train.epochs", "valid integer", "'many'"],
    ),
    Case(
        "out-of-range",
        lambda t: ["train", str(tiny_recipe_file(t)), "--set", "train.batch_size=0"],
        ["train.batch_size", "greater than or equal to 1", "0"],
    ),
    Case(
        "out-of-range-float",
        lambda t: ["train", str(tiny_recipe_file(t)), "--set", "data.val_fraction=1.5"],
        ["data.val_fraction", "less than or equal to 0.9"],
    ),
    Case(
        "bad-choice",
        lambda t: ["train", str(tiny_recipe_file(t)), "--set", "train.on_nonfinite=ignore"],
        ["train.on_nonfinite", "'stop' or 'skip'"],
    ),
    Case(
        "bad-set-syntax",
        lambda t: ["train", str(tiny_recipe_file(t)), "--set", "train.epochs"],
        ["--set", "expected dotted.path=value"],
    ),
    # ---- devices
    Case(
        "cuda-without-gpu",
        lambda t: ["train", str(tiny_recipe_file(t, device="cuda")), "--out", str(t / "r")],
        ["train.device", "cuda", "no CUDA GPU"],
        check=lambda t: None,
    ),
    Case(
        "bf16-without-gpu",
        lambda t: ["train", str(tiny_recipe_file(t, device="cpu", precision="bf16")), "--out", str(t / "r")],
        ["train.precision bf16", "CUDA GPU"],
    ),
    # ---- model files
    Case(
        "onnx-not-onnx",
        lambda t: _predict_args(t, _write(t / "m.onnx", os.urandom(300)), _images(t)),
        ["m.onnx", "not a loadable ONNX model"],
    ),
    Case(
        "onnx-without-clfkit-metadata",
        lambda t: _predict_args(
            t, (onnx_without_metadata(t / "plain.onnx"), t / "plain.onnx")[1], _images(t)
        ),
        ["plain.onnx", "lacks clfkit metadata", "clfkit export"],
    ),
    Case(
        "onnx-missing",
        lambda t: _predict_args(t, t / "none.onnx", _images(t)),
        ["none.onnx", "does not exist"],
    ),
    Case(
        "checkpoint-not-a-checkpoint",
        lambda t: ["export", str(_fake_run(t, os.urandom(100))), "-o", str(t / "m.onnx")],
        ["best.pt", "is not a clfkit checkpoint"],
    ),
    Case(
        "checkpoint-with-code-refused",
        lambda t: ["export", str(_fake_run(t, _pickle_bomb(t))), "-o", str(t / "m.onnx")],
        ["best.pt", "is not a clfkit checkpoint"],
        check=lambda t: _not_pwned(t),
    ),
    Case("export-run-missing", lambda t: ["export", str(t / "no-run")], ["run folder", "does not exist"]),
    Case(
        "resume-without-last",
        lambda t: ["train", "--resume", str((t / "r").mkdir() or t / "r")],
        ["cannot resume", "no last.pt"],
    ),
    Case(
        "resume-missing-folder",
        lambda t: ["train", "--resume", str(t / "gone")],
        ["cannot resume", "does not exist"],
    ),
    # ---- predict
    Case(
        "predict-empty-folder",
        lambda t: _predict_args(t, "MODEL", (t / "e").mkdir() or t / "e"),
        ["holds no images"],
        needs_model=True,
    ),
    Case(
        "predict-missing-folder",
        lambda t: _predict_args(t, "MODEL", t / "missing"),
        ["image folder", "does not exist"],
        needs_model=True,
    ),
    # ---- outputs
    Case(
        "train-unwritable-out",
        lambda t: ["train", str(tiny_recipe_file(t)), "--out", str(_blocker(t) / "runs")],
        ["cannot create run folder", "blocker"],
    ),
    Case(
        "predict-unwritable-output",
        lambda t: _predict_args(t, "MODEL", _images(t), _blocker(t) / "test.txt"),
        ["cannot write", "blocker"],
        needs_model=True,
    ),
    Case(
        "export-unwritable-output",
        lambda t: ["export", "RUN", "-o", str(_blocker(t) / "m.onnx")],
        ["cannot write", "blocker"],
        needs_model=True,
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _blocker(tmp: Path) -> Path:
    """A plain file where the output needs a folder: unwritable even for root."""
    p = tmp / "blocker"
    p.write_text("x")
    return p


def _mismatched_val(tmp: Path) -> Path:
    """train has cat and dog; val has cat and bird."""
    root = _images(tmp)
    for c in ("cat", "bird"):
        (root / "val" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "val" / c / "a.png")
    return root


def _all_bad(tmp: Path) -> Path:
    root = tmp / "allbad"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        (root / "train" / c / "x.png").write_bytes(b"")
    return root


def _fake_run(tmp: Path, ckpt: bytes) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(ckpt)
    return run


def _pickle_bomb(tmp: Path) -> bytes:
    """A torch file whose unpickling would create PWNED: weights_only must refuse it."""
    import io
    import torch

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp / "PWNED"), "w"))

    buf = io.BytesIO()
    torch.save({"format": "clfkit.checkpoint", "x": Evil()}, buf)
    return buf.getvalue()


def _not_pwned(tmp: Path) -> None:
    assert not (tmp / "PWNED").exists() and not Path("PWNED").exists()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    from clfkit.deploy.export import export_run

    out = tmp_path_factory.mktemp("exp") / "tiny.onnx"
    export_run(trained_run.run_dir, out)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, request, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the cwd by mistake stays in tmp
    args = case.args(tmp_path)
    if case.needs_model:
        args = [
            str(request.getfixturevalue("exported"))
            if a == "MODEL"
            else str(request.getfixturevalue("trained_run").run_dir)
            if a == "RUN"
            else a
            for a in args
        ]
    result = CliRunner().invoke(cli, args)
    out = result.output  # click mixes stderr in
    assert result.exit_code == case.code, out
    assert "Traceback" not in out
    if case.code:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert out.startswith("error: "), out
        assert len(out.splitlines()) <= 6, out  # short
    for w in case.words:
        assert w in out, f"{w!r} not in {out!r}"
    case.check(tmp_path)


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "train", str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    from clfkit.errors import RecipeError

    assert isinstance(result.exception, RecipeError)  # raised, so the traceback is printed


def test_disk_full_while_saving_checkpoint(tmp_path, monkeypatch):
    """ENOSPC when last.pt is written: a clear error, and no half-written checkpoint."""
    real = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".last.pt." in target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = CliRunner().invoke(
        cli, ["train", str(tiny_recipe_file(tmp_path)), "--out", str(tmp_path / "runs"), "--quiet"]
    )
    out = result.output
    assert result.exit_code == 2, out
    assert "last.pt" in out and "disk is full" in out and "Traceback" not in out
    run = tmp_path / "runs" / "tiny"
    assert not (run / "last.pt").exists() and not list(run.glob(".*.tmp"))
