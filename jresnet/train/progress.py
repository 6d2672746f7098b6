"""A rich progress bar for training: step, loss, accuracy, learning rate, images/s, ETA.

Compilation happens before the bar starts, so images/s and the ETA exclude it. Disabled (for tests,
pipes) it prints nothing.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

__all__ = ["Progress"]


class Progress:
    """Shows training progress over ``total`` steps, starting at ``start`` (a resumed run)."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._fields: dict[str, Any] = {"loss": float("nan"), "acc": float("nan"), "lr": 0.0, "ips": 0.0,
                                        "val": float("nan")}
        self._bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} val {task.fields[val]:.3f} "
                       "lr {task.fields[lr]:.2e} {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._bar.add_task("train", total=total, completed=start, **self._fields)

    def update(self, step: int, record: dict[str, Any]) -> None:
        """Move to ``step`` and show a train record's numbers."""
        self._bar.update(self._task, completed=step, loss=record["loss"], acc=record["accuracy"],
                         lr=record["lr"], ips=record["images_per_second"])

    def note(self, step: int, *, val_accuracy: float) -> None:
        """Show the latest validation accuracy."""
        self._bar.update(self._task, completed=step, val=val_accuracy)

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)
