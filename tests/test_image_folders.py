"""Issue 11, data rows: the decoded-image cache never serves stale or damaged pixels (2, 19),
file names of any bytes train (6), EXIF orientation is applied where pixels are decoded (13),
an unwritable cache is one warning (17), bad split and class folders are clear errors, links
never make a fake class and never loop (19, 21). Each case runs the real CLI (click's
CliRunner, in-process) on files made in a tmp folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY, tiny_recipe
from PIL import Image

from clfkit.cli import cli
from clfkit.data import cache, image_files
from clfkit.train.build import build_data

SIZE = 8  # the recipe's image size: small, training is not what these tests look at


# --------------------------------------------------------------------------- helpers
def bmp(path: Path, value: int, seed: int = 0) -> Path:
    """A 12x12 RGB BMP: every such file has the same byte size, so an edit can keep it."""
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(value, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "BMP")
    return path


def bmp_folder(root: Path, classes=("cat", "dog"), per_class: int = 4) -> Path:
    for k, c in enumerate(classes):
        for i in range(per_class):
            bmp(root / "train" / c / f"{c}_{i}.bmp", 40 + 170 * k, seed=10 * k + i)
    return root


def rewrite_keeping_stat(path: Path, write) -> None:
    """Change a file's bytes but not its size or mtime: what size+mtime fingerprints miss."""
    st = os.stat(path)
    write(path)
    assert os.stat(path).st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=True)


def recipe_file(tmp: Path, root: Path, **data) -> Path:
    recipe = json.loads(json.dumps(TINY))
    recipe["data"] = {"source": {"name": "folder", "root": str(root)}, "image_size": SIZE, **data}
    recipe["train"] = {"epochs": 1, "batch_size": 4}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train(tmp: Path, root: Path, tag: str, **data):
    """``clfkit train`` on ``root``; (click result, run folder)."""
    out = tmp / f"runs-{tag}"
    result = CliRunner().invoke(
        cli, ["train", str(recipe_file(tmp, root, **data)), "--out", str(out), "--quiet"]
    )
    return result, out / "tiny"


def trained(tmp: Path, root: Path, tag: str, **data) -> tuple[dict, str]:
    result, run = train(tmp, root, tag, **data)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return json.loads((run / "summary.json").read_text()), result.output


def refused(tmp: Path, root: Path, *words: str) -> str:
    result, run = train(tmp, root, "refused")
    out = result.output
    assert result.exit_code == 2, out
    assert out.startswith("error: ") and "Traceback" not in out and len(out.splitlines()) <= 6, out
    for w in words:
        assert w in out, f"{w!r} not in {out!r}"
    assert not run.parent.exists(), "a data error left a run folder"
    return out


def pixels_of(summary: dict) -> tuple:
    """What a run's numbers say about the pixels it saw: mean/std of every training pixel,
    and the losses on the training and validation images."""
    row = json.loads((Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    return summary["normalize"]["mean"], summary["normalize"]["std"], row["train_loss"], row["val_loss"]


@pytest.fixture
def cache_on(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple:
    """pixels_of a cache-off run on bmp_folder's data (seeded: the same pixels in every tmp dir)."""
    tmp = tmp_path_factory.mktemp("reference")
    assert os.environ["CLFKIT_CACHE"] == "0"
    summary, _ = trained(tmp, bmp_folder(tmp / "data"), "ref")
    return pixels_of(summary)


def fresh_equals_cached(root: Path, monkeypatch) -> None:
    """What the cache serves equals a decode with the cache off: images, labels, names."""
    recipe = tiny_recipe(
        data__source={"name": "folder", "root": str(root)}, data__image_size=SIZE, data__val_fraction=0.0
    )
    served = build_data(recipe)
    with monkeypatch.context() as m:
        m.setenv("CLFKIT_CACHE", "0")
        fresh = build_data(recipe)
    assert served.class_names == fresh.class_names and served.skipped == fresh.skipped
    for a, b in ((served.train, fresh.train), (served.test, fresh.test)):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert a.paths == b.paths and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)


# --------------------------------------------------------------------------- row 2: stale pixels
def test_edit_keeping_size_and_mtime_is_noticed_through_the_cli(tmp_path, cache_on, monkeypatch, reference):
    root = bmp_folder(tmp_path / "data")
    before, _ = trained(tmp_path, root, "1")
    assert list(cache_on.iterdir()), "the first run fills the cache"
    assert pixels_of(before) == reference
    rewrite_keeping_stat(root / "train/cat/cat_0.bmp", lambda p: bmp(p, 255, seed=99))
    after, _ = trained(tmp_path, root, "2")
    monkeypatch.setenv("CLFKIT_CACHE", "0")
    uncached, _ = trained(tmp_path, root, "3")
    assert pixels_of(after) == pixels_of(uncached) != pixels_of(before)
    assert len(list(cache_on.iterdir())) == 1, "the outdated entry is deleted"


def _swap_two_files(root: Path, outside: Path) -> None:
    a, b = root / "train/cat/cat_0.bmp", root / "train/dog/dog_0.bmp"
    st_a, st_b = os.stat(a), os.stat(b)
    tmp = a.with_name("swap.tmp")
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    os.utime(a, ns=(st_a.st_atime_ns, st_a.st_mtime_ns))
    os.utime(b, ns=(st_b.st_atime_ns, st_b.st_mtime_ns))


def _edit_under_linked_class(root: Path, outside: Path) -> None:
    rewrite_keeping_stat(outside / "dog/dog_1.bmp", lambda p: bmp(p, 0, seed=5))


def _repoint_file_link(root: Path, outside: Path) -> None:
    link = root / "train/cat/linked.bmp"
    os.unlink(link)
    os.symlink(outside / "other.bmp", link)


def _repoint_class_link(root: Path, outside: Path) -> None:
    os.unlink(root / "train/dog")
    os.symlink(outside / "dog2", root / "train/dog")


def _edit_in_linked_subfolder(root: Path, outside: Path) -> None:
    rewrite_keeping_stat(outside / "nested/n.bmp", lambda p: bmp(p, 250, seed=8))


@pytest.mark.parametrize(
    "change",
    [
        _swap_two_files,
        _edit_under_linked_class,
        _repoint_file_link,
        _repoint_class_link,
        _edit_in_linked_subfolder,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_no_change_serves_stale_pixels(change, tmp_path, cache_on, monkeypatch):
    """Files reached through links (a linked class folder, a linked file, a linked subfolder)
    are part of the fingerprint by content; a swap keeping both stats is noticed."""
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    bmp_folder(root, classes=("cat",))
    for i in range(3):
        bmp(outside / "dog" / f"dog_{i}.bmp", 200, seed=i)
        bmp(outside / "dog2" / f"dog_{i}.bmp", 220, seed=50 + i)  # same names and sizes
    os.symlink(outside / "dog", root / "train/dog")
    bmp(outside / "one.bmp", 90, seed=1)
    bmp(outside / "other.bmp", 160, seed=2)
    os.symlink(outside / "one.bmp", root / "train/cat/linked.bmp")
    bmp(outside / "nested/n.bmp", 10, seed=3)
    os.symlink(outside / "nested", root / "train/cat/sub")
    fresh_equals_cached(root, monkeypatch)  # fills the cache
    change(root, outside)
    fresh_equals_cached(root, monkeypatch)


# --------------------------------------------------------------------------- rows 2 and 19: damaged entries
def _entry(cache_dir: Path) -> Path:
    (entry,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    return entry


def _resave(entry: Path, name: str, arr: np.ndarray, fix_hash: bool) -> None:
    np.save(entry / name, arr, allow_pickle=False)
    if fix_hash:  # a consistent-looking entry: only the checks of the values can catch it
        index = json.loads((entry / "index.json").read_text())
        index["hashes"][name] = cache._array_hash(arr)
        (entry / "index.json").write_text(json.dumps(index))


def _labels_out_of_range(entry: Path, fix_hash: bool) -> None:
    labels = np.load(entry / "train.labels.npy")
    labels[0] = 7
    _resave(entry, "train.labels.npy", labels, fix_hash)


def _labels_wrong_dtype(entry: Path, fix_hash: bool) -> None:
    _resave(entry, "train.labels.npy", np.load(entry / "train.labels.npy").astype(np.int32), fix_hash)


def _labels_wrong_count(entry: Path, fix_hash: bool) -> None:
    _resave(entry, "train.labels.npy", np.load(entry / "train.labels.npy")[:-1], fix_hash)


def _images_wrong_shape(entry: Path, fix_hash: bool) -> None:
    _resave(entry, "train.images.npy", np.load(entry / "train.images.npy")[:, :, :4], fix_hash)


def _pixels_edited(entry: Path, fix_hash: bool) -> None:
    images = np.load(entry / "train.images.npy")
    images[0] = 255 - images[0]
    _resave(entry, "train.images.npy", images, fix_hash=False)


def _truncated_npy(entry: Path, fix_hash: bool) -> None:
    data = (entry / "train.images.npy").read_bytes()
    (entry / "train.images.npy").write_bytes(data[: len(data) // 2])


def _garbage_index(entry: Path, fix_hash: bool) -> None:
    (entry / "index.json").write_text('{"format": 3, "class_names": 5')


def _class_names_not_a_list(entry: Path, fix_hash: bool) -> None:
    index = json.loads((entry / "index.json").read_text())
    index["class_names"] = "cat,dog"
    (entry / "index.json").write_text(json.dumps(index))


DAMAGE = [
    (_labels_out_of_range, False, "contents changed"),
    (_labels_out_of_range, True, "outside 0..1"),
    (_labels_wrong_dtype, True, "int32"),
    (_labels_wrong_count, True, "labels are int64"),
    (_images_wrong_shape, True, "expected uint8"),
    (_pixels_edited, False, "contents changed"),
    (_truncated_npy, False, "train.images.npy"),
    (_garbage_index, False, "index.json"),
    (_class_names_not_a_list, False, "class names"),
]


@pytest.mark.parametrize(
    "damage,fix_hash,words",
    DAMAGE,
    ids=[f"{d.__name__.strip('_')}{'-rehashed' if f else ''}" for d, f, _ in DAMAGE],
)
def test_damaged_entry_is_a_warned_miss_and_rebuilt(
    damage, fix_hash, words, tmp_path, cache_on, monkeypatch, capsys
):
    """Two cases run ``clfkit train``; the others call build_data, the function train calls."""
    root = bmp_folder(tmp_path / "data")
    fresh_equals_cached(root, monkeypatch)  # fills the cache
    entry = _entry(cache_on)
    damage(entry, fix_hash)
    capsys.readouterr()
    if (damage, fix_hash) in ((_labels_out_of_range, True), (_truncated_npy, False)):
        _, output = trained(tmp_path, root, "1")
    else:
        fresh_equals_cached(root, monkeypatch)
        output = capsys.readouterr().err
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cache entry" in warnings[0] and "damaged" in warnings[0], output
    assert words in warnings[0], warnings
    capsys.readouterr()
    fresh_equals_cached(root, monkeypatch)  # rebuilt: a clean hit, the right pixels
    assert "warning" not in capsys.readouterr().err and _entry(cache_on) == entry


# --------------------------------------------------------------------------- row 17: unwritable cache
def _cache_under_a_file(tmp: Path, monkeypatch) -> str:
    (tmp / "blocker").write_text("x")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp / "blocker" / "cache"))
    return "blocker is a file, not a folder (CLFKIT_CACHE_DIR must name a folder)"


def _cache_is_a_file(tmp: Path, monkeypatch) -> str:
    (tmp / "blocker").write_text("x")  # mkdir says "File exists" here: no help
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp / "blocker"))
    return "blocker is a file, not a folder (CLFKIT_CACHE_DIR must name a folder)"


def _disk_full(tmp: Path, monkeypatch) -> str:
    def full(folder, name, arr, hashes):
        (folder / name).write_bytes(b"\x93NUMPY")  # a part written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / name))

    monkeypatch.setattr(cache, "_save_array", full)
    return "No space left on device"


def _read_only(tmp: Path, monkeypatch) -> str:
    real_mkdtemp = tempfile.mkdtemp
    cache_dir = os.environ["CLFKIT_CACHE_DIR"]

    def mkdtemp(*a, **k):  # what a read-only folder answers (a chmod does not stop root)
        if str(k.get("dir", "")).startswith(cache_dir):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), k.get("dir"))
        return real_mkdtemp(*a, **k)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)  # wherever clfkit makes its temp folders
    return "Permission denied"


@pytest.mark.parametrize(
    "make_unwritable",
    [_cache_under_a_file, _cache_is_a_file, _disk_full, _read_only],
    ids=lambda f: f.__name__.strip("_"),
)
def test_unwritable_cache_is_one_warning_and_the_same_run(
    make_unwritable, tmp_path, cache_on, monkeypatch, reference
):
    root = bmp_folder(tmp_path / "data")
    reason = make_unwritable(tmp_path, monkeypatch)
    summary, output = trained(tmp_path, root, "1")
    warnings = [line for line in output.splitlines() if "cache" in line]
    assert len(warnings) == 1, output
    assert warnings[0].startswith("warning: could not write the data cache") and reason in warnings[0], (
        warnings
    )
    assert pixels_of(summary) == reference, "the same run as without a cache"
    if cache_on.exists():
        assert not list(cache_on.iterdir()), "no half entry or temp folder left behind"


# --------------------------------------------------------------------------- row 6: file names
# os-level bytes names: not valid UTF-8, a newline, a tab, spaces at either end, a backslash
GOOD_NAMES = [b"caf\xe9.bmp", b"new\nline.bmp", b" leading.bmp", b"back\\slash.bmp", b"\xff\xfe.bmp"]
BAD_NAMES = [b"caf\xe9 bad.bmp", b"new\nbad.bmp", b"tab\there.bmp", b"trailing .bmp", b"\xfe\xff\n.bmp"]
ODD_NAMES = GOOD_NAMES + BAD_NAMES


def test_file_names_of_any_bytes_train_and_are_listed_one_per_line(tmp_path, cache_on):
    root = bmp_folder(tmp_path / "data")
    cat = os.fsencode(root / "train" / "cat")
    for name in ODD_NAMES:
        with open(os.path.join(cat, name), "wb") as f:
            f.write((root / "train/cat/cat_0.bmp").read_bytes() if name in GOOD_NAMES else b"not an image")
    first, _ = trained(tmp_path, root, "1")
    again, output = trained(tmp_path, root, "2")  # a cache hit: names round-trip through index.json
    assert "warning" not in output and pixels_of(again) == pixels_of(first)
    assert first["train_images"] + first["val_images"] == 8 + len(GOOD_NAMES)
    expected = sorted(f"train/cat/{image_files.escape_path(os.fsdecode(n))}" for n in BAD_NAMES)
    for run in (tmp_path / "runs-1/tiny", tmp_path / "runs-2/tiny"):
        lines = (run / "skipped.txt").read_text(encoding="utf-8").split("\n")[:-1]
        assert sorted(line.split("\t")[0] for line in lines) == expected, lines
    assert "train/cat/new\\nbad.bmp" in expected and "train/cat/\\xfe\\xff\\n.bmp" in expected


def test_escape_path_is_one_line_and_unambiguous():
    for raw in ODD_NAMES + [b"caf\xc3\xa9 ok.png", "a\u2028b".encode(), "c\x85d".encode()]:
        shown = image_files.escape_path(os.fsdecode(raw))
        assert shown.isprintable() and "\t" not in shown
    assert image_files.escape_path(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert image_files.escape_path("café  x ") == "café  x "  # valid names are kept as they are
    assert image_files.escape_path("c\x85d") == "c\\u0085d" != image_files.escape_path(os.fsdecode(b"c\x85d"))


@pytest.mark.parametrize("name", [b"bad\xffclass", b"two\nlines"], ids=["not-utf8", "newline"])
def test_class_folder_name_that_cannot_be_a_class_name(name, tmp_path):
    root = bmp_folder(tmp_path / "data")
    os.rename(root / "train" / "dog", os.path.join(os.fsencode(root / "train"), name))
    refused(tmp_path, root, "class folder name", "rename the folder")


# --------------------------------------------------------------------------- row 13: EXIF orientation
def _sideways_jpeg(path: Path) -> np.ndarray:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view);
    returns the upright pixels a viewer shows. Flat colour blocks survive JPEG exactly enough."""
    stored = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 tall as stored
    stored[:, :16] = (250, 20, 20)
    stored[:, 16:] = (20, 20, 250)
    exif = Image.Exif()
    exif[image_files.EXIF_ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    return np.rot90(stored, k=-1)  # clockwise: 16 wide, 32 tall, red on top


def test_exif_orientation_in_training_data_and_predict(tmp_path, monkeypatch):
    upright = _sideways_jpeg(tmp_path / "data/train/cat/photo.jpg")
    bmp_folder(tmp_path / "data")
    decoded = image_files.decode(tmp_path / "data/train/cat/photo.jpg", (32, 16), 3)
    assert decoded.shape == (32, 16, 3)
    far_from_the_edge = np.r_[0:12, 20:32]  # JPEG blurs the red/blue boundary a little
    assert np.abs(decoded.astype(int) - upright)[far_from_the_edge].max() < 12, "decoded upright, red on top"

    # training data: the folder dataset decodes it upright (squash to 8x8: red top, blue bottom)
    s = build_data(
        tiny_recipe(
            data__source={"name": "folder", "root": str(tmp_path / "data")},
            data__image_size=SIZE,
            data__val_fraction=0.0,
        )
    )
    img = s.train.images[s.train.paths.index("cat/photo.jpg")].numpy()
    assert img[0, 0].mean() > 200 and img[2, 0].mean() < 60  # top row red
    assert img[0, -1].mean() < 60 and img[2, -1].mean() > 200  # bottom row blue

    # predict: the same decode, the same upright pixels
    summary, _ = trained(tmp_path, tmp_path / "data", "1")
    model = tmp_path / "m.onnx"
    assert CliRunner().invoke(cli, ["export", summary["run_dir"], "-o", str(model)]).exit_code == 0
    seen = []
    real = image_files.decode_image
    monkeypatch.setattr(image_files, "decode_image", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    photos = tmp_path / "photos"
    _sideways_jpeg(photos / "p.jpg")
    os.symlink(".", photos / "loop")  # not followed: predict ends, and sees the photo once
    result = CliRunner().invoke(cli, ["predict", str(model), str(photos), "-o", str(tmp_path / "test.txt")])
    assert result.exit_code == 0, result.output
    (pixels,) = seen
    assert np.array_equal(pixels.transpose(2, 0, 1), img), "predict sees what training saw"


def test_upright_and_damaged_exif_decode_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[image_files.EXIF_ORIENTATION] = 99  # nonsense: ignored, not an error
    Image.fromarray(arr).save(tmp_path / "odd.png", exif=exif.tobytes())
    for name in ("plain.png", "odd.png"):
        assert np.array_equal(image_files.decode(tmp_path / name, (10, 14), 3), arr)


# --------------------------------------------------------------------------- rows 19 and 21: folders and links
def _file(p: Path) -> None:
    p.write_text("not a folder")


def _dangling(p: Path) -> None:
    os.symlink(p.parent / "gone", p)


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("make", [_file, _dangling], ids=["file", "dangling-link"])
def test_split_folder_that_is_not_a_folder(split, make, tmp_path):
    root = bmp_folder(tmp_path / "data")
    if split == "train":
        os.rename(root / "train", root / "elsewhere")
    make(root / split)
    words = ("which does not exist",) if make is _dangling else ("is a file, not a folder",)
    refused(tmp_path, root, str(root / split), *words)


def test_empty_root_and_unreadable_class(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    refused(tmp_path, tmp_path / "empty", "has no train/ folder", "train/<class>")
    root = bmp_folder(tmp_path / "data")
    for p in (root / "train/dog").iterdir():
        p.write_bytes(b"garbage")
    refused(tmp_path, root, "no image of class folder", "dog")


@pytest.mark.parametrize(
    "target",
    ["gone", ".", "..", "/", "cat"],
    ids=["dangling", "own-parent", "data-root", "filesystem-root", "another-class"],
)
def test_class_folder_link_is_never_a_fake_class(target, tmp_path):
    root = bmp_folder(tmp_path / "data")
    os.symlink(target, root / "train" / "kitty")
    words = {
        "gone": ["kitty", "does not exist"],
        ".": ["kitty", "every other class"],
        "..": ["kitty", "every other class"],
        "/": ["kitty", "every other class"],
        "cat": ["kitty", "same folder", "two classes"],
    }[target]
    refused(tmp_path, root, *words)


def test_link_inside_a_class_to_another_class_is_refused(tmp_path):
    root = bmp_folder(tmp_path / "data")
    os.symlink("../dog", root / "train/cat/more")
    refused(tmp_path, root, "same folder", "two classes")


def test_links_that_loop_are_listed_not_followed(tmp_path):
    root = bmp_folder(tmp_path / "data")
    os.symlink(".", root / "train/cat/self")
    os.symlink("..", root / "train/cat/up")
    os.symlink("../..", root / "train/dog/way_up")
    (root / "train/dog/sub").mkdir()
    os.symlink("../sub", root / "train/dog/sub/again")
    summary, _ = trained(tmp_path, root, "1")
    assert summary["train_images"] + summary["val_images"] == 8, "no image counted twice"
    lines = (tmp_path / "runs-1/tiny/skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == [
        "train/cat/self",
        "train/cat/up",
        "train/dog/sub/again",
        "train/dog/way_up",
    ]
    assert all("not followed" in line or "not read twice" in line for line in lines)


def test_linked_class_folders_from_elsewhere_train(tmp_path):
    """The common legitimate use: a dataset assembled from links to folders elsewhere."""
    store = bmp_folder(tmp_path / "store")
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    for c in ("cat", "dog"):
        os.symlink(store / "train" / c, root / "train" / c)
    summary, _ = trained(tmp_path, root, "1")
    assert summary["class_names"] == ["cat", "dog"] and summary["train_images"] + summary["val_images"] == 8


def test_unreadable_image_is_skipped_with_the_reason(tmp_path, monkeypatch):
    root = bmp_folder(tmp_path / "data")
    locked = root / "train/cat/cat_1.bmp"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads any file: answer as the kernel would for a user without permission
        real = os.open

        def os_open(path, flags, *args, **kwargs):
            if os.fspath(path) == str(locked):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
    summary, _ = trained(tmp_path, root, "1")
    assert summary["skipped_files"] == 1
    line = (tmp_path / "runs-1/tiny/skipped.txt").read_text()
    assert line == "train/cat/cat_1.bmp\tcannot read the file (Permission denied)\n"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
def test_a_fifo_or_a_device_named_like_an_image_is_skipped_not_read(tmp_path):
    """A FIFO named x.png in a class folder hung the first decode forever (no output, no
    error); a link to /dev/zero would read until memory ran out. Both are now unreadable
    files like any other: listed with the reason, never opened for reading."""
    import os

    import numpy as np
    from PIL import Image

    from clfkit.data.decode_pool import Output, decode_into

    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    paths = [tmp_path / n for n in ("ok.png", "pipe.png", "zero.png")]
    out = Output(len(paths), (3, 4, 4))
    results = decode_into(paths, (4, 4), 3, "squash", out, workers=1)
    assert [r.error for r in results] == [
        None,
        "not a regular file: a named pipe (FIFO)",
        "not a regular file: a character device (through a symbolic link)",
    ]
    assert out.array()[0].min() == 200 and out.array()[1:].max() == 0


# --------------------------------------------------------------------------- read_file (open + fstat + read)
def test_read_file_keeps_reading_after_a_short_read(tmp_path, monkeypatch):
    """One read() was taken as the whole file unless it filled the buffer: on a filesystem that
    returns less than asked (FUSE direct_io, some network mounts) every image came back cut
    and was skipped as truncated. Path.read_bytes, which it replaced, loops."""
    from PIL import Image

    from clfkit.data import image_files

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 1000)))  # a short-read filesystem
    assert image_files.read_file(path) == path.read_bytes()
    assert image_files.decode(path, (8, 8), 3).shape == (8, 8, 3)


# --------------------------------------------------------------------------- files a folder dataset leaves out
def test_training_says_which_files_it_leaves_out_for_their_extension(tmp_path, monkeypatch):
    """A phone's .heic photos (or .avif, .jpe) beside its .jpg ones were dropped without a word:
    the run trained on part of the class. Said on every run, cache hit or not; not data."""
    from conftest import invoke, write_image_folder

    from clfkit.cli import _format_warning

    root = write_image_folder(tmp_path / "data", per_class=6, size=16)
    cls = min((root / "train").iterdir())
    (cls / "IMG_0001.heic").write_bytes(b"heic bytes")
    (root / "test").mkdir(exist_ok=True)
    (root / "test" / "labels.csv").write_text("x")
    shutil.copy(next(cls.glob("*.png")), root / "train" / "stray.png")  # an image in no class folder
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\ndata: {{source: {{name: folder, root: {root}}}, image_size: 8}}\n"
        f"model: {{name: cnn, blocks: [{{channels: 4}}]}}\ntrain: {{epochs: 1, batch_size: 8}}\n"
    )
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))

    def show(message, category, filename, lineno, file=None, line=None):  # as `clfkit` (cli.main) does
        sys.stderr.write(_format_warning(message, category, filename, lineno))

    monkeypatch.setattr(warnings, "showwarning", show)  # also under pytest's own warning capture
    for attempt in ("decoded", "from the cache"):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            code, out = invoke("train", recipe, "--out", tmp_path / attempt)
        assert code == 0, out
        lines = [line for line in out.splitlines() if "not read" in line]
        assert len(lines) == 2, out
        assert (
            lines[0].startswith("warning: 1 file(s) under ")
            and "their extension is not an image's" in lines[0]
        )
        assert f"train/{cls.name}/IMG_0001.heic" in lines[0]
        assert lines[1].startswith("warning: 2 file(s) under ") and "in no class" in lines[1]
        assert "train/stray.png, test/labels.csv" in lines[1]
    assert "decoded images from cache" in out


# --------------------------------------------------------------------------- predict over linked folders
def test_predict_follows_linked_folders_as_training_does_and_names_loops(trained_run, tmp_path):
    """A folder of links to image folders (how datasets are often assembled; training follows
    them) got predictions for none of the linked images, and no word about them."""
    from PIL import Image

    from clfkit.deploy.batch_predict import predict_folder
    from clfkit.deploy.export import export_run

    model = export_run(trained_run.run_dir, tmp_path / "m.onnx").path
    elsewhere = tmp_path / "elsewhere" / "bees"
    elsewhere.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (0, 80 * i, 0)).save(elsewhere / f"b{i}.png")
    photos = tmp_path / "photos"
    (photos / "ants").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(photos / "ants" / "a.png")
    (photos / "bees").symlink_to(elsewhere, target_is_directory=True)
    (photos / "ants" / "up").symlink_to(photos, target_is_directory=True)  # a loop
    (photos / "bees_again").symlink_to(elsewhere, target_is_directory=True)  # read once only
    res = predict_folder(model, photos, tmp_path / "test.txt")
    names = [line.split(" ")[0] for line in (tmp_path / "test.txt").read_text().splitlines()]
    assert names == ["ants/a.png", "bees/b0.png", "bees/b1.png", "bees/b2.png"]
    assert [p for p, _ in res.skipped] == ["ants/up", "bees_again"]
    assert all("not followed" in why for _, why in res.skipped)
