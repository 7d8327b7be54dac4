"""data.source webdataset: tar shards streamed while they train. The epoch plan covers every
sample once over all ranks with equal steps; the worker count changes nothing and resume
mid-epoch is exact; shards over http are read (a dropped connection retried, never a short
epoch); bad shards and samples are errors or counted skips; clfkit data pack writes shards a
run trains on, exports and predicts from."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import invoke, refused, tiny_recipe, tiny_recipe_file, write_image_folder

wds = pytest.importorskip("webdataset")


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_shards(folder: Path, n: int, per_shard: int, prefix: str = "train", classes=("dark", "bright"),
                 bad: dict | None = None) -> str:
    """``n`` 8 px samples (class i % 2: dark or bright) in shards of ``per_shard``, classes.json
    beside them; ``bad``: {index: sample fields to replace}. Returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(n):
            y = i % 2
            sample = {"__key__": f"{prefix}{i:05d}", "png": _png(30 + 180 * y + i % 5), "cls": str(y)}
            sample.update((bad or {}).get(i, {}))
            w.write({k: v for k, v in sample.items() if v is not None})
    (folder / "classes.json").write_text(json.dumps(list(classes)))
    last = (n - 1) // per_shard
    return str(folder / (f"{prefix}-000000.tar" if last == 0 else f"{prefix}-{{000000..{last:06d}}}.tar"))


def _recipe(folder: Path, source: dict, **changes) -> Path:
    settings = dict(data__source={"name": "webdataset", **source}, data__image_size=8, train__epochs=1,
                    train__batch_size=8, model__blocks=[{"channels": 4, "pool": "max"}])
    return tiny_recipe_file(folder, **{**settings, **changes})


def _streamed(pattern: str, **args):
    from clfkit.build import build_data

    recipe = tiny_recipe(data__source={"name": "webdataset", "train": pattern, **args}, data__image_size=8,
                         data__val_fraction=0)
    return build_data(recipe).train


def _keys(split, epoch: int, *, workers: int = 0, start: int = 0, batch_size: int = 8, drop_last: bool = False):
    from clfkit.engine.stream_batches import StreamBatches

    keys: list[str] = []
    batches = StreamBatches(split, batch_size, 0, drop_last, torch.device("cpu"), [], workers, keys=keys)
    sizes = [len(y) for _, y in batches.epoch(epoch, start_batch=start)]
    return keys, sizes, len(batches)


# --------------------------------------------------------------------------- the epoch plan
@pytest.mark.parametrize("counts", [[10, 10, 10, 10], [7, 13, 1, 0, 9], [3]])
@pytest.mark.parametrize("world,batch,drop_last", [(1, 4, False), (2, 4, False), (2, 4, True), (3, 6, False)])
def test_plan_covers_every_sample_once_over_ranks_with_equal_steps(counts, world, batch, drop_last):
    from clfkit.engine.batches import num_batches
    from clfkit.engine.stream_batches import rank_plan

    n = sum(counts)
    seen, steps = [], set()
    for rank in range(world):
        streams, b = rank_plan(counts, 0, 1, batch, drop_last, rank, world)
        steps.add(sum(s.batches for s in streams))
        for s in streams:
            got = [(shard, i) for shard, first, stop in s.segments for i in range(first, stop)]
            assert len(got) == s.samples
            seen += got
    assert steps == {num_batches(n, batch, drop_last)}, "every rank takes the single-process step count"
    unique = set(seen)
    if drop_last and n >= batch:
        assert len(seen) == len(unique) == (n // batch) * batch
    else:
        assert unique == {(s, i) for s, c in enumerate(counts) for i in range(c)}
        assert len(seen) - n < world, "padding: at most one sample per rank repeated"


def test_worker_count_changes_nothing_and_resume_skips_exactly(tmp_path):
    split = _streamed(write_shards(tmp_path / "s", 70, 16))
    keys0, sizes0, n = _keys(split, 0)
    assert sorted(keys0) == sorted(f"train{i:05d}" for i in range(70)) and n == 9 and sum(sizes0) == 70
    assert keys0 != sorted(keys0), "shuffled"
    assert _keys(split, 0, workers=2)[0] == keys0, "2 loader workers: the very same batches"
    assert _keys(split, 1)[0] != keys0, "another epoch, another order"
    tail, sizes, _ = _keys(split, 0, workers=2, start=4)
    assert tail == keys0[sum(sizes0[:4]):] and len(sizes) == n - 4, "a resumed epoch trains the rest exactly"


# --------------------------------------------------------------------------- train, export, predict
def test_pack_train_export_predict(tmp_path):
    src = write_image_folder(tmp_path / "imgs", per_class=12, size=12)
    code, out = invoke("data", "pack", src, tmp_path / "packed", "--shard-size", "5")
    assert code == 0, out
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["class_names"] == ["cat", "dog"] and manifest["splits"]["train"]["count"] == 24
    assert [s["count"] for s in manifest["shards"] if s["split"] == "train"] == [5, 5, 5, 5, 4]
    assert sum(sum(s["per_class"]) for s in manifest["shards"]) == 28
    train_pattern = str(tmp_path / "packed" / manifest["splits"]["train"]["pattern"])
    assert f'train: "{train_pattern}"' in out, "the data.source to use is printed, as valid YAML"
    source = {"train": train_pattern, "test": str(tmp_path / "packed" / manifest["splits"]["test"]["pattern"])}
    code, out = invoke("train", _recipe(tmp_path, source, train__epochs=2), "--out", tmp_path / "runs")
    assert code == 0, out
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    # val_fraction 0.1 holds out one whole shard of five (4 or 5 samples: the last one given)
    assert (summary["train_images"], summary["val_images"]) == (20, 4) and summary["test_acc"] is not None
    code, out = invoke("export", run, "-o", tmp_path / "m.onnx")
    assert code == 0, out
    code, out = invoke("predict", tmp_path / "m.onnx", src / "test", "-o", tmp_path / "pred.txt")
    assert code == 0, out
    lines = (tmp_path / "pred.txt").read_text().splitlines()
    assert len(lines) == 4 and all(line.split()[-1] in ("cat", "dog") for line in lines)
    refused(["exists", "never writes into an existing one"], "data", "pack", src, tmp_path / "packed")
    refused(["--shard-size 'lots'"], "data", "pack", src, tmp_path / "p2", "--shard-size", "lots")
    assert not (tmp_path / "p2").exists()


def test_hf_dataset_packs_too(tmp_path):
    datasets = pytest.importorskip("datasets")
    os.environ.setdefault("HF_HOME", str(tmp_path / "hf_home"))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    rows = {"image": [{"bytes": _png(i), "path": None} for i in range(9)], "label": [i % 3 for i in range(9)]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=feats)).save_to_disk(str(tmp_path / "hf"))
    code, out = invoke("data", "pack", tmp_path / "hf", tmp_path / "packed")
    assert code == 0, out
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["shards"][0]["per_class"] == [3, 3, 3]
