"""Data parallelism: 8 simulated CPU devices give the same loss curve as 1 device.

Each device count needs its own process, since XLA reads the device count when it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SCRIPT = """
import json, sys
import jax
from jresnet.train import loop
from jresnet.train.config import load_config
from jresnet.train.metrics import read_metrics
cfg = load_config(None, sys.argv[2:])
result = loop.train(cfg, verbose=False)
losses = [r["loss"] for r in read_metrics(result.run_dir) if r["kind"] == "train"]
vals = [r["accuracy"] for r in read_metrics(result.run_dir) if r["kind"] == "val"]
print(json.dumps({"devices": jax.device_count(), "losses": losses, "val": vals}))
"""


def run_with_devices(n: int, out_dir: Path) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    args = ["model.overrides={depths: [1, 1, 1]}", "train.batch_size=64", "train.steps=12",
            "train.eval_every=6", "train.log_every=1", "train.progress=false", "train.epochs=null",
            f"train.out_dir={out_dir}"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "x", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path: Path) -> None:
    one = run_with_devices(1, tmp_path / "one")
    eight = run_with_devices(8, tmp_path / "eight")
    assert one["devices"] == 1 and eight["devices"] == 8
    assert len(one["losses"]) == len(eight["losses"]) == 12
    # BatchNorm sees the global batch on both, so only the order of float reductions differs.
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(eight["val"], one["val"], atol=1 / 144 + 1e-9)  # at most one example flips


def test_batch_must_split_over_devices() -> None:
    from jresnet.train.parallel import DataParallel

    DataParallel().check_batch_size(64)  # one device divides every batch
    three_devices = SimpleNamespace(num_devices=3)  # the rule itself, without 3 real devices
    with pytest.raises(ValueError, match="batch_size=64 must be divisible by the 3 devices"):
        DataParallel.check_batch_size(three_devices, 64)
