"""Issue 15 on CPU: the device bench script's driver, and the GPU-path fixes whose logic runs
on a CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASE_KEYS = {"model", "stem", "size", "compile", "precision", "channels_last", "images_per_s",
             "model_only_images_per_s", "ratio", "model_only_steps"}


def test_gpu_bench_smoke_writes_the_json(tmp_path):
    out = tmp_path / "gpu_bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--smoke", "--out", str(out),
                    "--work", str(tmp_path / "work")], check=True, env=env, cwd=tmp_path, timeout=240,
                   capture_output=True)
    result = json.loads(out.read_text())
    assert {"device", "torch", "cases", "study", "date", "target_ratio"} <= set(result)
    assert result["device"] == "cpu" and result["smoke"] is True
    assert {(c["stem"], c["compile"]) for c in result["cases"]} == {("cifar", False), ("imagenet", False)}
    for c in result["cases"]:
        assert CASE_KEYS <= set(c)
        assert c["ratio"] == c["images_per_s"] / c["model_only_images_per_s"]
    st = result["study"]
    assert st["timed_epochs"] == 2 and st["target_epochs"] == 25
    assert st["extrapolated_wall_seconds"] >= st["timed_wall_seconds"]


def test_gpu_sh_is_one_prepared_script():
    text = (ROOT / "bench" / "gpu.sh").read_text()
    assert "NO_ALBUMENTATIONS_UPDATE=1" in text and ".whl/*.whl" in text
    assert "bench/gpu_bench.py" in text and "timeout" in text
