"""Eval cost of the insight files on flowers5 (docs/insight.md): in one process, eval's test
pass, the calibration (logits of val + test, ECE, reliability.png) and the Grad-CAM maps, 3
rounds each, on a run trained with

    clfkit train recipes/flowers5.yaml --set data.image_size=32 --set train.epochs=2 --set name=f5_32 --out runs
    python bench/insight_cost.py runs/f5_32
"""

from __future__ import annotations

import os
import sys
import tempfile
import time


def main(run: str) -> None:
    from clfkit.train.build import build_data, build_loss
    from clfkit.train.engine.runtime import resolve_runtime
    from clfkit.run.evaluation import evaluate
    from clfkit.recipe import Recipe
    from clfkit.run.calibration import reliability, split_logits, write_calibration
    from clfkit.run.checkpoint import model_from_checkpoint, run_checkpoint

    t = time.perf_counter()
    import pytorch_grad_cam  # noqa: F401 - its import is part of the cost (scikit-learn, OpenCV)

    from clfkit.run.gradcam import cam_cards

    print(f"import pytorch_grad_cam {time.perf_counter() - t:.2f} s; load {os.getloadavg()[0]:.2f}")
    _, state = run_checkpoint(run, None, "eval")
    recipe = Recipe.model_validate(state["recipe"])
    splits = build_data(recipe)
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    model = model_from_checkpoint(state).to(rt.device).eval()
    loss_fn = build_loss(recipe, splits.num_classes, splits)
    scratch = tempfile.mkdtemp()  # calibration.json and reliability.png go here, not into the run
    for r in range(3):
        t0 = time.perf_counter()
        evaluate(model, splits.test, rt=rt, loss_fn=loss_fn, num_classes=splits.num_classes, batch_size=256)
        t1 = time.perf_counter()
        by_split = {}
        for name, data in (("val", splits.val), ("test", splits.test)):
            logits, labels = split_logits(model, data, rt, 256)
            by_split[name] = reliability(logits, labels)
        write_calibration(scratch, by_split)
        t2 = time.perf_counter()
        cam = cam_cards(model, splits.test, logits.softmax(1), splits.class_names, rt.device)
        t3 = time.perf_counter()
        print(
            f"round {r + 1}: test pass {t1 - t0:.2f} s, calibration {t2 - t1:.2f} s, Grad-CAM {t3 - t2:.2f} s "
            f"({cam['maps']} maps); load {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/f5_32")
