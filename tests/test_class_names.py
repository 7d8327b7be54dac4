"""Class names that print alike are one name or an error naming both spellings (issue 22,
class 3): Unicode NFC vs NFD ('café' typed on Linux, 'café' from a macOS folder) and
surrounding whitespace ('rose' and 'rose '). Case is kept: 'A' and 'a' stay two classes."""

from __future__ import annotations

import shutil
import unicodedata

import pytest
import yaml
from conftest import TINY, invoke, refused, write_image_folder

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def _folder_recipe(tmp_path, root, **source):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "data": {
                    "source": {"name": "folder", "root": str(root), **source},
                    "image_size": 8,
                    "val_fraction": 0.25,
                },
                "train": {"epochs": 1, "batch_size": 8},
            },
            allow_unicode=True,
        )
    )
    return path


@pytest.mark.parametrize(
    "a, b",
    [(NFC, NFD), ("rose", "rose "), ("rose", " rose"), ("tulip", "tulip\u00a0"), ("lily", "li\u200bly")],
)
def test_two_train_folders_that_print_alike_are_an_error_naming_both(tmp_path, a, b):
    root = write_image_folder(tmp_path / "d", classes=(a, b, "other"), per_class=2, size=8)
    out = refused(
        [ascii(a), ascii(b), "Unicode normalization", "whitespace"],
        "train",
        _folder_recipe(tmp_path, root),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    assert str(root / "train") in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_case_differences_stay_two_classes(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("A", "a"), per_class=4, size=8)
    code, out = invoke("train", _folder_recipe(tmp_path, root), "--out", tmp_path / "runs", "--quiet")
    assert code == 0, out


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_split_spelling_a_train_class_otherwise_names_both_spellings(tmp_path, split):
    root = write_image_folder(tmp_path / "d", classes=(NFC, "tea"), per_class=4, size=8)
    if split == "val":
        shutil.copytree(root / "train", root / "val")
    (root / split / NFC).rename(root / split / NFD)
    out = refused(
        [ascii(NFC), ascii(NFD), "spell the same class differently", split],
        "train",
        _folder_recipe(tmp_path, root),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    assert "lacks" not in out and "different class folders" not in out


def _csv(path, root, split, label_of):
    rows = [f"{p.relative_to(root)},{label_of(p.parent.name)}" for p in sorted((root / split).rglob("*.png"))]
    path.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")


def test_csv_labels_that_print_alike_are_an_error(tmp_path):
    """(The CSV reader trims whitespace around a label, so only Unicode forms can clash.)"""
    root = write_image_folder(tmp_path / "d", classes=(NFC, "tea"), per_class=4, size=8)
    recipe = tmp_path / "csv.yaml"
    source = {"name": "csv", "train": str(root / "train.csv"), "test": str(root / "test.csv")}
    recipe.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "data": {"source": source, "image_size": 8, "val_fraction": 0.25},
                "train": {"epochs": 1, "batch_size": 8},
            }
        )
    )
    _csv(root / "train.csv", root, "train", lambda name: name)
    _csv(root / "test.csv", root, "test", lambda name: unicodedata.normalize("NFD", name))
    refused(
        [ascii(NFC), ascii(NFD), "test CSV", "spell the same class differently"],
        "train",
        recipe,
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    text = (root / "train.csv").read_text(encoding="utf-8").splitlines()
    text[1] = text[1].replace(NFC, NFD)  # one row of the train CSV in the other form
    (root / "train.csv").write_text("\n".join(text) + "\n", encoding="utf-8")
    refused(
        [ascii(NFC), ascii(NFD), "train CSV", "Unicode normalization"],
        "train",
        recipe,
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )


def test_eval_on_data_spelled_otherwise_names_both_spellings(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=(NFC, "tea"), per_class=4, size=8)
    code, out = invoke("train", _folder_recipe(tmp_path, root), "--out", tmp_path / "runs", "--quiet")
    assert code == 0, out
    run = next((tmp_path / "runs").iterdir())
    other = tmp_path / "other"
    shutil.copytree(root, other)
    for split in ("train", "test"):
        (other / split / NFC).rename(other / split / NFD)
    refused(
        [ascii(NFC), ascii(NFD), "spell the same class differently"],
        "eval",
        run,
        "--data-root",
        other,
        max_lines=None,
    )
