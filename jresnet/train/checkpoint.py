"""Checkpoints with orbax-checkpoint: the last k by step, and the best by validation accuracy.

``run_dir/checkpoints/<step>`` keeps the newest ``keep`` states; ``run_dir/best/<step>`` keeps the one
with the highest validation accuracy. Orbax writes each checkpoint to a temporary folder and renames it
when complete, so a process killed mid-write leaves the previous ones intact.

Orbax does not notice bytes that change on disk afterwards, so each finished checkpoint also gets a
SHA-256 manifest (``run_dir/checksums/<manager>/<step>.json``). A checkpoint that fails its manifest or
fails to restore is reported in one line naming its folder and skipped for the one before it; nothing
is deleted. A resuming run moves it aside, to ``run_dir/damaged/``, so that it can save that step again
(orbax never saves a step at or below its newest one), and seals a checkpoint its killed predecessor
finished but could not seal.

A checkpoint whose files are intact but whose arrays differ from the state the run builds (another
optimiser, EMA on or off) is not damage: restoring stops with `CheckpointMismatchError`, naming the folder.

``best.json`` (the best validation accuracy) is written only once the best checkpoint it describes is
on disk, and a regular checkpoint is started only after the best one before it is on disk, so a run
killed at any moment resumes with the same idea of "best" as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointCorruptError", "CheckpointMismatchError", "Checkpoints"]


class CheckpointCorruptError(ValueError):
    """A checkpoint's files do not match the manifest written when it was saved."""


class CheckpointMismatchError(ValueError):
    """A checkpoint holds other arrays (names, shapes or dtypes) than the state it is restored into."""


def _abstract(state: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _layout(state: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``path: (shape, dtype)`` of every array in ``state``, with paths spelled as orbax names them."""
    return {".".join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _layout_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first difference between two `_layout`s, in words; None when they are the same."""
    for name in sorted(saved.keys() | wanted.keys()):
        if name not in saved:
            return f"{len(wanted.keys() - saved.keys())} array(s) missing from the checkpoint, e.g. {name}"
        if name not in wanted:
            return f"{len(saved.keys() - wanted.keys())} array(s) this run does not have, e.g. {name}"
        if saved[name] != wanted[name]:
            return f"{name} is {saved[name][0]} {saved[name][1]} there, {wanted[name][0]} {wanted[name][1]} now"
    return None


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
        self.run_dir = run_dir
        self.folder = (run_dir / name).absolute()
        # The handler is named up front so that item_metadata can read a checkpoint another process saved.
        self.orbax = ocp.CheckpointManager(self.folder, item_handlers=ocp.StandardCheckpointHandler(),
                                           options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.manifests = run_dir / "checksums" / name
        # (step, saved by this process, called once sealed): `seal` writes their manifests.
        self._unsealed: list[tuple[int, bool, Callable[[], None] | None]] = []

    def save(self, step: int, state: Any, on_sealed: Callable[[], None] | None = None) -> None:
        """Start saving ``state`` as ``step``; ``on_sealed`` runs once it is on disk with its manifest."""
        if step in self.orbax.all_steps():
            # A resumed run redoing a step that a killed run had already saved: the same state, since runs
            # are deterministic. Keep that checkpoint; seal it if its run died before it could.
            self._unsealed.append((step, False, on_sealed))
            return
        self.seal()  # the previous save has had a whole interval to finish; this rarely waits
        try:
            self.orbax.save(step, args=ocp.args.StandardSave(state))
        except OSError as err:
            raise self._write_error(step, err) from None
        self._unsealed.append((step, True, on_sealed))

    def _write_error(self, step: int, err: OSError) -> OSError:
        return OSError(err.errno, f"could not write checkpoint {self.folder / str(step)}: {err.strerror or err}. "
                                  f"The checkpoints before it are intact; free space (or fix {self.folder}) and run "
                                  "the same command again to resume")

    def seal(self) -> None:
        """Wait for pending saves, then write their manifests."""
        try:
            self.orbax.wait_until_finished()
        except OSError as err:  # an asynchronous write failed, e.g. the disk filled up
            raise self._write_error(self._unsealed[0][0] if self._unsealed else -1, err) from None
        for step, fresh, on_sealed in self._unsealed:
            if (self.folder / str(step)).is_dir():
                if fresh or not (self.manifests / f"{step}.json").exists():
                    self._write_manifest(step)
                if on_sealed is not None:
                    on_sealed()
        self._unsealed.clear()
        kept = {str(step) for step in self.orbax.all_steps()}
        for manifest in self.manifests.glob("*.json") if self.manifests.exists() else ():
            if manifest.name.split(".")[0] not in kept:  # orbax rotated that checkpoint out
                manifest.unlink()

    def _write_manifest(self, step: int) -> None:
        self.manifests.mkdir(parents=True, exist_ok=True)
        tmp = self.manifests / f"{step}.json.tmp"
        tmp.write_text(json.dumps(_digest_folder(self.folder / str(step))))
        os.replace(tmp, self.manifests / f"{step}.json")

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

    def check_layout(self, step: int, like: Any) -> None:
        """Raise `CheckpointMismatchError` when checkpoint ``step`` holds other arrays than ``like``."""
        metadata = self.orbax.item_metadata(step)
        if metadata is None:
            raise ValueError("orbax found no metadata in it")
        saved = {m.name: (tuple(m.shape), str(m.dtype)) for m in jax.tree.leaves(metadata)}
        difference = _layout_difference(saved, _layout(like))
        if difference is not None:
            raise CheckpointMismatchError(
                f"checkpoint {self.folder / str(step)} holds a different training state than this run builds "
                f"({difference}): the run folder was made with other settings (optimiser, EMA, ...). Start fresh "
                "under another name (name=...), or pass train.resume=fresh to move the folder aside and start over.")

    def _set_aside(self, step: int) -> Path:
        """Move damaged checkpoint ``step`` (and its manifest) to ``run_dir/damaged/``; nothing is deleted."""
        target = self.run_dir / "damaged" / f"{self.name}-{step}"
        n = 1
        while target.exists():
            target, n = target.with_name(f"{self.name}-{step}~{n}"), n + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.folder / str(step)).rename(target)
        manifest = self.manifests / f"{step}.json"
        if manifest.exists():
            manifest.rename(target.with_name(f"{target.name}.manifest.json"))
        self.orbax.reload()
        return target

    def restore_newest(self, like: Any, *, resuming: bool = False) -> tuple[Any, int] | None:
        """The newest checkpoint that verifies and restores into ``like``'s structure, as (state, step).

        A damaged checkpoint is reported in one line and skipped. A checkpoint of another state raises
        `CheckpointMismatchError`. ``resuming`` (a run that will go on writing here) also moves damaged
        checkpoints to ``run_dir/damaged/`` and writes the manifest of one restored without it; otherwise
        nothing on disk changes.
        """
        for step in sorted(self.orbax.all_steps(), reverse=True):
            try:
                self.verify(step)
                self.check_layout(step, like)
                state = self.orbax.restore(step, args=ocp.args.StandardRestore(_abstract(like)))
            except CheckpointMismatchError:
                raise
            except Exception as err:  # a damaged checkpoint: say so, keep it, try the one before
                reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                moved = f"; moved it to {self._set_aside(step)}" if resuming else ""
                print(f"jresnet: checkpoint {self.folder / str(step)} is damaged and was skipped "
                      f"({type(err).__name__}: {reason}){moved}; trying the one before", file=sys.stderr)
                continue
            if resuming and not (self.manifests / f"{step}.json").exists():
                self._write_manifest(step)  # it restored whole; from now on, damage to it will be noticed
            return state, step
        return None

    def close(self) -> None:
        self.seal()
        self.orbax.close()


class Checkpoints:
    """The run's two checkpoint managers and the best validation result seen so far.

    Best means the highest validation accuracy, and on a tie the lower validation loss. Accuracy on a small
    validation set plateaus: without the tie-break the first step to touch the plateau wins, often a model
    still mid-schedule (on the digits default, step 60 of 300).
    """

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.run_dir = Path(run_dir)
        self.last = _Manager(self.run_dir, "checkpoints", keep)
        self.best = _Manager(self.run_dir, "best", 1)
        self._best_file = self.run_dir / "best.json"
        self.best_accuracy, self.best_loss = -1.0, math.inf
        if self._best_file.exists():
            record = json.loads(self._best_file.read_text())
            self.best_accuracy = float(record["val_accuracy"])
            self.best_loss = float(record.get("val_loss", math.inf))  # files from before the tie-break

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as step ``step`` (asynchronously; `wait` or `close` to be sure it is on disk)."""
        # The best checkpoint of an earlier (or this) step must be on disk first: a run resumed from this
        # checkpoint does not evaluate those steps again, so it could not redo that best checkpoint.
        self.best.seal()
        self.last.save(step, state)

    def save_if_best(self, step: int, state: Any, val_accuracy: float, val_loss: float = math.inf) -> bool:
        """Save ``state`` as the best checkpoint when it beats every earlier one: a higher ``val_accuracy``,
        or the same accuracy with a lower ``val_loss``."""
        tied = val_accuracy == self.best_accuracy
        if val_accuracy < self.best_accuracy or (tied and not val_loss < self.best_loss):
            return False
        self.best_accuracy, self.best_loss = val_accuracy, val_loss

        def record() -> None:  # only once the checkpoint is on disk: a killed run must not claim a best it lost
            tmp = self._best_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step, "val_accuracy": val_accuracy, "val_loss": val_loss}))
            os.replace(tmp, self._best_file)

        self.best.save(step, state, on_sealed=record)
        return True

    def restore_latest(self, like: Any, *, resuming: bool = False) -> tuple[Any, int] | None:
        """The newest checkpoint that verifies and restores, as (state, step); None when there is none.

        Pass ``resuming=True`` from a run that goes on training here: damaged checkpoints are then moved to
        ``run_dir/damaged/`` so their steps can be saved again. Raises `CheckpointMismatchError` for a
        checkpoint of a differently shaped state (another optimiser, EMA on or off).
        """
        return self.last.restore_newest(like, resuming=resuming)

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
