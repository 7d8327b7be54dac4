"""Issue 24 item 3: bench/gpu.sh cannot waste a device draw. On the CPU (``--cpu``): the
preflight runs and records versions, a failing case and a hanging one each cost their own row
while later rows are still written, missing wheels and a machine without CUDA stop early
with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASE_KEYS = {
    "case",
    "model",
    "stem",
    "size",
    "compile",
    "precision",
    "images_per_s",
    "model_only_images_per_s",
    "ratio",
    "model_only_steps",
    "peak_gpu_memory",
}


def _gpu_sh(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OUT": str(tmp_path / "out"),
        "GPU_BENCH_WORK": str(tmp_path / "work"),
        **env,
    }
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )


def test_gpu_sh_preflight_then_each_case_in_its_own_guard(tmp_path):
    run = _gpu_sh(
        tmp_path,
        "--cpu",
        GPU_BENCH_COMPILE_BACKEND="eager",  # inductor's C++ build: minutes here
        GPU_BENCH_FAIL="study:hang c16-cifar-eager",
        GPU_BENCH_TIMEOUTS="study=3",
    )
    out = tmp_path / "out"
    assert run.returncode == 1, (
        run.stdout[-3000:] + run.stderr[-2000:]
    )  # a case failed: said by the exit code
    assert "preflight ok" in run.stdout and "case study FAILED" in run.stdout
    result = json.loads((out / "gpu_bench.json").read_text())
    pre = result["preflight"]
    assert (
        pre["ok"]
        and pre["device"] == "cpu"
        and {"torch", "pydantic", "albumentations", "clfkit"} <= set(pre["versions"])
    )
    assert (
        result["study"]["failed"] == "timed out after 3 s"
    )  # the headline first; its hang cost its row only
    failed, ran = result["cases"]
    assert failed["case"] == "c16-cifar-eager" and failed["failed"] == "exit code 1"
    assert any("injected failure" in line for line in failed["log_tail"])
    assert ran["case"] == "c16-imagenet-eager" and CASE_KEYS <= set(ran) and "failed" not in ran
    assert ran["ratio"] == ran["images_per_s"] / ran["model_only_images_per_s"]
    assert result["all_cases_meet_target"] is False
    assert "torch==" in (out / "pip_list.txt").read_text()
    assert "preflight ok" in (out / "gpu_bench.log").read_text()


def test_gpu_sh_stops_before_anything_runs_when_wheels_are_missing(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pydantic-2.14.3-py3-none-any.whl").write_bytes(b"")
    run = _gpu_sh(tmp_path, GPU_BENCH_WHEELS=str(wheels))
    assert run.returncode == 3, run.stdout
    line = next(x for x in run.stdout.splitlines() if "STOP:" in x)
    assert "no wheel in" in line and "pydantic-core" in line and "albumentations" in line
    assert " pydantic " not in line.split("for:")[1] + " "  # the one carried is not named
    assert 'carry [".whl"]' in line and not (tmp_path / "out" / "gpu_bench.json").exists()


def test_preflight_stops_at_once_without_cuda(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--preflight", "--rows", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 3 and run.stdout.startswith("PREFLIGHT FAILED: CUDA is not visible to torch"), (
        run.stdout
    )
    assert json.loads((tmp_path / "preflight.json").read_text())["ok"] is False


def test_preflight_names_a_missing_import_and_its_wheel(tmp_path):
    code = (
        "import runpy, sys; sys.modules['albumentations'] = None; "
        f"sys.argv = ['gpu_bench.py', '--cpu', '--preflight', '--rows', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(ROOT / 'bench' / 'gpu_bench.py')!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert run.returncode == 3, run.stdout + run.stderr[-2000:]
    assert "PREFLIGHT FAILED: cannot import albumentations (distribution albumentations" in run.stdout
    assert "fetch-wheels.sh" in run.stdout


def test_wheel_list_matches_the_preflight_imports():
    """Every carried distribution is one the bench imports (or a dependency of one); the
    headline study runs first."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    carried = [
        x.strip()
        for x in (ROOT / "bench" / "gpu_wheels.txt").read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    imported = set(gpu_bench.IMPORTS.values())
    deps = {"typing-extensions", "stringzilla", "simsimd"}  # pydantic's and albucore's own needs
    assert set(carried) <= imported | deps and {"pydantic", "albumentations"} <= set(carried)
    names = gpu_bench.case_list(gpu_bench.settings(cpu=False))
    assert names[0] == ("study", 300) and [n for n, _ in names[-2:]] == ["prep", "decode"]
