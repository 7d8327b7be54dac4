"""clfkit data check and the train-time data check, through the CLI, on small planted folders."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import invoke, refused, train_folder_run


def smooth_image(rng, size: int = 32) -> np.ndarray:
    """A picture with structure at low frequencies (blobs on a gradient): what perceptual
    hashes are made for, unlike pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        img[..., c] = rng.uniform(0, 120) * (xx if rng.random() < 0.5 else yy)
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.3)]
            img[..., c] += rng.uniform(60, 130) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, per_class: int = 8, test_per_class: int = 3, seed: int = 0) -> Path:
    """root/{train,test}/{cat,dog}/*.png of distinct smooth pictures (cats without blue, dogs
    without red: a tiny CNN tells them apart in a few epochs)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = smooth_image(rng)
                img[..., 2 if k == 0 else 0] = 0
                Image.fromarray(img).save(root / split / c / f"{c}{i}.png")
    return root


def listing(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in sorted(root.rglob("*"))}


def check(*args) -> tuple[int, str, dict]:
    out = Path(args[args.index("--out") + 1])
    code, text = invoke("data", "check", *args)
    result = json.loads((out / "data_check.json").read_text()) if code == 0 else {}
    return code, text, result


def files_of(result: dict, kind: str) -> list[list[str]]:
    return [[f["path"] for f in x["files"]] for x in result["findings"] if x["kind"] == kind]


def test_exact_findings_fix_split_and_the_data_untouched(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.open(root / "train/cat/cat0.png").save(root / "test/cat/copy of cat0.bmp")  # leak, other format
    shutil.copy(root / "train/cat/cat1.png", root / "train/dog/also_cat1.png")  # conflict
    shutil.copy(root / "train/dog/dog2.png", root / "train/dog/dog2 again.png")  # duplicate in train
    before = listing(root)
    code, text, result = check(root, "--out", tmp_path / "out", "--fix-split")
    assert code == 0, text
    assert listing(root) == before  # nothing in the data folder written, moved or touched
    assert files_of(result, "leak") == [["train/cat/cat0.png", "test/cat/copy of cat0.bmp"]]
    assert files_of(result, "conflict") == [["train/cat/cat1.png", "train/dog/also_cat1.png"]]
    assert files_of(result, "exact_duplicate") == [["train/dog/dog2 again.png", "train/dog/dog2.png"]]
    assert result["counts"]["near_duplicate"] == 0  # the exact copy is not counted again
    assert "leak" in text and "conflict" in text and "wrote" in text
    rows = list(csv.DictReader(open(tmp_path / "out/leaked_files.csv")))
    assert [(r["split"], r["path"], r["copy_of"]) for r in rows] == [
        ("test", "test/cat/copy of cat0.bmp", "train/cat/cat0.png")
    ]
    page = (tmp_path / "out/data_check.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 6 and "copy of cat0.bmp" in page


def test_near_duplicates_across_splits_not_within_or_unrelated(tmp_path):
    root = make_folder(tmp_path / "d")
    src = Image.open(root / "train/dog/dog0.png")
    src.save(root / "test/dog/reencoded.jpg", quality=70)
    src.resize((29, 29), Image.BILINEAR).save(root / "test/dog/resized.png")
    src.crop((2, 2, 32, 32)).save(root / "test/dog/cropped.png")
    code, text, result = check(root, "--out", tmp_path / "out")
    assert code == 0, text
    pairs = sorted(files_of(result, "near_duplicate"))
    assert pairs == [
        ["train/dog/dog0.png", f"test/dog/{n}"] for n in ("cropped.png", "reencoded.jpg", "resized.png")
    ]
    code, _, strict = check(root, "--out", tmp_path / "out2", "--phash-distance", "0")
    assert code == 0 and len(files_of(strict, "near_duplicate")) < 3  # the threshold is the one given


def test_quality_issues_sizes_modes_and_skipped_files(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.new("RGB", (32, 32), (2, 2, 2)).save(root / "train/cat/black.png")
    Image.new("L", (32, 32), 253).save(root / "train/dog/white.png")
    Image.fromarray(smooth_image(np.random.default_rng(5), 48)[:8]).save(root / "train/dog/strip.png")
    (root / "train/dog/broken.png").write_bytes(b"not an image")
    code, text, result = check(root, "--out", tmp_path / "out")
    assert code == 0, text
    flagged = {
        k: {p for ps in files_of(result, k) for p in ps}
        for k in ("dark", "light", "low_information", "odd_aspect_ratio")
    }
    assert "train/cat/black.png" in flagged["dark"] and "train/cat/black.png" in flagged["low_information"]
    assert "train/dog/white.png" in flagged["light"]
    assert flagged["odd_aspect_ratio"] == {"train/dog/strip.png"}
    ov = result["overview"]
    assert ov["modes"] == {"RGB": 24, "L": 1} and ov["sizes"]["32x32"] == 24 and ov["distinct_sizes"] == 2
    # decoded images: broken.png is listed as skipped, not counted as a dog
    assert ov["class_counts"]["train"] == {"cat": 9, "dog": 10} and ov["class_counts"]["test"] == {
        "cat": 3,
        "dog": 3,
    }
    assert [s[0] for s in ov["skipped"]] == ["train/dog/broken.png"]
    assert "skipped: train/dog/broken.png" in text


def tiny_folder_recipe(folder: Path, root: Path, epochs: int = 3) -> Path:
    path = folder / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "dc",
                "seed": 0,
                "data": {
                    "source": {"name": "folder", "root": str(root)},
                    "image_size": 16,
                    "val_fraction": 0.2,
                },
                "model": {"name": "cnn", "blocks": [{"channels": 8, "pool": "max"}]},
                "optim": {"name": "adam", "lr": 0.01},
                "train": {"epochs": epochs, "batch_size": 16},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory):
    """(data root, a run trained on it): two dog pictures filed as cats in train, one in test."""
    base = tmp_path_factory.mktemp("mislabelled")
    root = make_folder(base / "d", per_class=12, test_per_class=5)
    for i in range(2):
        shutil.move(root / f"train/dog/dog{i}.png", root / f"train/cat/wrong{i}.png")
    shutil.move(root / "test/dog/dog0.png", root / "test/cat/wrong_test.png")
    recipe = tiny_folder_recipe(base, root, epochs=6)
    code, text = invoke("train", recipe, "--out", base / "runs", "--quiet")
    assert code == 0, text
    return root, base / "runs/dc", recipe


def test_label_issues_in_train_from_folds(mislabelled, tmp_path):
    root, _, recipe = mislabelled
    code, text, result = check(recipe, "--out", tmp_path / "out", "--folds", "2")
    assert code == 0, text
    suspects = [f[0] for f in files_of(result, "label_issue")]
    assert {"train/cat/wrong0.png", "train/cat/wrong1.png"} <= set(suspects[:4]), suspects
    issue = next(x for x in result["findings"] if x["kind"] == "label_issue")
    assert issue["given"] == "cat" and issue["suggested"] == "dog" and "2-fold" in issue["source"]


def test_label_issues_in_test_from_a_run(mislabelled, tmp_path):
    root, run, _ = mislabelled
    code, text, result = check(root, "--out", tmp_path / "out", "--run", run)
    assert code == 0, text
    suspects = [f[0] for f in files_of(result, "label_issue")]
    assert suspects and suspects[0] == "test/cat/wrong_test.png", suspects
    assert all(s.startswith("test/") for s in suspects)  # train is in-sample for the run: not judged
    assert result["settings"]["run"] == str(run)


def test_feature_neighbours_from_a_run(mislabelled, tmp_path):
    root, run, _ = mislabelled
    data = tmp_path / "d"
    shutil.copytree(root, data)
    src = np.asarray(Image.open(data / "train/dog/dog3.png")).astype(int)
    Image.fromarray(np.clip(src + 6, 0, 255).astype(np.uint8)).save(data / "test/dog/brighter.png")
    from clfkit.audit.check import check_data

    with_hash = check_data(data, run=run, feature_similarity=0.95)
    kinds = {
        f.kind
        for f in with_hash.findings
        if [with_hash.catalog.path[r] for r in f.rows] == ["train/dog/dog3.png", "test/dog/brighter.png"]
    }
    assert kinds == {"near_duplicate"}  # found by its hash: not reported twice
    result = check_data(data, run=run, phash_distance=-1, feature_similarity=0.95)  # hashes off
    pairs = {
        tuple(result.catalog.path[r] for r in f.rows): f.score
        for f in result.findings
        if f.kind == "feature_neighbour"
    }
    assert pairs.get(("train/dog/dog3.png", "test/dog/brighter.png"), 0) >= 0.95, pairs


def test_a_run_on_other_classes_and_other_bad_input_are_refused(mislabelled, tmp_path):
    root, run, _ = mislabelled
    other = make_folder(tmp_path / "other")
    (other / "train/dog").rename(other / "train/bird")
    (other / "test/dog").rename(other / "test/bird")
    out = ["--out", tmp_path / "out"]
    refused(["trained on classes", "bird"], "data", "check", other, "--run", run, *out, max_lines=None)
    refused(["--folds", "RECIPE"], "data", "check", root, "--folds", "2", *out)
    refused(["--folds 1"], "data", "check", root, "--folds", "1", *out)
    refused(["inside the data folder"], "data", "check", root, "--out", root / "report")
    refused(["does not exist"], "data", "check", tmp_path / "nowhere", *out)
    one = tmp_path / "one"
    (one / "train/cat").mkdir(parents=True)
    shutil.copy(root / "train/cat/cat0.png", one / "train/cat")
    refused(["at least two class folders"], "data", "check", one, *out)
    recipe = tmp_path / "shapes.yaml"
    recipe.write_text(
        yaml.safe_dump({"name": "s", "data": {"source": {"name": "shapes"}}, "model": {"name": "cnn"}})
    )
    refused(["reads image folders"], "data", "check", recipe, *out)
    shards = {"name": "webdataset", "train": str(tmp_path / "train-000000.tar"), "classes": ["a", "b"]}
    recipe.write_text(yaml.safe_dump({"name": "s", "data": {"source": shards}, "model": {"name": "cnn"}}))
    refused(["reads image folders", "packed from"], "data", "check", recipe, *out, max_lines=None)
    empty = make_folder(tmp_path / "e")
    shutil.rmtree(empty / "test/dog")
    (empty / "test/dog").mkdir()
    refused(["holds no images"], "data", "check", empty, *out)
    assert not (tmp_path / "out").exists()  # nothing written by a refused check


def test_a_split_of_unreadable_files_is_listed_not_checked(tmp_path):
    root = make_folder(tmp_path / "d")
    for p in (root / "test").rglob("*.png"):
        p.write_bytes(b"\x89PNG broken")
    code, text, result = check(root, "--out", tmp_path / "out")
    assert code == 0, text
    assert any("test: none of its 6 file(s) could be decoded" in n for n in result["notes"])
    assert len(result["overview"]["skipped"]) == 6
    shutil.rmtree(root / "test")
    (root / "test").mkdir()  # an empty test folder: said, not skipped silently
    code, text, result = check(root, "--out", tmp_path / "out")
    assert code == 0 and "note: test/ holds no images; not checked" in text


def test_records_are_cached_by_content_and_never_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "d")
    _, _, first = check(root, "--out", tmp_path / "o1")
    assert first["settings"]["decoded"] == 22 and first["settings"]["from_cache"] == 0
    _, _, second = check(root, "--out", tmp_path / "o2")
    assert second["settings"]["decoded"] == 0 and second["settings"]["from_cache"] == 22
    shutil.copy(root / "train/cat/cat0.png", root / "test/cat/cat0.png")  # same size, new content
    code, _, third = check(root, "--out", tmp_path / "o3")
    assert code == 0 and third["settings"]["decoded"] == 0  # the bytes are known: no decode
    assert files_of(third, "leak") == [["train/cat/cat0.png", "test/cat/cat0.png"]]
    os.utime(root / "train/cat/cat1.png", (0, 0))
    Image.new("RGB", (32, 32), (1, 1, 1)).save(root / "train/cat/cat1.png")
    _, _, fourth = check(root, "--out", tmp_path / "o4")
    assert fourth["settings"]["decoded"] == 1
    assert "train/cat/cat1.png" in {p for ps in files_of(fourth, "dark") for p in ps}


def test_train_warns_once_per_kind_and_records_the_check(tmp_path):
    root = make_folder(tmp_path / "d")
    shutil.copy(root / "train/cat/cat0.png", root / "test/cat/leaked.png")
    shutil.copy(root / "train/cat/cat1.png", root / "train/dog/cat1.png")
    from clfkit.data.audit.quick import DataCheckWarning

    with pytest.warns(DataCheckWarning) as caught:
        code, text = invoke("train", tiny_folder_recipe(tmp_path, root, epochs=1), "--out", tmp_path / "runs")
    assert code == 0, text
    assert "data check: 24 images" in text and "1 conflict(s)" in text
    lines = [str(w.message) for w in caught if w.category is DataCheckWarning]
    assert len(lines) == 2, lines  # one per kind: the leak, the conflict
    leak = next(line for line in lines if "leak group(s)" in line)
    assert "cat0.png in " in leak and "leaked.png in test" in leak
    conflict = next(line for line in lines if "conflict group(s)" in line)
    assert "as 'cat'" in conflict and "as 'dog'" in conflict
    summary = json.loads((tmp_path / "runs/dc/summary.json").read_text())
    assert summary["data_check"]["conflict"] == 1 and summary["data_check"]["leak"] >= 1


def test_a_data_root_that_is_a_file_is_refused_naming_both_readings(tmp_path):
    for name, content in (("photo.png", b"\x89PNG\r\n\x1a\n\x00\xff"), ("notes.txt", b"just text")):
        (tmp_path / name).write_bytes(content)
        refused(
            ["is a file", "neither a data folder", "nor a recipe"],
            "data",
            "check",
            tmp_path / name,
            "--out",
            tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_run_notes_unfinished_run_and_its_training_images_in_test(tmp_path):
    run, root = train_folder_run(tmp_path, "r", per_class=4, val_fraction=0)
    other = tmp_path / "other"  # the same classes; its test holds two of the run's training files
    shutil.copytree(root / "train", other / "train")
    (other / "test/cat").mkdir(parents=True)
    (other / "test/dog").mkdir(parents=True)
    shutil.copy(root / "test/cat/cat_0.png", other / "test/cat")
    shutil.copy(root / "train/cat/cat_1.png", other / "test/cat/seen.png")
    shutil.copy(root / "train/dog/dog_2.png", other / "test/dog/also seen.png")
    shutil.copy(root / "test/dog/dog_1.png", other / "test/dog")
    code, text, result = check(other, "--run", run, "--out", tmp_path / "o1")
    assert code == 0, text
    assert any("test: 2 image(s) are files the run had under train/" in n for n in result["notes"]), result[
        "notes"
    ]
    labelled = {f["path"] for x in result["findings"] if x["kind"] == "label_issue" for f in x["files"]}
    assert not labelled & {"test/cat/seen.png", "test/dog/also seen.png"}
    (run / "summary.json").unlink()  # as a stopped run leaves it
    code, text, result = check(root, "--run", run, "--out", tmp_path / "o2")
    assert code == 0 and "the run is not finished" in text and "latest checkpoint was used" in text, text
    assert not any("files the run had under train/" in n for n in result["notes"])


def test_batched_records_equal_pil_for_every_small_size(tmp_path):
    """Small images' pHash resize and blur edges are computed in batches (numpy), larger ones
    through PIL: both give PIL's numbers, so the size of an image never changes its findings."""
    from PIL import ImageFilter

    from clfkit.data.audit import records

    rng = np.random.default_rng(3)
    paths = []
    for h, w in [(1, 1), (2, 7), (3, 3), (9, 31), (32, 32), (31, 17), (33, 20), (70, 12)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // (1 + 63 * (h % 2))
        paths.append(tmp_path / f"{h}x{w}.png")
        Image.fromarray(arr).save(paths[-1])
    for path, (record, why) in zip(paths, records.compute([str(p) for p in paths], workers=1)):
        assert why is None, why
        gray = Image.open(path).convert("L")
        assert record[2] == records.perceptual_hash(gray), path.name  # PIL's Lanczos resize
        small = np.asarray(gray if max(gray.size) <= 64 else gray.resize(records._fit(gray.size, 64)))
        edges = np.asarray(
            (gray if max(gray.size) <= 64 else Image.fromarray(small)).filter(ImageFilter.FIND_EDGES)
        )
        assert (records.find_edges(small) == edges).all(), path.name


def test_a_class_of_unreadable_files_counts_zero_and_is_said(tmp_path):
    root = make_folder(tmp_path / "d")
    for p in (root / "train/dog").iterdir():
        p.write_bytes(b"")  # every dog of train: zero-byte files
    code, text, result = check(root, "--out", tmp_path / "out")
    assert code == 0, text
    assert result["overview"]["class_counts"]["train"] == {"cat": 8, "dog": 0}
    assert result["overview"]["images"] == {"train": 8, "test": 6}
    assert "train/dog: none of its 8 file(s) could be decoded" in text and "dog has no images" in text
    assert len(result["overview"]["skipped"]) == 8


def test_a_warning_example_shows_the_other_split_however_many_copies_train_holds():
    """A leak whose group has many train copies still names the test file in its example."""
    from clfkit.data.audit.findings import Finding
    from clfkit.data.audit.quick import warning_lines

    names = ["train"] * 5 + ["test"]
    paths = [f"a/{i}.png" for i in range(5)] + ["a/t.png"]
    leak = Finding("leak", list(range(6)), 1.0, "")
    (line,) = warning_lines([leak], names, paths, np.zeros(6, dtype=int), ["a", "b"])
    assert "a/0.png in train = a/t.png in test = a/1.png in train = ..." in line
