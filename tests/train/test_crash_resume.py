"""Crash and resume: `jresnet train` killed at random steps (and once mid-checkpoint) ends bit for bit where
an uninterrupted run ends.

One run is killed with SIGKILL three times (at a random step, while orbax is writing a checkpoint, at
another random step), then interrupted with SIGINT (Ctrl-C), then run to the end with the same command.
Meanwhile an uninterrupted run of the same command trains in another folder. Both must end with the
same parameters, optimiser state and metrics (every value but wall-clock ones), and the crashed run's
metrics must hold every step exactly once.

How the checkpoint-write kill is aimed: orbax writes each checkpoint into
``checkpoints/<step>.orbax-checkpoint-tmp`` and renames it to ``checkpoints/<step>`` when done. On this
small model that folder lives 0.2–0.6 s (measured), while we poll the folder every 2 ms and SIGKILL the
moment a new one appears (a leftover of an earlier kill does not count: folders are told apart by inode,
since orbax remakes a tmp folder of the same name). The test then checks that very folder is
still there after the process died, which proves the kill landed mid-write; if a write ever finished
first, it tries again at the next checkpoint.

The kill steps are random; set JRESNET_CRASH_SEED to replay a failure (the seed is in every message).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
from pathlib import Path

import pytest

from jresnet.train.metrics import read_metrics

from .runs import (
    TrainProcess,
    assert_same_arrays,
    checkpoint_arrays,
    comparable,
    complete_checkpoints,
    error_lines,
    last_train_step,
    overrides,
    tmp_folders,
)

STEPS = 48
# Checkpoints every 4 steps and validation every 10, so kills land between checkpoints, on them, and
# between a validation's best-checkpoint save and the next regular one. Crops make the data order and the
# augmentation RNG matter: both must resume exactly.
ARGS = [f"train.steps={STEPS}", "train.checkpoint_every=4", "train.eval_every=10", "data.crop_padding=1"]


def _resumed_from(proc: TrainProcess) -> int:
    found = re.search(r"resuming \S+ from step (\d+)", proc.stdout)
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_killed_and_interrupted_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    seed = int(os.environ.get("JRESNET_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    tag = f"[JRESNET_CRASH_SEED={seed}]"
    reference = TrainProcess(tmp_path / "reference", overrides(tmp_path / "reference", *ARGS), "reference")
    out = tmp_path / "crashed"
    args = overrides(out, *ARGS)
    ckpt_dir = out / "digits_resnet20" / "checkpoints"
    history: list[str] = []  # what happened to each process, for the failure messages

    def start(n: int) -> TrainProcess:
        return TrainProcess(out, args, f"run{n}")

    def check_resume(proc: TrainProcess, expected: int) -> None:
        got = _resumed_from(proc)
        assert got == expected, f"{tag} {history}: resumed from step {got}, expected {expected}\n{proc.describe()}"

    # 1. SIGKILL at a random step, after the first checkpoint has had time to finish.
    target = rng.randint(7, 13)
    proc = start(1)
    proc.poll_until(lambda: proc.training_past(target))
    proc.kill()
    expected = max(complete_checkpoints(ckpt_dir), default=0)
    history.append(f"run1 SIGKILL at step {last_train_step(proc.run_dir)} (aimed at {target}); checkpoints "
                   f"{complete_checkpoints(ckpt_dir)}")

    # 2. SIGKILL while orbax writes a checkpoint (retried at the next checkpoint if the write won the race).
    hit_write, n = False, 2
    while not hit_write:
        assert n <= 4, f"{tag} {history}: never caught a checkpoint mid-write"
        leftovers = tmp_folders(ckpt_dir).items()  # from an earlier kill: not a write of this process
        proc = start(n)
        writing = proc.poll_until(lambda old=leftovers: dict(tmp_folders(ckpt_dir).items() - old))
        proc.kill()
        check_resume(proc, expected)
        left = tmp_folders(ckpt_dir)
        hit_write = any(left.get(name) == inode for name, inode in writing.items())  # still there: mid-write
        writing, left = sorted(writing), sorted(left)
        history.append(f"run{n} SIGKILL while {writing} was being written at step {last_train_step(proc.run_dir)}; "
                       f"tmp folders left: {left}; checkpoints {complete_checkpoints(ckpt_dir)}")
        expected = max(complete_checkpoints(ckpt_dir), default=0)
        n += 1
    assert hit_write, f"{tag} {history}"

    # 3. SIGKILL at another random step.
    target = rng.randint(expected + 5, expected + 12)
    proc = start(n)
    proc.poll_until(lambda: proc.training_past(target))
    proc.kill()
    check_resume(proc, expected)
    expected = max(complete_checkpoints(ckpt_dir), default=0)
    history.append(f"run{n} SIGKILL at step {last_train_step(proc.run_dir)} (aimed at {target}); checkpoints "
                   f"{complete_checkpoints(ckpt_dir)}")
    n += 1

    # 4. Ctrl-C (SIGINT) at a random step: saves a checkpoint there and exits with status 130, in one line.
    target = rng.randint(expected + 2, STEPS - 6)
    proc = start(n)
    proc.poll_until(lambda: proc.training_past(target))
    proc.signal(signal.SIGINT)
    status = proc.wait()
    check_resume(proc, expected)
    history.append(f"run{n} SIGINT at step {target}: exit {status}")
    lines = error_lines(proc.stderr)
    assert status == 130, f"{tag} {history}\n{proc.describe()}"
    assert "Traceback" not in proc.stderr and len(lines) == 1, f"{tag} {history}\n{proc.describe()}"
    stopped = re.fullmatch(r"jresnet train: interrupted at step (\d+): saved a checkpoint in (\S+); run the same "
                           r"command again to resume", lines[0])
    assert stopped, f"{tag} {history}: unexpected Ctrl-C message {lines[0]!r}"
    expected = int(stopped.group(1))
    history.append(f"run{n} stopped by the SIGINT at step {expected}")
    assert expected >= target and stopped.group(2) == str(ckpt_dir)
    assert max(complete_checkpoints(ckpt_dir)) == expected, f"{tag} {history}: {complete_checkpoints(ckpt_dir)}"
    assert last_train_step(proc.run_dir) == expected  # the step's metrics were logged before it stopped
    n += 1

    # 5. The same command again, to the end.
    proc = start(n)
    assert proc.wait() == 0, f"{tag} {history}\n{proc.describe()}"
    check_resume(proc, expected)
    assert reference.wait() == 0, reference.describe()

    # Same parameters, BatchNorm statistics, optimiser state, RNG and step counter, bit for bit.
    run, ref = out / "digits_resnet20", tmp_path / "reference" / "digits_resnet20"
    assert complete_checkpoints(run / "checkpoints")[-1] == complete_checkpoints(ref / "checkpoints")[-1] == STEPS
    assert_same_arrays(checkpoint_arrays(run / "checkpoints" / str(STEPS)),
                       checkpoint_arrays(ref / "checkpoints" / str(STEPS)), f"{tag} {history}: final state")
    assert complete_checkpoints(run / "best") == complete_checkpoints(ref / "best")
    best = complete_checkpoints(ref / "best")[-1]
    assert_same_arrays(checkpoint_arrays(run / "best" / str(best)), checkpoint_arrays(ref / "best" / str(best)),
                       f"{tag} {history}: best checkpoint")

    # Same metrics, every step once: loss, accuracy, lr, grad norm, validation and test values.
    records, ref_records = read_metrics(run), read_metrics(ref)
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, STEPS + 1)), f"{tag} {history}: train steps logged {train_steps}"
    assert [r["step"] for r in records if r["kind"] == "val"] == [10, 20, 30, 40, STEPS]
    assert comparable(records) == comparable(ref_records), f"{tag} {history}: metrics differ"
    with (run / "metrics.csv").open() as f:  # the CSV mirror too: every record once, in order
        assert [(int(r["step"]), r["kind"]) for r in csv.DictReader(f)] == [(r["step"], r["kind"]) for r in records]
    result, ref_result = (json.loads((d / "result.json").read_text()) for d in (run, ref))
    assert (result["test_accuracy"], result["test_loss"], result["best_val_accuracy"]) == \
        (ref_result["test_accuracy"], ref_result["test_loss"], ref_result["best_val_accuracy"])
    print(f"crash chain {tag}:", *history, f"run{n} finished from step {expected}", sep="\n  ")
