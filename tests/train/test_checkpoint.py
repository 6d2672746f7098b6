"""Damaged checkpoints and run folders that belong to another run.

One small real run (6 steps, a checkpoint every 2) is trained once per session; each test damages a copy of
its folder and runs `jresnet train` on it in-process (``cli.main``), as a user would, reading its exit
status and its stderr.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jresnet import cli
from jresnet.train.checkpoint import CheckpointMismatchError, Checkpoints
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
)

ARGS = list(PRISTINE_ARGS)
pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def pristine(pristine_run: Path) -> Path:
    return pristine_run


def copy_run(pristine: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the pristine run: (out_dir, run folder)."""
    shutil.copytree(pristine, tmp_path / RUN_NAME)
    return tmp_path, tmp_path / RUN_NAME


def train_cli(out_dir: Path, *extra: str) -> int:
    return cli.main(["train", *overrides(out_dir, *ARGS, *extra)])


def largest_file(folder: Path) -> Path:
    """The checkpoint's biggest file: an OCDBT data file holding the arrays."""
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "flipped bytes", "truncated, never sealed"])
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(pristine: Path, tmp_path: Path, damage: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out, run = copy_run(pristine, tmp_path)
    newest = run / "checkpoints" / "6"
    if damage.endswith("never sealed"):  # killed after orbax finished but before the manifest was written:
        (run / "checksums" / "checkpoints" / "6.json").unlink()  # then orbax's own reading must notice
    (truncate if damage.startswith("truncated") else flip_bytes)(largest_file(newest))
    damaged_files = file_digests(newest)
    older = {step: file_digests(run / "checkpoints" / step) for step in ("2", "4")}
    older_manifests = {step: (run / "checksums" / "checkpoints" / f"{step}.json").read_bytes() for step in ("2", "4")}

    assert train_cli(out) == 0
    captured = capsys.readouterr()

    # One line, naming the folder; no stack trace.
    lines = error_lines(captured.err)
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    assert re.match(rf"jresnet: checkpoint {re.escape(str(newest.absolute()))} is damaged and was skipped \(.+\); "
                    r"moved it to \S+; trying the one before$", lines[0]), lines[0]
    assert f"resuming {run} from step 4" in captured.out

    # The valid checkpoints are untouched; the damaged one is kept, as it was, under damaged/.
    for step in ("2", "4"):
        assert file_digests(run / "checkpoints" / step) == older[step]
        assert (run / "checksums" / "checkpoints" / f"{step}.json").read_bytes() == older_manifests[step]
    assert file_digests(run / "damaged" / "checkpoints-6") == damaged_files
    assert str(run / "damaged" / "checkpoints-6") in lines[0]

    # Steps 5 and 6 were trained again, logged once, and step 6 saved anew, equal to the original run's.
    assert complete_checkpoints(run / "checkpoints") == [2, 4, 6]
    assert_same_arrays(checkpoint_arrays(newest), checkpoint_arrays(pristine / "checkpoints" / "6"), "re-saved step 6")
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    Checkpoints(run, 3).last.verify(6)  # sealed with a fresh manifest


@pytest.mark.slow
def test_eval_skips_a_damaged_checkpoint_without_moving_it(pristine: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, run = copy_run(pristine, tmp_path)
    flip_bytes(largest_file(run / "checkpoints" / "6"))
    before = file_digests(run)
    assert cli.main(["eval", str(run), "--which", "last"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    newest = run / "checkpoints" / "6"
    assert [line for line in error_lines(captured.err) if "damaged" in line] == [
        f"jresnet: checkpoint {newest.absolute()} is damaged and was skipped (CheckpointCorruptError: 1 file(s) "
        f"differ from the manifest written at save time, e.g. {largest_file(newest).relative_to(newest)}); "
        "trying the one before"]
    assert "last checkpoint (step 4)" in captured.out
    assert file_digests(run) == before  # eval reads; it moves and writes nothing


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["model.overrides={depths: [2, 1, 1]}"],
         ["model_overrides: {'depths': [1, 1, 1]} there, {'depths': [2, 1, 1]} now"]),
        (["npz"], ["dataset: 'digits' there, 'npz' now", "train_examples"]),
    ],
    ids=["other model", "other dataset"],
)
def test_folder_of_another_model_or_dataset_is_refused_in_one_line(pristine: Path, tmp_path: Path, change: list[str],
                                                                   words: list[str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, run = copy_run(pristine, tmp_path)
    if change == ["npz"]:  # 1×8×8 images and 10 classes like digits, so only the data differs
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "other.npz", x_train=rng.integers(0, 256, (300, 8, 8), dtype=np.uint8),
                 y_train=np.arange(300) % 10)
        change = ["data.name=npz", f"data.root={tmp_path / 'other.npz'}"]
    before = file_digests(run)
    assert train_cli(out, *change) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"jresnet train: error: run folder {run} was made by a different run")
    for word in [*words, "name=...", "train.resume=fresh"]:
        assert word in lines[0], (word, lines[0])
    assert file_digests(run) == before


@pytest.mark.slow
def test_resume_fresh_moves_the_old_folder_aside_and_deletes_nothing(pristine: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, run = copy_run(pristine, tmp_path)
    before = file_digests(run)
    # The same model and data, so the step compiles from the cache; what is under test is the move.
    assert train_cli(out, "train.resume=fresh") == 0
    moved = [p for p in out.iterdir() if p.name.startswith(f"{RUN_NAME}.old-")]
    assert len(moved) == 1 and f"moved the previous run folder aside to {moved[0]}" in capsys.readouterr().out
    assert file_digests(moved[0]) == before  # every file, byte for byte
    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # from step 0 again
    assert complete_checkpoints(run / "checkpoints") == [2, 4, 6]


@pytest.mark.slow
def test_checkpoints_of_another_optimiser_are_refused_not_called_damaged(pristine: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """adamw keeps two moments where SGD keeps one trace. The files are intact, so this is not damage:
    skipping them would restart from step 0 and wipe the run's metrics, and orbax would then refuse to
    save any step up to the old newest one."""
    out, run = copy_run(pristine, tmp_path)
    before = file_digests(run)
    assert train_cli(out, "optim.name=adamw") == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err and "damaged" not in err, err
    assert lines[0].startswith(f"jresnet train: error: checkpoint {(run / 'checkpoints' / '6').absolute()} holds a "
                               "different training state than this run builds (")
    for word in ("opt_state", "name=...", "train.resume=fresh"):
        assert word in lines[0]
    assert file_digests(run) == before  # not even config.yaml or metrics.jsonl changed


@pytest.mark.slow
def test_mismatch_is_found_by_shape_too(pristine: Path) -> None:
    """Same array names, other shapes (as a wider model would have): named with both shapes."""
    ckpts = Checkpoints(pristine, 3)
    like = ckpts.last.orbax.restore(6, args=ocp.args.StandardRestore())
    ckpts.last.check_layout(6, like)  # its own structure fits
    wider = jax.tree.map(lambda x: jnp.zeros((*x.shape[:-1], x.shape[-1] + 1), x.dtype) if x.ndim else x, like)
    with pytest.raises(CheckpointMismatchError,
                       match=r"\.running_mean\.value is \(16,\) float32 there, \(17,\) float32 now"):
        ckpts.last.check_layout(6, wider)
    ckpts.close()


def test_killed_before_sealing_leaves_best_json_consistent(tmp_path: Path) -> None:
    """best.json must not name a best checkpoint that is not on disk: it is written when that checkpoint is
    sealed, and a regular checkpoint starts only after the best one before it is sealed."""
    state = {"w": jnp.arange(4.0)}
    ckpts = Checkpoints(tmp_path, 3)
    assert ckpts.save_if_best(10, state, 0.5)
    assert not (tmp_path / "best.json").exists()  # in flight: not claimed yet
    ckpts.save(10, state)  # seals the best checkpoint first
    assert (tmp_path / "best.json").exists() and complete_checkpoints(tmp_path / "best") == [10]
    ckpts.close()
    # A resumed run redoing step 10 with the same accuracy keeps that checkpoint and its manifest.
    again = Checkpoints(tmp_path, 3)
    assert again.best_accuracy == 0.5 and not again.save_if_best(10, state, 0.5)
    again.best.verify(10)
    again.close()


def test_a_completed_but_unsealed_checkpoint_gets_its_manifest_when_restored(tmp_path: Path) -> None:
    state = {"w": jnp.arange(4.0)}
    ckpts = Checkpoints(tmp_path, 3)
    ckpts.save(2, state)
    ckpts.close()
    manifest = tmp_path / "checksums" / "checkpoints" / "2.json"
    manifest.unlink()  # as if killed between orbax's rename and the manifest
    restored = Checkpoints(tmp_path, 3)
    _, step = restored.restore_latest(state)  # reading only (jresnet eval): nothing is written
    assert step == 2 and not manifest.exists()
    _, step = restored.restore_latest(state, resuming=True)
    assert step == 2 and manifest.exists()
    restored.close()


def test_best_breaks_accuracy_ties_by_lower_validation_loss(tmp_path: Path) -> None:
    """A plateau of equal accuracies keeps moving the best checkpoint to the lower-loss model."""
    state = {"w": jnp.arange(4.0)}
    ckpts = Checkpoints(tmp_path, 3)
    assert ckpts.save_if_best(10, state, 0.9, 0.50)
    assert not ckpts.save_if_best(20, state, 0.8, 0.10)  # lower accuracy loses whatever its loss
    assert ckpts.save_if_best(30, state, 0.9, 0.40)  # same accuracy, lower loss: the new best
    assert not ckpts.save_if_best(40, state, 0.9, 0.40)  # a full tie keeps the earlier one
    assert not ckpts.save_if_best(50, state, 0.9, 0.45)
    assert ckpts.save_if_best(60, state, 0.95, 9.0)  # higher accuracy wins whatever its loss
    ckpts.save(60, state)
    ckpts.close()
    record = json.loads((tmp_path / "best.json").read_text())
    assert record == {"step": 60, "val_accuracy": 0.95, "val_loss": 9.0}
    again = Checkpoints(tmp_path, 3)  # a resumed run knows both
    assert (again.best_accuracy, again.best_loss) == (0.95, 9.0)
    assert again.save_if_best(70, state, 0.95, 8.0) and not again.save_if_best(80, state, 0.95, 8.5)
    again.close()
