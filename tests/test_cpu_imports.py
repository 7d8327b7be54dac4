"""What a CPU training run loads (issue 27, memory): packages it does not use stay out of the
process, so their memory is not part of its peak RSS. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import TINY

HEAVY = ["matplotlib", "onnx", "onnxruntime", "onnxscript", "timm", "albumentations", "cv2", "scipy"]

SCRIPT = """
import json, sys
from clfkit.recipe import validate_recipe
import clfkit.train.trainer
at_import = [m for m in {heavy} if m in sys.modules]
recipe = validate_recipe(json.loads(sys.argv[1]))
from clfkit.train import prepare
setup = prepare.set_up(recipe, quiet=True, resume=None)
built = prepare.build(recipe, setup.rt, prepare.load_data(recipe, None), None)
from clfkit.train.engine.loop import train_one_epoch
train_one_epoch(built.state, built.batches, 0, progress=lambda n: None)
print(json.dumps({{"import": at_import, "epoch": [m for m in {heavy} if m in sys.modules]}}))
"""


def test_a_cpu_training_epoch_loads_no_plotting_export_or_unused_augmentation_packages(tmp_path):
    recipe = dict(
        TINY,
        data=dict(TINY["data"], storage="disk", augment=[{"name": "HorizontalFlip"}]),
        train=dict(TINY["train"], epochs=1, device="cpu"),
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), json.dumps(recipe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"import": [], "epoch": []}, loaded


def test_openmp_threads_wait_passively_unless_the_user_chose(tmp_path):
    """clfkit sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP; an explicit setting wins."""
    code = "import os, clfkit, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=run_env, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected
