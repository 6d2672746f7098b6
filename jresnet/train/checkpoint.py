"""Checkpoints with orbax-checkpoint: the last k by step, and the best by validation accuracy.

``run_dir/checkpoints/<step>`` keeps the newest ``keep`` states; ``run_dir/best/<step>`` keeps the one
with the highest validation accuracy. Orbax writes each checkpoint to a temporary folder and renames it
when complete, so a process killed mid-write leaves the previous ones intact. A checkpoint that fails
to restore (truncated, bytes flipped) is reported in one line and skipped for the one before it;
nothing is deleted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]


def _abstract(state: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpoints:
    """The run's two checkpoint managers and the best validation accuracy seen so far."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.run_dir = Path(run_dir)
        self.last = ocp.CheckpointManager(
            (self.run_dir / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            (self.run_dir / "best").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
        self._best_file = self.run_dir / "best.json"
        self.best_accuracy = -1.0
        if self._best_file.exists():
            self.best_accuracy = float(json.loads(self._best_file.read_text())["val_accuracy"])

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as step ``step`` (asynchronously; `wait` or `close` to be sure it is on disk)."""
        if step not in self.last.all_steps():
            self.last.save(step, args=ocp.args.StandardSave(state))

    def save_if_best(self, step: int, state: Any, val_accuracy: float) -> bool:
        """Save ``state`` as the best checkpoint when ``val_accuracy`` beats every earlier one."""
        if val_accuracy <= self.best_accuracy:
            return False
        self.best_accuracy = val_accuracy
        if step not in self.best.all_steps():
            self.best.save(step, args=ocp.args.StandardSave(state))
        tmp = self._best_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "val_accuracy": val_accuracy}))
        tmp.replace(self._best_file)
        return True

    def restore_latest(self, like: Any) -> tuple[Any, int] | None:
        """The newest checkpoint that restores, as (state, step); None when there is none."""
        return self._restore_newest(self.last, like)

    def restore_best(self, like: Any) -> tuple[Any, int] | None:
        """The best checkpoint, as (state, step); falls back to the latest when no best was saved."""
        return self._restore_newest(self.best, like) or self.restore_latest(like)

    def _restore_newest(self, manager: ocp.CheckpointManager, like: Any) -> tuple[Any, int] | None:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                return manager.restore(step, args=ocp.args.StandardRestore(_abstract(like))), step
            except Exception as err:  # a damaged checkpoint: say so, keep it, try the one before
                folder = Path(manager.directory) / str(step)
                print(f"jresnet: checkpoint {folder} is damaged and was skipped ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]})", file=sys.stderr)
        return None

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.last.close()
        self.best.close()
