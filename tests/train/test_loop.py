"""The training loop on real data: learning, resuming bit for bit, and the test split used once."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jresnet.train import loop
from jresnet.train.config import load_config
from jresnet.train.metrics import read_metrics

# A small but real run: resnet20 with one block per stage on the bundled digits.
SMALL = ["model.overrides={depths: [1, 1, 1]}", "train.batch_size=64", "train.progress=false",
         "train.epochs=null", "train.log_every=1"]


def small_config(tmp_path: Path, *extra: str):
    return load_config(None, [*SMALL, f"train.out_dir={tmp_path}", *extra])


def leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))]


@pytest.mark.slow
def test_training_on_digits_lowers_loss_and_beats_chance(tmp_path: Path) -> None:
    result = loop.train(small_config(tmp_path, "train.steps=60", "train.eval_every=20"), verbose=False)
    records = read_metrics(result.run_dir)
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    vals = [r["accuracy"] for r in records if r["kind"] == "val"]
    assert len(train_losses) == 60
    assert np.mean(train_losses[-10:]) < 0.5 * np.mean(train_losses[:5])
    assert vals[-1] > vals[0] and vals[-1] > 0.8  # ten classes: chance is 0.1
    tests = [r for r in records if r["kind"] == "test"]
    assert len(tests) == 1 and tests[0]["count"] == 359  # every test example, evaluated once
    assert result.test_accuracy == tests[0]["accuracy"]
    for name in ("config.yaml", "env.json", "metrics.csv", "curves.png", "result.json"):
        assert (result.run_dir / name).exists(), name


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train.steps=30", "train.checkpoint_every=7", "train.eval_every=10", "data.crop_padding=1"]
    straight = loop.train(small_config(tmp_path / "a", *args), verbose=False)

    # Interrupt the second run at step 17 (mid-epoch, between checkpoints): Ctrl-C saves and re-raises.
    original = loop.Progress.update

    def interrupt(self, step, record):
        original(self, step, record)
        if step == 17:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.train(small_config(tmp_path / "b", *args), verbose=False)
    monkeypatch.setattr(loop.Progress, "update", original)
    resumed = loop.train(small_config(tmp_path / "b", *args), verbose=False)

    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [r["step"] for r in read_metrics(resumed.run_dir) if r["kind"] == "train"]
    assert steps == list(range(1, 31))  # no duplicate and no missing step
    assert straight.test_accuracy == resumed.test_accuracy


def test_run_folder_of_another_model_is_not_resumed(tmp_path: Path) -> None:
    run = tmp_path / "digits_resnet20"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "resnet56", "dataset": "digits"}))
    with pytest.raises(ValueError, match="different run.*model: 'resnet56' there, 'resnet20' now"):
        loop.train(small_config(tmp_path, "train.steps=2"), verbose=False)


def test_model_too_small_for_the_images_is_one_clear_error(tmp_path: Path) -> None:
    # resnet50's total stride is 32; digits are 8×8.
    with pytest.raises(ValueError, match="resnet50 does not fit the 1×8×8 images of digits"):
        loop.train(load_config(None, ["model.name=resnet50", f"train.out_dir={tmp_path}"]), verbose=False)
