"""``init: PATH``: start any model (clfkit's own or a plugin's) from the weights of a clfkit
checkpoint, or of a run folder's best.pt. Tensors load by name and shape; the receipt
(clfkit.weights_receipt) says what loaded, what stays freshly initialized and why."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from clfkit.run.checkpoint import load_checkpoint
from clfkit.run.folder import RunFolder, RunFolderError
from clfkit.weights_receipt import WeightsReceipt, compare, require_match

# the new run's input normalization stays its own: it is data, not learned weights
_NOT_WEIGHTS = ("mean", "std")


def init_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``init:`` names: the file itself, or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        best = RunFolder(path).best
        if not best.is_file():
            raise RunFolderError(f"init: {path} is a folder without best.pt (not a finished clfkit run); "
                                 f"name a run folder or a checkpoint file")
        return best
    if not path.is_file():
        raise RunFolderError(f"init: {path} does not exist (a run folder or a clfkit checkpoint file)")
    return path


def load_init(model: nn.Module, path: str | Path, min_match: float, num_classes: int) -> WeightsReceipt:
    """Load the weights of the checkpoint (or run folder) ``path`` into ``model`` (an
    ImageClassifier) by name and shape; fewer than ``min_match`` of its tensors matching is an
    error (init_min_match lowers the bar)."""
    file = init_checkpoint(path)
    state = {k: v for k, v in load_checkpoint(file)["model"].items() if k not in _NOT_WEIGHTS}
    own = {k: v for k, v in model.state_dict().items() if k not in _NOT_WEIGHTS}
    receipt = compare(own, state, source=str(file), field_name="init", num_classes=num_classes)
    require_match(receipt, min_match, "init_min_match")
    model.load_state_dict({k: state[k] for k in receipt.loaded}, strict=False)
    return receipt
