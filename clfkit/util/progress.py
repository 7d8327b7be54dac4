"""The console side of a training run: a rich progress bar on a terminal, one plain line per
epoch otherwise (the same lines either way)."""

from __future__ import annotations

import sys
from typing import Callable


class Reporter:
    """A rich progress bar on a terminal; one plain line per epoch otherwise."""

    def __init__(self, total_epochs: int, quiet: bool = False):
        self.total = total_epochs
        self.quiet = quiet
        self.live = sys.stdout.isatty() and not quiet
        self._progress = None

    def start_epoch(self, epoch: int, n_images: int) -> Callable[[int], None]:
        """Start epoch ``epoch``'s bar; returns the callback that advances it by n images."""
        if not self.live:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._progress is None:
            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
        self._task = self._progress.add_task("train", total=n_images, epoch=f"{epoch + 1}/{self.total}")
        return lambda n: self._progress.advance(self._task, n)

    def end_epoch(self, row: dict) -> None:
        """Close the epoch's bar and print its line."""
        if self._progress is not None:
            self._progress.remove_task(self._task)
        if self.quiet:
            return
        line = (
            f"epoch {row['epoch']:>3}/{self.total}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}"
        )
        if "val_acc" in row:
            line += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        line += f"  lr {row['lr']:.3g}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
        self.print(line)

    def print(self, text: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
