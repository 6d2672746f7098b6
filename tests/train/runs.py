"""Helpers for the reliability tests: small real runs, as a `jresnet train` subprocess or in-process.

Every run here is resnet20 with one block per stage on the bundled digits (8×8), batch 64: about 0.1 s a
step on a CPU core, so a few dozen steps cost little next to starting JAX and compiling the step.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

SMALL = ["model.overrides={depths: [1, 1, 1]}", "train.batch_size=64", "train.progress=false",
         "train.epochs=null", "train.log_every=1"]
RUN_NAME = "digits_resnet20"  # the default run name: every run folder below is out_dir/RUN_NAME
PRISTINE_ARGS = ("train.steps=6", "train.checkpoint_every=2", "train.eval_every=3")
"""The shared small run (the ``pristine_run`` fixture): checkpoints at 2, 4 and 6, validation at 3 and 6.
Tests that rerun it with these same arguments hit the compiled step in XLA's persistent cache."""
WALL_CLOCK_KEYS = frozenset({"time", "images_per_second"})  # the only metrics allowed to differ between runs
JRESNET = str(Path(sys.executable).with_name("jresnet"))


def overrides(out_dir: Path, *extra: str) -> list[str]:
    return [*SMALL, f"train.out_dir={out_dir}", *extra]


# --- a `jresnet train` subprocess -------------------------------------------------------------------


class TrainProcess:
    """``jresnet train`` with the given overrides, stdout and stderr captured to files beside the run."""

    def __init__(self, out_dir: Path, args: list[str], log_name: str) -> None:
        self.run_dir = out_dir / RUN_NAME
        self.stdout_path = out_dir / f"{log_name}.stdout"
        self.stderr_path = out_dir / f"{log_name}.stderr"
        out_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("JRESNET_DEBUG", None)  # the CLI's one-line errors, not tracebacks
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([JRESNET, "train", *args], stdout=out, stderr=err, env=env)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"exit {self.proc.returncode}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-4000:]}"

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"jresnet train did not finish in {timeout} s\n{self.describe()}") from None

    def poll_until(self, condition: Callable[[], Any], timeout: float = 600, interval: float = 0.002) -> Any:
        """Poll ``condition()`` until it returns something truthy, which is returned; fails if the
        process ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"jresnet train ended before the awaited moment\n{self.describe()}")
            time.sleep(interval)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError(f"the awaited moment did not come in {timeout} s\n{self.describe()}")

    def training_past(self, step: int) -> bool:
        """Whether this process has trained past ``step``: metrics.jsonl may still hold the steps of a killed
        run until this one has resumed and truncated it, which it has done once it reports its compile."""
        return "train step compiled in" in self.stdout and last_train_step(self.run_dir) >= step

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, no flush; what a power cut or the OOM killer does."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def last_train_step(run_dir: Path) -> int:
    """The last train step in metrics.jsonl (0 when there is none yet); a partial last line is skipped."""
    try:
        data = (run_dir / "metrics.jsonl").read_bytes()
    except FileNotFoundError:
        return 0
    for line in reversed(data.split(b"\n")):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            return int(record["step"])
    return 0


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the finished checkpoints in ``folder``: orbax renames a checkpoint to its bare step when done."""
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []


def tmp_checkpoints(folder: Path) -> list[str]:
    """Checkpoints orbax is writing (or was writing when the process died): ``<step>.orbax-checkpoint-tmp*``."""
    return sorted(tmp_folders(folder))


def tmp_folders(folder: Path) -> dict[str, int]:
    """`tmp_checkpoints` with the inode of each: orbax deletes and remakes a tmp folder of the same name when
    it writes that step again, so the name alone cannot tell a fresh write from a leftover of a killed run.
    (Not ctime: that changes with every file written into the folder.)"""
    found = {}
    for p in folder.iterdir() if folder.is_dir() else ():
        if "tmp" in p.name:
            try:
                found[p.name] = p.stat().st_ino
            except FileNotFoundError:  # renamed by orbax just now
                continue
    return found


# --- comparing runs ---------------------------------------------------------------------------------


def comparable(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric records without their wall-clock fields, which are the only ones two runs may differ in."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in records]


def checkpoint_arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every array of one orbax checkpoint folder (``.../checkpoints/<step>``), by its path in the state."""
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore((folder / "default").absolute())
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    """Equal bit for bit: same paths, dtypes, shapes and bytes (so NaNs and -0.0 count too)."""
    assert a.keys() == b.keys(), f"{what}: different arrays: {sorted(a.keys() ^ b.keys())[:5]}"
    differ = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
    assert not differ, f"{what}: {len(differ)} of {len(a)} arrays differ, e.g. {differ[:3]}"


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path: to show that nothing changed or vanished."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    """The lines jresnet itself wrote to stderr: logging from JAX/absl (``WARNING:...``, ``I0000 ...``) aside."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("WARNING:", "INFO:", "I0000", "W0000", "E0000"))]
