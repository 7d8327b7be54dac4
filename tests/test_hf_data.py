"""data.source hf: Hugging Face datasets read offline through the `datasets` library (a
save_to_disk folder, parquet files, a cached name), columns found from the features, the
dataset's own splits; bad columns and rows named, never a download."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import invoke, refused, tiny_recipe_file
from PIL import Image

datasets = pytest.importorskip("datasets")


def _png(value: int, size: int = 8, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _rows(n: int, offset: int = 0, mode: str = "RGB") -> dict:
    # class 0 dark, class 1 bright: learnable in one epoch
    labels = [(i + offset) % 2 for i in range(n)]
    return {
        "picture": [
            {"bytes": _png(30 + 180 * y + i % 7, mode=mode), "path": None} for i, y in enumerate(labels)
        ],
        "kind": labels,
        "note": [f"row {i}" for i in range(n)],
    }


FEATURES = {
    "picture": datasets.Image(),
    "kind": datasets.ClassLabel(names=["night", "day"]),
    "note": datasets.Value("string"),
}


def _save_to_disk(root, **splits) -> str:
    feats = datasets.Features(FEATURES)
    dd = datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(rows, features=feats) for name, rows in splits.items()}
    )
    dd.save_to_disk(str(root))
    return str(root)


def _recipe(tmp_path, source: dict, **changes):
    return tiny_recipe_file(
        tmp_path,
        data__source=source,
        data__image_size=8,
        train__epochs=1,
        train__batch_size=8,
        model__blocks=[{"channels": 4, "pool": "max"}],
        **changes,
    )


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    """No test reads or writes the user's Hugging Face cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def test_save_to_disk_folder_trains_with_its_splits_and_class_names(tmp_path):
    path = _save_to_disk(tmp_path / "ds", train=_rows(32), validation=_rows(8, 1), test=_rows(6))
    code, out = invoke("train", _recipe(tmp_path, {"name": "hf", "path": path}), "--out", tmp_path / "runs")
    assert code == 0, out
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["class_names"] == ["night", "day"]  # the ClassLabel's names
    assert (summary["train_images"], summary["val_images"]) == (32, 8)  # the dataset's own validation split
    assert summary["test_acc"] is not None and summary["data"]["fingerprint"]


def test_parquet_folder_with_string_labels_and_named_columns(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for split, n in (("train", 24), ("test", 6)):
        rows = _rows(n)
        rows["kind"] = ["yes" if y else "no" for y in rows["kind"]]
        feats = datasets.Features(
            {"picture": datasets.Image(), "kind": datasets.Value("string"), "note": datasets.Value("string")}
        )
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(
            str(folder / f"{split}-00000-of-00001.parquet")
        )
    source = {"name": "hf", "path": str(folder), "image": "picture", "label": "kind"}
    code, out = invoke("train", _recipe(tmp_path, source), "--out", tmp_path / "runs")
    assert code == 0, out
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["class_names"] == ["no", "yes"] and summary["train_images"] + summary["val_images"] == 24


def test_grayscale_dataset_gets_one_channel(tmp_path):
    from clfkit.data.hf import load_hf

    path = _save_to_disk(tmp_path / "gray", train=_rows(8, mode="L"))
    splits = load_hf(path, image_size=(8, 8), channels=None, resize="squash", on_error="skip")
    assert tuple(splits.train.images.shape) == (8, 1, 8, 8) and splits.val is None and splits.test is None


@pytest.mark.parametrize(
    "source,words",
    [
        (
            {"image": "nope"},
            ["no image column 'nope'", "picture (Image)", "kind (ClassLabel)", "note (string)"],
        ),
        ({"label": "missing"}, ["no label column 'missing'", "picture (Image)"]),
        ({"image": "note"}, ["image column 'note' is string, not images"]),
        ({"label": "picture"}, ["label column 'picture' is Image"]),
        ({"val_split": "dev"}, ["no split 'dev'", "['test', 'train']"]),
    ],
)
def test_bad_columns_and_splits_are_named_with_what_exists(tmp_path, source, words):
    path = _save_to_disk(tmp_path / "ds", train=_rows(8), test=_rows(4))
    refused(
        words, "train", _recipe(tmp_path, {"name": "hf", "path": path, **source}), "--out", tmp_path / "runs"
    )
    assert not (tmp_path / "runs").exists()


def test_wrong_type_parquet_column_and_unknown_name_are_refused(tmp_path):
    pq = tmp_path / "floats.parquet"
    datasets.Dataset.from_dict({"image": [_png(1)] * 4, "label": [0.5, 1.5, 0.5, 1.5]}).to_parquet(str(pq))
    refused(
        ["label column 'label' is float64", "ClassLabel, integers or strings"],
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(pq)}),
        "--out",
        tmp_path / "runs",
    )
    # a name that is not in the local cache: offline, never downloaded, and the way to fetch it named
    out = refused(
        ["'someone/not-cached'", "does not download", "save_to_disk"],
        "train",
        _recipe(tmp_path, {"name": "hf", "path": "someone/not-cached"}),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    assert not (tmp_path / "hf_home" / "hub").exists() or not any((tmp_path / "hf_home" / "hub").iterdir()), (
        out
    )


def test_rows_without_label_are_counted_skips_and_foreign_labels_errors(tmp_path):
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = {
        "image": [{"bytes": _png(30 + 180 * (i % 2)), "path": None} for i in range(16)],
        "label": [None if i in (3, 5) else i % 2 for i in range(16)],
    }
    rows["image"][7] = {"bytes": b"not an image", "path": None}
    path = tmp_path / "ds"
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=feats)).save_to_disk(str(path))
    code, out = invoke(
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(path)}, data__val_fraction=0),
        "--out",
        tmp_path / "runs",
    )
    assert code == 0, out
    skipped = (tmp_path / "runs" / "tiny" / "skipped.txt").read_text()
    assert "train[3]" in skipped and "no label" in skipped and "train[7]" in skipped
    assert json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())["train_images"] == 13
    refused(
        ["train[7]: not a readable image"],
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(path)}, data__on_error="fail"),
        "--out",
        tmp_path / "r2",
    )
    rows["image"][7] = rows["image"][6]
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=feats)).save_to_disk(
        str(tmp_path / "d1")
    )
    refused(
        ["train[3] has no label"],
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(tmp_path / "d1")}, data__on_error="fail"),
        "--out",
        tmp_path / "r2",
    )

    val = {"image": [{"bytes": _png(9), "path": None}], "label": [7]}  # class 7: the train split has 0..1
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(rows, features=feats),
        validation=datasets.Dataset.from_dict(val, features=feats),
    ).save_to_disk(str(tmp_path / "d2"))
    refused(
        ["validation[0]: label 7", "not one of the 2 classes"],
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(tmp_path / "d2")}),
        "--out",
        tmp_path / "r3",
    )


def test_recipe_check_reads_classes_from_the_features(tmp_path):
    path = _save_to_disk(tmp_path / "ds", train=_rows(4))
    code, out = invoke("recipe", "check", _recipe(tmp_path, {"name": "hf", "path": path}))
    assert code == 0 and "2 classes" in out, out
    code, out = invoke("recipe", "check", _recipe(tmp_path, {"name": "hf", "path": path, "image": "img"}))
    assert code == 2 and "error: the dataset has no image column 'img'" in out, out


def test_blank_string_labels_are_counted_skips_not_a_class_named_empty(tmp_path):
    pq = tmp_path / "strings.parquet"
    labels = ["cat", "dog", "", "  ", None, "cat", "dog", "cat", "dog", "cat"]
    datasets.Dataset.from_dict(
        {"image": [_png(30 + 180 * (i % 2)) for i in range(10)], "label": labels}
    ).to_parquet(str(pq))
    code, out = invoke(
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(pq)}, data__val_fraction=0),
        "--out",
        tmp_path / "runs",
    )
    assert code == 0, out
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["train_images"] == 7 and summary["class_names"] == ["cat", "dog"]
    skipped = (tmp_path / "runs" / "tiny" / "skipped.txt").read_text()
    assert all(f"train[{i}]" in skipped for i in (2, 3, 4)), skipped
    code, out = invoke("data", "pack", pq, tmp_path / "shards")
    assert code == 0 and "3 row(s) without a label left out" in out, out
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["class_names"] == ["cat", "dog"]


def test_an_empty_parquet_split_is_named(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    ds = datasets.Dataset.from_dict({"image": [_png(30), _png(210)] * 4, "label": [0, 1] * 4})
    ds.to_parquet(str(folder / "train.parquet"))
    ds.select([]).to_parquet(str(folder / "test.parquet"))
    refused(
        ["empty split 'test'", "hold no rows"],
        "train",
        _recipe(tmp_path, {"name": "hf", "path": str(folder)}),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    refused(["empty split 'test'"], "data", "pack", folder, tmp_path / "shards", max_lines=None)
    assert not (tmp_path / "shards").exists()
