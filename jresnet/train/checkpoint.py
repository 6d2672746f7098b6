"""Checkpoints with orbax-checkpoint: the last k by step, and the best by validation accuracy.

``run_dir/checkpoints/<step>`` keeps the newest ``keep`` states; ``run_dir/best/<step>`` keeps the one
with the highest validation accuracy. Orbax writes each checkpoint to a temporary folder and renames it
when complete, so a process killed mid-write leaves the previous ones intact.

Orbax does not notice bytes that change on disk afterwards, so each finished checkpoint also gets a
SHA-256 manifest (``run_dir/checksums/<manager>/<step>.json``). A checkpoint that fails its manifest or
fails to restore is reported in one line naming its folder and skipped for the one before it; nothing
is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointCorruptError", "Checkpoints"]


class CheckpointCorruptError(ValueError):
    """A checkpoint's files do not match the manifest written when it was saved."""


def _abstract(state: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _digest_folder(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path."""
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests[str(path.relative_to(folder))] = h.hexdigest()
    return digests


class _Manager:
    """One orbax CheckpointManager plus the manifests of its finished checkpoints."""

    def __init__(self, run_dir: Path, name: str, keep: int) -> None:
        self.name = name
        self.folder = (run_dir / name).absolute()
        self.orbax = ocp.CheckpointManager(self.folder, options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                                                             create=True))
        self.manifests = run_dir / "checksums" / name
        self._unsealed: list[int] = []

    def save(self, step: int, state: Any) -> None:
        if step in self.orbax.all_steps():
            return
        self.seal()  # the previous save has had a whole interval to finish; this rarely waits
        self.orbax.save(step, args=ocp.args.StandardSave(state))
        self._unsealed.append(step)

    def seal(self) -> None:
        """Wait for pending saves, then write their manifests."""
        self.orbax.wait_until_finished()
        for step in self._unsealed:
            folder = self.folder / str(step)
            if folder.is_dir():
                self.manifests.mkdir(parents=True, exist_ok=True)
                tmp = self.manifests / f"{step}.json.tmp"
                tmp.write_text(json.dumps(_digest_folder(folder)))
                os.replace(tmp, self.manifests / f"{step}.json")
        self._unsealed.clear()
        kept = {str(step) for step in self.orbax.all_steps()}
        for manifest in self.manifests.glob("*.json") if self.manifests.exists() else ():
            if manifest.name.split(".")[0] not in kept:  # orbax rotated that checkpoint out
                manifest.unlink()

    def verify(self, step: int) -> None:
        """Raise `CheckpointCorruptError` when checkpoint ``step`` differs from its manifest."""
        manifest = self.manifests / f"{step}.json"
        if not manifest.exists():
            return  # killed before sealing: orbax's atomic rename is then the only guarantee
        expected = json.loads(manifest.read_text())
        actual = _digest_folder(self.folder / str(step))
        bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        if bad:
            raise CheckpointCorruptError(f"{len(bad)} file(s) differ from the manifest written at save time, "
                                         f"e.g. {bad[0]}")

    def restore_newest(self, like: Any) -> tuple[Any, int] | None:
        for step in sorted(self.orbax.all_steps(), reverse=True):
            try:
                self.verify(step)
                return self.orbax.restore(step, args=ocp.args.StandardRestore(_abstract(like))), step
            except Exception as err:  # a damaged checkpoint: say so, keep it, try the one before
                reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                print(f"jresnet: checkpoint {self.folder / str(step)} is damaged and was skipped "
                      f"({type(err).__name__}: {reason}); trying the one before", file=sys.stderr)
        return None

    def close(self) -> None:
        self.seal()
        self.orbax.close()


class Checkpoints:
    """The run's two checkpoint managers and the best validation accuracy seen so far."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.run_dir = Path(run_dir)
        self.last = _Manager(self.run_dir, "checkpoints", keep)
        self.best = _Manager(self.run_dir, "best", 1)
        self._best_file = self.run_dir / "best.json"
        self.best_accuracy = -1.0
        if self._best_file.exists():
            self.best_accuracy = float(json.loads(self._best_file.read_text())["val_accuracy"])

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as step ``step`` (asynchronously; `wait` or `close` to be sure it is on disk)."""
        self.last.save(step, state)

    def save_if_best(self, step: int, state: Any, val_accuracy: float) -> bool:
        """Save ``state`` as the best checkpoint when ``val_accuracy`` beats every earlier one."""
        if val_accuracy <= self.best_accuracy:
            return False
        self.best_accuracy = val_accuracy
        self.best.save(step, state)
        tmp = self._best_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "val_accuracy": val_accuracy}))
        os.replace(tmp, self._best_file)
        return True

    def restore_latest(self, like: Any) -> tuple[Any, int] | None:
        """The newest checkpoint that verifies and restores, as (state, step); None when there is none."""
        return self.last.restore_newest(like)

    def restore_best(self, like: Any) -> tuple[Any, int] | None:
        """The best checkpoint, as (state, step); falls back to the latest when no best was saved."""
        return self.best.restore_newest(like) or self.restore_latest(like)

    def wait(self) -> None:
        """Block until every pending save is on disk and sealed with its manifest."""
        self.last.seal()
        self.best.seal()

    def close(self) -> None:
        self.last.close()
        self.best.close()
