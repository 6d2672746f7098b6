"""Numerical and environment faults: NaN/Inf losses, unwritable folders, full disks, Ctrl-C mid-save.

Runs go through ``cli.main`` in-process, as `jresnet train` would run them, so each test sees the exit
status and the exact lines a user sees. Real signals and SIGKILL are in test_crash_resume.py.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import signal
import time
from collections import namedtuple
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jresnet import cli
from jresnet.train import loop
from jresnet.train.checkpoint import Checkpoints
from jresnet.train.config import load_config
from jresnet.train.metrics import read_metrics

from .runs import (
    PRISTINE_ARGS,
    RUN_NAME,
    assert_same_arrays,
    checkpoint_arrays,
    complete_checkpoints,
    error_lines,
    file_digests,
    overrides,
    tmp_checkpoints,
)

ARGS = list(PRISTINE_ARGS)
pytestmark = pytest.mark.usefixtures("cli_env")


def copy_run(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / RUN_NAME)
    return tmp_path / RUN_NAME


def train_cli(out_dir: Path, *extra: str) -> int:
    return cli.main(["train", *overrides(out_dir, *ARGS, *extra)])


def one_line(err: str) -> str:
    lines = error_lines(err)
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def never(what: str):
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran, but the fault should have been reported before it")
    return fail


# --- numerical faults -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_good_checkpoints(
        pristine_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Resume the good 6-step run for 6 more steps at an absurd learning rate: step 7's update explodes.
    run = copy_run(pristine_run, tmp_path)
    good = {step: file_digests(run / "checkpoints" / step) for step in ("2", "4", "6")}
    assert train_cli(tmp_path, "train.steps=12", "optim.lr=1e30") == 3
    line = one_line(capsys.readouterr().err)
    stopped = re.fullmatch(r"jresnet train: stopped: the loss or the gradients became NaN/Inf at step (\d+) "
                           r"\(loss=\S+, grad_norm=\S+\)\. The last good checkpoint is kept in (\S+); lower "
                           r"optim\.lr, set optim\.clip_norm, or set train\.nan_policy=skip\.", line)
    assert stopped, line
    bad_step = int(stopped.group(1))
    assert bad_step > 6 and stopped.group(2) == str(run / "checkpoints")
    for step, digests in good.items():  # kept, byte for byte
        assert file_digests(run / "checkpoints" / step) == digests
    saved = complete_checkpoints(run / "checkpoints")
    assert max(saved) < bad_step  # nothing from the bad step on was saved
    for step in saved:
        Checkpoints(run, 3).last.verify(step)
        assert all(np.isfinite(a).all() for a in checkpoint_arrays(run / "checkpoints" / str(step)).values())
    logged = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert [r["step"] for r in logged] == list(range(1, bad_step))  # the bad step is reported, not logged
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in logged)


@pytest.mark.slow
def test_nan_policy_skip_skips_and_counts_the_bad_steps(tmp_path: Path) -> None:
    result = loop.train(load_config(None, overrides(tmp_path, *ARGS, "optim.lr=1e30", "train.nan_policy=skip")),
                        verbose=False)
    logged = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    bad = [r["step"] for r in logged if not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]))]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]  # the run went on to the end
    assert result.skipped_steps == len(bad) >= 1, (result.skipped_steps, bad)
    assert '"skipped_steps": ' + str(len(bad)) in (result.run_dir / "result.json").read_text()
    # Skipped updates left the weights as they were: every saved state is finite.
    assert all(np.isfinite(a).all() for a in checkpoint_arrays(result.run_dir / "checkpoints" / "6").values())


# --- an output folder that cannot be written --------------------------------------------------------


def test_an_output_folder_under_a_regular_file_is_reported_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Works as root too, which chmod does not stop: nobody can make a folder inside a file.
    in_the_way = tmp_path / "results.txt"
    in_the_way.write_text("a file, where the run wants a folder")
    monkeypatch.setattr(loop, "load_splits", never("loading the data"))
    assert cli.main(["train", *overrides(in_the_way / "runs", *ARGS)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"jresnet train: error: cannot write to the run folder {in_the_way / 'runs' / RUN_NAME}: "
        f"{in_the_way} is a file, not a folder")
    assert in_the_way.read_text() == "a file, where the run wants a folder"


def test_a_read_only_output_folder_is_reported_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        try:
            (parent / "probe").write_text("x")
        except PermissionError:
            pass
        else:
            pytest.skip("chmod does not stop this user (root); the file-in-the-way test covers this case")
        monkeypatch.setattr(loop, "load_splits", never("loading the data"))
        assert cli.main(["train", *overrides(parent, *ARGS)]) == 2
        assert one_line(capsys.readouterr().err) == (
            f"jresnet train: error: cannot write to the run folder {parent / RUN_NAME}: Permission denied")
    finally:
        parent.chmod(0o700)


# --- a full disk ------------------------------------------------------------------------------------

DiskUsage = namedtuple("DiskUsage", "total used free")


def test_too_little_disk_space_is_reported_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**40, 2**40 - (10 << 20), 10 << 20))
    monkeypatch.setattr(loop, "make_train_step", never("building the train step"))
    assert cli.main(["train", *overrides(tmp_path, *ARGS)]) == 2
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(rf"jresnet train: error: not enough free disk space in {re.escape(str(tmp_path / RUN_NAME))}: "
                        r"the run's checkpoints need about \d+ MiB \(3 kept \+ best \+ one in flight\), 10 MiB free\. "
                        r"Free space, lower train\.keep_checkpoints, or set train\.out_dir elsewhere\.", line), line
    assert not (tmp_path / RUN_NAME / "checkpoints").exists() and not (tmp_path / RUN_NAME / "metrics.jsonl").exists()


def test_disk_space_check_counts_kept_best_and_in_flight_checkpoints(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"w": jnp.zeros((1 << 20,), jnp.float32)}  # 4 MiB
    need = 4 * (2 + 2) + 64  # keep=2, plus best, plus one being written, plus 64 MiB for logs (MiB)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**40, 0, need << 20))
    loop._check_disk_space(tmp_path, state, keep=2)  # exactly enough
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**40, 0, (need << 20) - 1))
    with pytest.raises(OSError, match=r"need about 80 MiB \(2 kept \+ best \+ one in flight\), 80 MiB free"):
        loop._check_disk_space(tmp_path, state, keep=2)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["while starting the save", "while writing in the background"])
def test_a_disk_that_fills_mid_run_leaves_the_earlier_checkpoints_whole(
        pristine_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        when: str) -> None:
    """The third regular checkpoint (step 6) hits ENOSPC after writing part of its tmp folder."""
    full = {"on": True, "saves": 0, "failed": False}
    original_save, original_wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished

    def save(self, step, *args, **kwargs):
        if full["on"] and Path(self.directory).name == "checkpoints":
            full["saves"] += 1
            if full["saves"] == 3:
                partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp"
                (partial / "default").mkdir(parents=True)
                (partial / "default" / "half-written").write_bytes(b"\0" * 1000)
                if when == "while starting the save":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                full["failed"] = True  # the background write fails; orbax reports it when waited for
                return True
        return original_save(self, step, *args, **kwargs)

    def wait_until_finished(self):
        if full["failed"] and Path(self.directory).name == "checkpoints":
            full["failed"] = False
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original_wait(self)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait_until_finished)
    run = tmp_path / RUN_NAME
    assert train_cli(tmp_path) == 2
    line = one_line(capsys.readouterr().err)
    folder = (run / "checkpoints").absolute()
    assert line == (f"jresnet train: error: [Errno 28] could not write checkpoint {folder / '6'}: No space left on "
                    f"device. The checkpoints before it are intact; free space (or fix {folder}) and run the same "
                    "command again to resume"), line
    assert complete_checkpoints(run / "checkpoints") == [2, 4]
    assert tmp_checkpoints(run / "checkpoints") == ["6.orbax-checkpoint-tmp"]
    for step in (2, 4):  # whole: they verify against their manifests and restore to the original arrays
        Checkpoints(run, 3).last.verify(step)
        assert_same_arrays(checkpoint_arrays(run / "checkpoints" / str(step)),
                           checkpoint_arrays(pristine_run / "checkpoints" / str(step)), f"checkpoint {step}")

    full["on"] = False  # space was freed: the same command resumes from step 4 and finishes
    assert train_cli(tmp_path) == 0
    assert f"resuming {run} from step 4" in capsys.readouterr().out
    assert complete_checkpoints(run / "checkpoints") == [2, 4, 6]
    assert_same_arrays(checkpoint_arrays(run / "checkpoints" / "6"),
                       checkpoint_arrays(pristine_run / "checkpoints" / "6"), "final checkpoint")
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


# --- Ctrl-C while a checkpoint is being written -----------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_write_stops_cleanly_and_resumes(pristine_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A real SIGINT, delivered while orbax is inside its save of step 2: the save completes, the run
    stops at that step boundary with status 130 and one line, and the next run resumes from step 2."""
    original_save = ocp.CheckpointManager.save
    sent = []

    def save(self, step, *args, **kwargs):
        saved = original_save(self, step, *args, **kwargs)
        if not sent and Path(self.directory).name == "checkpoints":
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside the save
        return saved

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    run = tmp_path / RUN_NAME
    assert train_cli(tmp_path) == 130
    assert sent == [2]
    assert one_line(capsys.readouterr().err) == (
        f"jresnet train: interrupted at step 2: saved a checkpoint in {run / 'checkpoints'}; run the same command "
        "again to resume")
    assert complete_checkpoints(run / "checkpoints") == [2]
    Checkpoints(run, 3).last.verify(2)

    monkeypatch.setattr(ocp.CheckpointManager, "save", original_save)
    assert train_cli(tmp_path) == 0
    assert f"resuming {run} from step 2" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert_same_arrays(checkpoint_arrays(run / "checkpoints" / "6"),
                       checkpoint_arrays(pristine_run / "checkpoints" / "6"), "final checkpoint")
