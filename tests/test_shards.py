"""data.source webdataset: tar shards streamed while they train. The epoch plan covers every
sample once over all ranks with equal steps; the worker count changes nothing and resume
mid-epoch is exact; shards over http are read (a dropped connection retried, never a short
epoch); bad shards and samples are errors or counted skips; clfkit data pack writes shards a
run trains on, exports and predicts from."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, refused, tiny_recipe, tiny_recipe_file, write_image_folder
from PIL import Image

from clfkit.errors import DataError

wds = pytest.importorskip("webdataset")


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_shards(
    folder: Path,
    n: int,
    per_shard: int,
    prefix: str = "train",
    classes=("dark", "bright"),
    bad: dict | None = None,
    plain: bool = False,
) -> str:
    """``n`` 8 px samples (class i % 2: dark or bright) in shards of ``per_shard``, classes.json
    beside them; ``bad``: {index: sample fields to replace}. Returns the brace pattern.
    webdataset's default float mtime writes a PAX header per member, which clfkit's own tar
    reader leaves to tarfile; ``plain``: an integer mtime, plain ustar (what data pack writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(
        str(folder / f"{prefix}-%06d.tar"),
        maxcount=per_shard,
        verbose=0,
        **({"mtime": 1_700_000_000} if plain else {}),
    ) as w:
        for i in range(n):
            y = i % 2
            sample = {"__key__": f"{prefix}{i:05d}", "png": _png(30 + 180 * y + i % 5), "cls": str(y)}
            sample.update((bad or {}).get(i, {}))
            w.write({k: v for k, v in sample.items() if v is not None})
    (folder / "classes.json").write_text(json.dumps(list(classes)))
    last = (n - 1) // per_shard
    return str(folder / (f"{prefix}-000000.tar" if last == 0 else f"{prefix}-{{000000..{last:06d}}}.tar"))


def _recipe(folder: Path, source: dict, **changes) -> Path:
    settings = dict(
        data__source={"name": "webdataset", **source},
        data__image_size=8,
        train__epochs=1,
        train__batch_size=8,
        model__blocks=[{"channels": 4, "pool": "max"}],
    )
    return tiny_recipe_file(folder, **{**settings, **changes})


def _streamed(pattern: str, **args):
    from clfkit.train.build import build_data

    recipe = tiny_recipe(
        data__source={"name": "webdataset", "train": pattern, **args},
        data__image_size=8,
        data__val_fraction=0,
    )
    return build_data(recipe).train


def _keys(
    split, epoch: int, *, workers: int = 0, start: int = 0, batch_size: int = 8, drop_last: bool = False
):
    from clfkit.train.engine.stream_batches import StreamBatches

    keys: list[str] = []
    batches = StreamBatches(split, batch_size, 0, drop_last, torch.device("cpu"), [], workers, keys=keys)
    sizes = [len(y) for _, y in batches.epoch(epoch, start_batch=start)]
    return keys, sizes, len(batches)


# --------------------------------------------------------------------------- the epoch plan
@pytest.mark.parametrize("counts", [[10, 10, 10, 10], [7, 13, 1, 0, 9], [3]])
@pytest.mark.parametrize("world,batch,drop_last", [(1, 4, False), (2, 4, False), (2, 4, True), (3, 6, False)])
def test_plan_covers_every_sample_once_over_ranks_with_equal_steps(counts, world, batch, drop_last):
    from clfkit.train.engine.batches import num_batches
    from clfkit.train.engine.stream_batches import rank_plan

    n = sum(counts)
    seen, steps = [], set()
    for rank in range(world):
        streams, b = rank_plan(counts, 0, 1, batch_size=batch, drop_last=drop_last, rank=rank, world=world)
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


@pytest.mark.parametrize("plain", [False, True])
def test_worker_count_changes_nothing_and_resume_skips_exactly(tmp_path, plain):
    split = _streamed(write_shards(tmp_path / "s", 70, 16, plain=plain))
    keys0, sizes0, n = _keys(split, 0)
    assert sorted(keys0) == sorted(f"train{i:05d}" for i in range(70)) and n == 9 and sum(sizes0) == 70
    assert keys0 != sorted(keys0), "shuffled"
    assert _keys(split, 0, workers=2)[0] == keys0, "2 loader workers: the very same batches"
    assert _keys(split, 1)[0] != keys0, "another epoch, another order"
    tail, sizes, _ = _keys(split, 0, workers=2, start=4)
    assert tail == keys0[sum(sizes0[:4]) :] and len(sizes) == n - 4, "a resumed epoch trains the rest exactly"


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
    source = {
        "train": train_pattern,
        "test": str(tmp_path / "packed" / manifest["splits"]["test"]["pattern"]),
    }
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
    # a shard changed after packing (a sample appended): its manifest count is stale, the run refuses it
    with open(tmp_path / "packed" / "train-000001.tar", "ab") as f:
        f.write(bytes(1024))
    recipe = _recipe(tmp_path, source)
    refused(["train-000001.tar", "manifest.json", "changed after clfkit data pack"], "train", recipe)
    for shard in manifest["shards"]:
        del shard["bytes"]  # a manifest from before sizes were written: still read
    (tmp_path / "packed" / "manifest.json").write_text(json.dumps(manifest))
    assert len(_streamed(train_pattern)) == 24
    refused(["--shard-size 'lots'"], "data", "pack", src, tmp_path / "p2", "--shard-size", "lots")
    assert not (tmp_path / "p2").exists()


def test_hf_dataset_packs_too(tmp_path):
    datasets = pytest.importorskip("datasets")
    os.environ.setdefault("HF_HOME", str(tmp_path / "hf_home"))
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    rows = {"image": [{"bytes": _png(i), "path": None} for i in range(9)], "label": [i % 3 for i in range(9)]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=feats)).save_to_disk(
        str(tmp_path / "hf")
    )
    code, out = invoke("data", "pack", tmp_path / "hf", tmp_path / "packed")
    assert code == 0, out
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["shards"][0]["per_class"] == [3, 3, 3]


# --------------------------------------------------------------------------- several processes
def _gloo_main(rank: int, port: int, pattern: str, out: str, results: str) -> None:
    from test_distributed import _join

    _join(rank, port)
    from clfkit.train.trainer import train

    recipe = tiny_recipe(
        data__source={"name": "webdataset", "train": pattern},
        data__image_size=8,
        data__val_fraction=0,
        data__workers=0,
        train__epochs=1,
        train__batch_size=8,
        train__device="cpu",
        model__blocks=[{"channels": 4, "pool": "max"}],
    )
    res = train(recipe, out, quiet=True)  # DDP over streamed shards: both ranks must take the same steps
    from clfkit.train.build import build_data

    split = build_data(recipe).train
    seen = {f"epoch{e}": _keys(split, e)[0] for e in (0, 1)}
    seen["steps"] = [
        json.loads(line)["step"] for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    Path(results, f"rank{rank}.json").write_text(json.dumps(seen))


def test_two_gloo_ranks_see_every_sample_exactly_once(tmp_path):
    from test_distributed import _spawn

    pattern = write_shards(tmp_path / "s", 46, 6)  # 8 shards of uneven sizes (the last holds 4)
    results = tmp_path / "results"
    results.mkdir()
    _spawn(_gloo_main, pattern, str(tmp_path / "runs"), str(results))
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    everything = sorted(f"train{i:05d}" for i in range(46))
    for epoch in ("epoch0", "epoch1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) == 23 and not set(a) & set(b), "each rank its own half"
        assert sorted(a + b) == everything, "every sample exactly once over the ranks"
    assert ranks[0]["epoch0"] != ranks[0]["epoch1"]
    assert ranks[0]["steps"] == ranks[1]["steps"] == [5], "46 // 8 global batches (drop_last), on both ranks"


# --------------------------------------------------------------------------- over http
class _Server:
    """http.server on 127.0.0.1 in a thread, serving ``root``; ``drops[name]`` requests for a
    file are cut off after half of it (a dropped connection)."""

    def __init__(self, root: Path, drops: dict[str, int]):
        import functools
        import http.server
        import threading

        drops = dict(drops)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if drops.get(name, 0) > 0:
                    drops[name] -= 1
                    data = (root / name).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the peer sees the connection drop mid-body
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.skipif(not __import__("shutil").which("curl"), reason="webdataset reads http(s) URLs with curl")
def test_http_shards_dropped_connection_retried_or_a_clear_error(tmp_path, monkeypatch):
    from clfkit.data import shards

    monkeypatch.setattr(shards, "RETRY_DELAY_S", 0.01)
    write_shards(tmp_path / "s", 30, 10)
    server = _Server(tmp_path / "s", {"train-000001.tar": 1})
    try:
        split = _streamed(server.url + "/train-{000000..000002}.tar")
        assert split.decoding.class_names == ["dark", "bright"], "classes.json beside the shards, over http"
        keys, _, _ = _keys(split, 0)
        assert sorted(keys) == sorted(f"train{i:05d}" for i in range(30)), (
            "the dropped shard was read again, whole"
        )
        server.close()
        server = _Server(tmp_path / "s", {"train-000002.tar": 99})  # drops every time
        split.shards.urls = [
            u.replace(split.shards.urls[0].rsplit("/", 1)[0], server.url) for u in split.shards.urls
        ]
        with pytest.raises(
            Exception, match=r"train-000002.tar: read failed after \d+ samples .*3 retries failed"
        ):
            _keys(split, 0)
    finally:
        server.close()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("plain", [False, True])
def test_truncated_shard_is_an_error_never_a_short_epoch(tmp_path, plain):
    pattern = write_shards(tmp_path / "s", 30, 10, plain=plain)
    shard = tmp_path / "s" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])  # cut mid-sample
    out = refused(
        ["train-000001.tar"],
        "train",
        _recipe(tmp_path, {"train": pattern}),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    assert "truncated" in out or "read failed" in out, out
    # cut after it was counted (a manifest's count, or the run's start): the epoch fails, not shrinks
    pattern = write_shards(tmp_path / "t", 30, 10, plain=plain)
    split = _streamed(pattern)
    shard = tmp_path / "t" / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:4096])
    for workers in (0, 2):  # from a loader worker too: the message, not the worker's traceback text
        with pytest.raises(DataError, match="train-000002.tar") as e:
            _keys(split, 0, workers=workers)
        assert "Traceback" not in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("plain", [False, True])
def test_bad_samples_are_counted_skips_and_the_epoch_keeps_its_size(tmp_path, plain):
    from clfkit.train.engine.stream_batches import SkippedSamples

    bad = {
        3: {"cls": None},
        5: {"cls": "7"},
        8: {"png": b"not a png"},
        11: {"cls": "zebra"},
        13: {"png": None, "npy": b"\x93NUMPY\x01\x00garbage"},
    }
    split = _streamed(write_shards(tmp_path / "s", 32, 8, bad=bad, plain=plain))
    with pytest.warns(SkippedSamples, match="epoch 1: 5 training sample"):
        keys, sizes, n = _keys(split, 0)
    assert len(keys) == 32 and sum(sizes) == 32 and n == 4, "made up for from the stream: same steps"
    assert not {"train00003", "train00005", "train00008", "train00011", "train00013"} & set(keys)
    from clfkit.data.shard_source import load_webdataset

    with pytest.raises(Exception, match=r"sample 'train00003': no label"):
        load_webdataset(
            train=write_shards(tmp_path / "v", 32, 8, bad={3: {"cls": None}}),
            image_size=(8, 8),
            channels=None,
            resize="squash",
            on_error="fail",
        )
    if not plain:
        return  # both tar readers' skips are checked above; the run's skipped.txt once, on pack's format
    code, out = invoke(
        "train",
        _recipe(
            tmp_path,
            {
                "train": str(tmp_path / "s" / "train-{000000..000003}.tar"),
                "val": str(tmp_path / "s" / "train-000000.tar"),
            },
        ),
        "--out",
        tmp_path / "runs",
    )
    assert code == 0, out
    listed = (tmp_path / "runs" / "tiny" / "skipped.txt").read_text()
    assert "train00003" in listed and "no label" in listed and "outside the 2 classes" in listed


def test_sources_without_classes_or_shards_are_refused(tmp_path):
    pattern = write_shards(tmp_path / "s", 8, 8)
    (tmp_path / "s" / "classes.json").unlink()
    refused(
        ["no class names", "classes.json"],
        "train",
        _recipe(tmp_path, {"train": pattern}),
        "--out",
        tmp_path / "r",
    )
    refused(
        ["does not exist"],
        "train",
        _recipe(tmp_path, {"train": str(tmp_path / "s" / "x-{0..3}.tar"), "classes": ["a", "b"]}),
        "--out",
        tmp_path / "r",
    )
    refused(
        ["holds out whole shards", "one shard"],
        "train",
        _recipe(tmp_path, {"train": pattern, "classes": ["a", "b"]}, data__val_fraction=0.2),
        "--out",
        tmp_path / "r",
    )
    refused(
        ["data.sampler: balanced", "streamed"],
        "train",
        _recipe(
            tmp_path,
            {"train": pattern, "classes": ["a", "b"]},
            data__val_fraction=0,
            data__sampler="balanced",
        ),
        "--out",
        tmp_path / "r",
    )
    assert not (tmp_path / "r").exists()


def test_streamed_run_stopped_mid_epoch_resumes_bit_identical(tmp_path):
    """Ctrl-C mid-epoch, then --resume: the streams skip the trained samples undecoded and the
    run ends with the weights of an uninterrupted one (per-image augmentation in a worker too)."""
    from conftest import sigint_at_step
    from test_resume import _assert_same_run

    from clfkit.util.signals import Interrupted
    from clfkit.train.trainer import resume_run, train

    pattern = write_shards(tmp_path / "s", 90, 16)
    recipe = tiny_recipe(
        data__source={"name": "webdataset", "train": pattern},
        data__image_size=8,
        data__val_fraction=0.2,
        data__workers=1,
        data__augment=[{"name": "Rotate", "limit": 20, "p": 1.0}],
        train__epochs=2,
        train__batch_size=8,
        train__deterministic=True,
        model__blocks=[{"channels": 4, "pool": "max"}],
    )
    ref = train(recipe, tmp_path / "ref", quiet=True)
    with pytest.MonkeyPatch.context() as interrupting:
        sigint_at_step(interrupting, 11)  # epoch 2 (of 8 steps each), after batch 3
        with pytest.raises(Interrupted):
            train(recipe, tmp_path / "cut", quiet=True)
    res = resume_run(tmp_path / "cut" / "tiny", quiet=True)
    _assert_same_run(ref.run_dir, res.run_dir)


def test_shard_globs_expand_sorted_and_one_matching_nothing_is_named(tmp_path):
    write_shards(tmp_path / "s", 24, 8)
    code, out = invoke(
        "train",
        _recipe(tmp_path, {"train": str(tmp_path / "s" / "train-*.tar")}, data__val_fraction=0),
        "--out",
        tmp_path / "runs",
    )
    assert code == 0, out
    assert json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())["train_images"] == 24
    for pattern in ("nothing-*.tar", "train-00000[7-9].tar"):
        refused(
            ["matches no file", pattern],
            "train",
            _recipe(tmp_path, {"train": str(tmp_path / "s" / pattern)}),
            "--out",
            tmp_path / "r2",
            max_lines=None,
        )
    assert not (tmp_path / "r2").exists()


def test_pack_refuses_a_folder_inside_its_source(tmp_path):
    src = write_image_folder(tmp_path / "imgs", per_class=3, size=8)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for inside in (src / "shards", src / "train" / "cat" / "shards"):
        refused(
            ["inside the source folder", "never writes into the data"],
            "data",
            "pack",
            src,
            inside,
            max_lines=None,
        )
    (tmp_path / "link").symlink_to(src)
    refused(["inside the source folder"], "data", "pack", tmp_path / "link", src / "x", max_lines=None)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


# --------------------------------------------------------------------------- clfkit's tar reader, raw pixels
def test_own_tar_reader_reads_what_webdataset_reads(tmp_path):
    """The same samples from any start, plain ustar (read by clfkit.data.tar_stream) or PAX (left
    to webdataset), with members that are no samples (a folder, __meta__ files) and gzip."""
    import gzip
    import tarfile

    from clfkit.data import shards, tar_stream

    write_shards(tmp_path / "plain", 9, 9, plain=True)
    write_shards(tmp_path / "pax", 9, 9)
    odd = tmp_path / "odd.tar"
    with tarfile.open(odd, "w", format=tarfile.USTAR_FORMAT) as t:
        t.add(tmp_path / "plain", arcname="sub", recursive=False)  # a folder member
        for name, data in (
            ("__meta__", b"x"),
            ("sub/a.png", _png(1)),
            ("sub/a.cls", b"0"),
            ("b.PNG", _png(2)),
            ("b.cls", b"1"),
            ("noext", b"z"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (tmp_path / "odd.tar.gz").write_bytes(gzip.compress(odd.read_bytes()))

    def both(url, start=0, stop=None):
        fast = list(shards.read_shard(url, start, stop))
        unsupported = url.endswith((".gz", "pax/train-000000.tar"))
        with open(url, "rb") as f, pytest.raises(tar_stream.Unsupported) if unsupported else _nothing():
            list(tar_stream.samples(f))
        slow = list(shards._samples(url, None, "cls", start, fast=False))[
            : None if stop is None else stop - start
        ]
        assert fast == slow, url
        return fast

    for start, stop in ((0, None), (4, 7), (8, 9)):
        a, b = (
            both(str(tmp_path / "plain" / "train-000000.tar"), start, stop),
            both(str(tmp_path / "pax" / "train-000000.tar"), start, stop),
        )
        assert a == b and [s.key for s in a] == [f"train{i:05d}" for i in range(start, stop or 9)]
    assert [(s.key, s.label) for s in both(str(odd))] == [("sub/a", "0"), ("b", "1")]
    assert [s.key for s in both(str(tmp_path / "odd.tar.gz"), 1)] == ["b"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_pack_raw_pixels_train_the_same_pixels(tmp_path):
    """data pack --raw auto stores small RGB/gray PNGs as .npy pixels (JPEGs and large images keep
    their bytes); streamed, they give exactly the batches the original files give, resized or not."""
    import tarfile

    src = write_image_folder(tmp_path / "imgs", per_class=4, size=10)
    Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)).save(src / "train" / "cat" / "gray.png")
    Image.fromarray(np.full((10, 10, 3), 99, np.uint8)).save(src / "train" / "dog" / "photo.jpg", quality=80)
    Image.fromarray(np.full((70, 70, 3), 7, np.uint8)).save(src / "train" / "dog" / "large.png")
    for raw in ("auto", "never"):
        code, out = invoke("data", "pack", src, tmp_path / raw, "--shard-size", "4", "--raw", raw)
        assert code == 0, out

    def members(folder):
        names = []
        for p in sorted(folder.glob("train-*.tar")):
            with tarfile.open(p) as t:
                names += t.getnames()
        return names

    auto = members(tmp_path / "auto")
    assert sum(m.endswith(".npy") for m in auto) == 9 and sum(m.endswith((".jpg", ".png")) for m in auto) == 2
    assert not any(m.endswith(".npy") for m in members(tmp_path / "never"))
    for size, channels in ((10, None), (8, None), (8, 1)):
        batches = {}
        for raw in ("auto", "never"):
            from clfkit.train.build import build_data

            recipe = tiny_recipe(
                data__source={
                    "name": "webdataset",
                    "train": str(tmp_path / raw / "train-{000000..000002}.tar"),
                },
                data__image_size=size,
                data__val_fraction=0,
                data__channels=channels or "auto",
            )
            split = build_data(recipe).train
            keys: list[str] = []
            from clfkit.train.engine.stream_batches import StreamBatches

            xs = [
                x
                for x, _ in StreamBatches(split, 4, 0, False, torch.device("cpu"), [], 0, keys=keys).epoch(0)
            ]
            batches[raw] = (keys, torch.cat(xs))
        assert batches["auto"][0] == batches["never"][0]
        assert torch.equal(batches["auto"][1], batches["never"][1]), (size, channels)
    refused(["--raw", "sometimes"], "data", "pack", src, tmp_path / "x", "--raw", "sometimes")


def test_train_time_check_reads_shard_labels_and_names_samples(tmp_path, monkeypatch):
    """The train-time check on a streamed split: labels from the shards (a photo under two
    classes is a conflict, not a duplicate), samples named shard#key, the head's extent said,
    and hold-out's head keeps only the kept shards' images."""
    import clfkit.data.shard_source as shard_source
    from clfkit.data.audit.quick import _short, quick_check
    from clfkit.train.build import build_data

    distinct = {i: {"png": _png(2 + 7 * i)} for i in range(24)}
    planted = {**distinct, 5: {"png": _png(2 + 7 * 2)}}  # train 2 (dark) again as train 5 (bright)
    train = write_shards(tmp_path / "s", 24, 8, bad=planted)
    val = write_shards(
        tmp_path / "v",
        6,
        6,
        prefix="val",
        bad={0: {"png": _png(2 + 7 * 4), "cls": "1"}, 1: {"png": _png(201)}},
    )
    monkeypatch.setattr(shard_source, "HEAD", 16)  # the head: the first 16 of 24
    splits = build_data(
        tiny_recipe(data__source={"name": "webdataset", "train": train, "val": val}, data__image_size=8)
    )
    warnings: list[str] = []
    line, counts = quick_check(splits, warnings.append)
    assert counts["conflict"] == 2 and counts["exact_duplicate"] == 0, (line, warnings)
    assert "(train: the first 16 of 24 streamed images)" in line and "train classes 8-8" in line, line
    conflict = next(w for w in warnings if w.startswith("2 conflict"))
    assert "train-000000.tar#train00002 in train as 'dark'" in conflict, conflict
    assert "train-000000.tar#train00005 in train as 'bright'" in conflict, conflict

    monkeypatch.setattr(shard_source, "HEAD", 2048)  # the head: all 24, one of them skipped
    train = write_shards(tmp_path / "h", 24, 8, bad={**distinct, 3: {"cls": None}, 20: {"cls": None}})
    held = build_data(
        tiny_recipe(
            data__source={"name": "webdataset", "train": train},
            data__image_size=8,
            data__val_fraction=0.3,
            data__on_error="skip",
        )
    )
    shards = {p.split("#")[0].rsplit("/", 1)[-1] for p in held.train.head_paths}
    assert shards == {"train-000000.tar", "train-000001.tar"}, "no held-out image left in the head"
    assert len(held.train.images) == len(held.train.head_labels) == 15
    skipped = [name.rsplit("/", 1)[-1] for name, _ in held.skipped]
    assert skipped == ["train-000000.tar#train00003", "train-000002.tar#train00020"], "each listed once"
    line, _ = quick_check(held, warnings.append)
    assert "(train: the first" not in line and "22 images" in line, "the head holds all kept train shards"
    assert _short("/d/odd#1/tr#ain-000000.tar#h#0") == "tr#ain-000000.tar#h#0"
    assert held.val.paths[0].endswith("train-000002.tar#train00016")


def test_damaged_shard_errors_name_their_cause(tmp_path):
    """A damaged header (a flipped byte; a zeroed block) is an error with or without a count to
    expect (tarfile would end the archive there without a word), samples past the expected count
    are one, a key written twice in a row is named as such, a cut shard is "truncated" once."""
    from clfkit.data.shards import read_shard

    def error(data: bytes, expected: int | None = 8, stop: int | None = None) -> str:
        (tmp_path / "s" / "train-000000.tar").write_bytes(data)
        with pytest.raises(DataError) as e:
            list(read_shard(str(tmp_path / "s" / "train-000000.tar"), 0, stop, expected=expected))
        return str(e.value)

    write_shards(tmp_path / "s", 8, 8, plain=True)
    clean = (tmp_path / "s" / "train-000000.tar").read_bytes()
    third = clean.index(b"train00002.cls")  # the header of sample 2's first member
    flipped = bytearray(clean)
    flipped[third + 3] ^= 1  # the name changes, the stored checksum no longer matches
    zeroed = clean[:third] + bytes(512) + clean[third + 512 :]
    for damaged, what in (
        (bytes(flipped), "damaged tar header (bad checksum)"),
        (zeroed, "zeroed tar header"),
    ):
        for expected in (8, None):
            assert what in error(damaged, expected), (what, expected)
    assert "pack it again" in error(bytes(flipped), None)
    longer = error(clean, expected=6, stop=6)
    assert "holds more than the 6 samples" in longer and "'train00006' follows them" in longer
    members = [
        (f"k{i // 2 if i < 4 else i}.{ext}", data)
        for i in range(8)
        for ext, data in (("cls", b"0"), ("png", _png(9)))
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:  # k0 k0 k1 k1 k4 ...: two samples in a row with one key
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    twice = buf.getvalue()
    assert "a key written twice in a row?" in error(twice) and "truncated" not in error(twice)
    assert "not a tar file?" in error(b"{}" * 600)
    folder = str(tmp_path / "s")
    with pytest.raises(DataError, match=r"is a folder: name its shards, e\.g\. .*train-\*\.tar"):
        list(read_shard(folder, 0, None))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("img.0000.png", "img.0000.cls"):  # the key is "img": members "0000.png", "0000.cls"
            info = tarfile.TarInfo(name)
            data = _png(9) if name.endswith("png") else b"0"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s" / "train-000000.tar").write_bytes(buf.getvalue())
    from clfkit.data.streamed import Decoding

    (sample,) = read_shard(str(tmp_path / "s" / "train-000000.tar"), 0, None)
    with pytest.raises(ValueError, match=r"no label \(it has a member img\.0000\.cls: .*img_0001\.cls"):
        Decoding(["a", "b"], (8, 8), 3, "squash").label(sample)
    cut = error(clean[:3000])
    assert cut.count("truncated") == 1, cut


@pytest.mark.parametrize(
    "entry,problem",
    [
        ({"count": 4, "bytes": "abc"}, "bytes that is not a whole number"),
        ({"count": None}, "has no count"),
        ({}, "has no count"),
        ({"count": 4, "per_class": [2, -2]}, "per_class that is not a list"),
    ],
)
def test_a_manifest_entry_of_the_wrong_type_is_named(tmp_path, entry, problem):
    from clfkit.data.shards import MANIFEST_FORMAT

    pattern = write_shards(tmp_path / "s", 8, 4)
    shards = [{"name": "train-000000.tar", **entry}, {"name": "train-000001.tar", "count": 4}]
    manifest = {"format": MANIFEST_FORMAT, "class_names": ["dark", "bright"], "shards": shards}
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"manifest.json: the shard entry .*train-000000.tar.* {problem}"):
        _streamed(pattern)
    (tmp_path / "s" / "manifest.json").unlink()
    assert len(_streamed("file://" + pattern)) == 8, "a file URL names the local shards"


def _write_manifest(folder: Path, counts: list[int], names=("dark", "bright")) -> None:
    """A manifest.json as clfkit data pack writes it for the shards in ``folder`` (sorted)."""
    from clfkit.data.shards import MANIFEST_FORMAT

    tars = sorted(folder.glob("*.tar"))
    shards = [{"name": p.name, "count": n, "bytes": p.stat().st_size} for p, n in zip(tars, counts)]
    manifest = {"format": MANIFEST_FORMAT, "class_names": list(names), "shards": shards}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_each_shard_is_read_with_its_own_folders_manifest(tmp_path, monkeypatch):
    """Val/test shards from another pack folder are counted by their own manifest (not by the
    train folder's entry of the same file name); a recipe's classes in another order than a
    manifest's, and a shard named twice, are refused; a head cut exactly at the held-out shards
    holds all of train."""
    import clfkit.data.shard_source as shard_source
    from clfkit.data.audit.quick import quick_check
    from clfkit.train.build import build_data

    train = write_shards(tmp_path / "a", 24, 8)
    _write_manifest(tmp_path / "a", [8, 8, 8])
    other = write_shards(tmp_path / "b", 5, 8)  # also named train-000000.tar
    _write_manifest(tmp_path / "b", [5])
    source = {"name": "webdataset", "train": train, "test": other}
    splits = build_data(tiny_recipe(data__source=source, data__image_size=8, data__val_fraction=0))
    assert len(splits.test) == 5 and len(splits.train) == 24
    with pytest.raises(DataError, match=r"lists the classes \['dark', 'bright'\].*indices"):
        _streamed(train, classes=["bright", "dark"])
    first = str(tmp_path / "a" / "train-000000.tar")
    with pytest.raises(DataError, match="train-000000.tar is named twice"):
        _streamed([first, str(tmp_path / "a" / "train-*.tar")])
    monkeypatch.setattr(shard_source, "HEAD", 16)  # the head ends where the held-out shard begins
    held = build_data(
        tiny_recipe(
            data__source={"name": "webdataset", "train": train}, data__image_size=8, data__val_fraction=0.3
        )
    )
    line, _ = quick_check(held, lambda _: None)
    assert len(held.train) == 16 and "(train: the first" not in line, line
