"""The decoded-data cache: a folder is decoded once; a changed file or setting decodes again."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from clfkit.data import image_files
from clfkit.train.build import build_data

from conftest import tiny_recipe, write_image_folder


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(d))
    return d


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = image_files.decode_image

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(image_files, "decode_image", counting)
    return calls


def folder_recipe(root, **changes):
    changes = {"data__image_size": 12, **changes}
    return tiny_recipe(data__source={"name": "folder", "root": str(root)}, **changes)


def test_second_load_does_not_decode_and_is_identical(tmp_path, cache_on, count_decodes):
    root = write_image_folder(tmp_path / "d")
    first = build_data(folder_recipe(root))
    n_files = len(count_decodes)
    assert n_files == 16  # 12 train + 4 test
    second = build_data(folder_recipe(root))
    assert len(count_decodes) == n_files, "a cache hit must not decode"
    assert "from cache" in second.description
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.paths == b.paths
    assert second.class_names == first.class_names


def test_entry_has_no_pickle_and_a_json_index(tmp_path, cache_on):
    root = write_image_folder(tmp_path / "d")
    build_data(folder_recipe(root))
    (entry,) = [p for p in cache_on.iterdir()]
    index = json.loads((entry / "index.json").read_text())
    assert index["class_names"] == ["cat", "dog"] and index["settings"]["image_size"] == [12, 12]
    for f in entry.glob("*.npy"):
        np.load(f, allow_pickle=False)  # raises if anything in it needs pickle
    assert not [p for p in cache_on.iterdir() if p.name.startswith(".")], "no temp folder left behind"


def test_changed_file_or_setting_decodes_again(tmp_path, cache_on, count_decodes):
    root = write_image_folder(tmp_path / "d")
    build_data(folder_recipe(root))
    n = len(count_decodes)
    img = root / "train" / "cat" / "cat_0.png"
    Image.fromarray(np.full((20, 23, 3), 255, np.uint8)).save(img)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))  # coarse-mtime filesystems
    changed = build_data(folder_recipe(root, data__val_fraction=0.0))
    assert len(count_decodes) == 2 * n
    assert int(changed.train.images[changed.train.paths.index("cat/cat_0.png")].min()) == 255
    assert len(list(cache_on.iterdir())) == 1, "the outdated entry is pruned"
    build_data(folder_recipe(root, data__image_size=10))  # another size: another entry
    assert len(count_decodes) == 3 * n
    (root / "train" / "dog" / "dog_0.png").unlink()  # a removed file invalidates too
    s = build_data(folder_recipe(root, data__val_fraction=0.0))
    assert len(s.train) == 11


def test_unreadable_entry_is_replaced_and_off_switch(tmp_path, cache_on, count_decodes, monkeypatch):
    root = write_image_folder(tmp_path / "d")
    build_data(folder_recipe(root))
    (entry,) = list(cache_on.iterdir())
    (entry / "train.images.npy").write_bytes(b"garbage")
    s = build_data(folder_recipe(root))
    assert len(s.train) + len(s.val) == 12 and len(count_decodes) == 32
    assert np.load(entry / "train.images.npy", allow_pickle=False).shape[0] == 12
    monkeypatch.setenv("CLFKIT_CACHE", "0")
    build_data(folder_recipe(root))
    assert len(count_decodes) == 48


def test_procedural_data_is_not_cached(cache_on):
    build_data(tiny_recipe())
    assert not cache_on.exists() or not list(cache_on.iterdir())


def test_unwritable_cache_still_trains(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(blocker / "sub"))  # a path under a file: cannot exist
    s = build_data(folder_recipe(root))
    assert len(s.train) > 0
