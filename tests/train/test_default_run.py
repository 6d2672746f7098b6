"""README command 1: `jresnet train` with no arguments trains the default on the bundled digits.

This is the acceptance test of the main job: it runs the real console script, exactly as `make run`
does, and checks what it prints and writes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def jresnet_command() -> list[str]:
    script = Path(sys.executable).with_name("jresnet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jresnet.cli"]


@pytest.mark.slow
def test_default_run_reaches_98_percent_on_digits(tmp_path: Path) -> None:
    proc = subprocess.run([*jresnet_command(), "train", "train.progress=false"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    wall = float(re.search(r"training wall time ([\d.]+) s", out).group(1))
    print(f"default run: test accuracy {accuracy:.4f}, training wall time {wall:.1f} s")
    result = json.loads((tmp_path / "runs" / "digits_resnet20" / "result.json").read_text())
    assert result["test_accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert accuracy >= 0.98
    # The console script preloads jemalloc where it is installed (CI installs it): the header and env.json say so.
    malloc = re.search(r"host malloc (\w+)", out).group(1)
    env = json.loads((tmp_path / "runs" / "digits_resnet20" / "env.json").read_text())
    assert env["host_malloc"] == malloc
    if os.environ.get("JRESNET_TEST_REQUIRE_MALLOC"):
        assert malloc == os.environ["JRESNET_TEST_REQUIRE_MALLOC"], out[:2000]
