"""predict_folder's double-buffered batching: every image once, in order, whatever the batch
size, with unreadable files anywhere in a batch skipped (no timing here)."""

from __future__ import annotations

from clfkit.deploy.export import export_run
from clfkit.deploy.batch_predict import predict_folder

from conftest import write_image_folder


def test_batches_and_bad_files_give_the_same_lines(tmp_path, trained_run):
    model = tmp_path / "m.onnx"
    export_run(trained_run.run_dir, model)
    images = write_image_folder(tmp_path / "d", per_class=5, size=16) / "train"
    (images / "cat" / "broken.png").write_bytes(b"not a png")
    (images / "dog" / "empty.png").write_bytes(b"")
    outs = {}
    for bs in (1, 3, 4, 1000):
        res = predict_folder(model, images, tmp_path / f"t{bs}.txt", batch_size=bs)
        assert res.written == 10 and [p for p, _ in res.skipped] == ["cat/broken.png", "dog/empty.png"]
        outs[bs] = (tmp_path / f"t{bs}.txt").read_text()
    assert len(set(outs.values())) == 1
    names = [line.split()[0] for line in outs[1].splitlines()]
    assert names == sorted(names) and "cat/cat_0.png" in names
