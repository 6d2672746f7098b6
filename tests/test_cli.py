"""jresnet.cli: the shapes, summary and check subcommands, exit statuses, and the console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jresnet import cli
from jresnet.cli import CPU_XLA_FLAGS, apply_cpu_xla_flags, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() edits XLA_FLAGS and OMP_WAIT_POLICY in os.environ; put them back after each test."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.delenv("JRESNET_XLA_FLAGS", raising=False)
    if "OMP_WAIT_POLICY" in os.environ:
        monkeypatch.setenv("OMP_WAIT_POLICY", os.environ["OMP_WAIT_POLICY"])
    else:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


def test_shapes_prints_the_arithmetic(capsys) -> None:
    assert main(["shapes", "--size", "64", "--kernel", "3", "--stride", "2", "--padding", "0"]) == 0
    out = capsys.readouterr().out
    assert "31" in out  # floor((64 - 3) / 2) + 1
    assert "floor" in out and "64" in out


def test_shapes_with_same_and_pair_padding(capsys) -> None:
    assert main(["shapes", "--size", "10", "--kernel", "6", "--padding", "same"]) == 0
    out = capsys.readouterr().out
    assert "P=(2, 3)" in out and "after" in out
    assert main(["shapes", "--size", "10", "--kernel", "3", "--padding", "1,2"]) == 0
    assert "= 11" in capsys.readouterr().out  # 10 + 1 + 2 - 2


def test_shapes_with_bad_geometry_exits_2(capsys) -> None:
    assert main(["shapes", "--size", "64", "--kernel", "0"]) == 2
    err = capsys.readouterr().err
    assert "kernel" in err and "error" in err
    assert main(["shapes", "--size", "2", "--kernel", "5"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_summary_resnet20(capsys) -> None:
    assert main(["summary", "resnet20", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert "269,722" in out
    assert "subsample+zero-pad (A)" in out
    assert out.splitlines()[0].startswith("resnet20")


def test_summary_overrides_follow_the_arithmetic(capsys) -> None:
    # fc for 100 classes instead of 10: 269,722 - (64*10 + 10) + (64*100 + 100)
    assert main(["summary", "resnet20", "--input", "3x32x32", "--num-classes", "100"]) == 0
    assert f"{269_722 - 650 + 6_500:,}" in capsys.readouterr().out
    # one input channel instead of three: the stem conv loses 16 * 2 * 3 * 3 weights
    assert main(["summary", "resnet20", "--input", "1x28x28"]) == 0
    assert f"{269_722 - 16 * 2 * 9:,}" in capsys.readouterr().out


def test_check_collapse_exits_1(capsys) -> None:
    assert main(["check", "resnet50", "--input", "3x8x8"]) == 1
    captured = capsys.readouterr()
    assert "collapsed" in captured.err
    assert "layer3.0.conv2" in captured.err
    assert captured.err.startswith("jresnet check:")
    assert captured.out == ""


def test_check_ok(capsys) -> None:
    assert main(["check", "resnet20", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok") and "269,722" in out


def test_unknown_model_exits_2_with_one_line(capsys) -> None:
    assert main(["summary", "nosuchnet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "nosuchnet" in lines[0] and "resnet50" in lines[0] and "resnet20" in lines[0]
    assert captured.out == ""


def test_bad_input_spec_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["summary", "resnet20", "--input", "3x32"])
    assert info.value.code == 2
    assert "C x H x W" in capsys.readouterr().err


def test_apply_cpu_xla_flags_sets_the_openmp_wait_policy_unless_the_user_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("JRESNET_XLA_FLAGS", "0")
    apply_cpu_xla_flags()
    assert "OMP_WAIT_POLICY" not in os.environ  # opted out
    monkeypatch.delenv("JRESNET_XLA_FLAGS")
    apply_cpu_xla_flags()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    apply_cpu_xla_flags()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins


def test_apply_cpu_xla_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    apply_cpu_xla_flags()
    flags = os.environ["XLA_FLAGS"]
    assert flags.startswith("--xla_dump_to=/tmp/x")
    assert all(f in flags for f in CPU_XLA_FLAGS)
    apply_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == flags  # idempotent
    name = CPU_XLA_FLAGS[0].split("=")[0]
    monkeypatch.setenv("XLA_FLAGS", f"{name}=mine")
    apply_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == f"{name}=mine"  # the user's choice wins
    monkeypatch.setenv("JRESNET_XLA_FLAGS", "0")
    monkeypatch.setenv("XLA_FLAGS", "")
    apply_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == ""


def test_parser_has_the_subcommands() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["check", "resnet18", "--input", "1×28×28"])
    assert args.input == (1, 28, 28) and args.model == "resnet18"
    args = parser.parse_args(["summary", "resnet18"])
    assert args.input == (3, 224, 224)


def test_console_entry_point_runs_shapes() -> None:
    script = REPO / ".venv" / "bin" / "jresnet"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jresnet.cli"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = ["shapes", "--size", "64", "--kernel", "3", "--stride", "2", "--padding", "0"]
    result = subprocess.run([*command, *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "31" in result.stdout
