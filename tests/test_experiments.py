"""The benchmark scripts in experiments/: the references build the same models as jresnet, and the GPU
script runs end to end (its QUICK mode, on whatever backend this machine has)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jresnet.registry import create_model

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import bench as harness  # noqa: E402
import flax_nhwc_reference  # noqa: E402


@pytest.mark.parametrize("model", flax_nhwc_reference.MODELS)
def test_flax_reference_has_jresnets_parameter_count(model: str) -> None:
    assert flax_nhwc_reference.num_params(flax_nhwc_reference.create(model)) == create_model(model).num_params()


def test_harness_uses_each_models_own_input_unless_given() -> None:
    assert harness.model_input("resnet50", None) == (3, 224, 224)
    assert harness.model_input("resnet20", None) == (3, 32, 32)
    assert harness.model_input("resnet50", (1, 8, 8)) == (1, 8, 8)


def test_workers_share_a_gpu_unless_the_caller_set_preallocation(monkeypatch: pytest.MonkeyPatch) -> None:
    args = harness.argparse.Namespace(batch=2, matmul_n=64, xla_flags="", variants=["jresnet", "flax-ref"],
                                      baseline=None, torch_python=None, torch_cudnn_benchmark=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    workers = harness.build_workers("resnet20", "fp32", (3, 32, 32), args, steps=1)
    assert [w.env["XLA_PYTHON_CLIENT_PREALLOCATE"] for w in workers] == ["false", "false"]
    assert "--input" in workers[0].cmd and "3x32x32" in workers[0].cmd
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    workers = harness.build_workers("resnet20", "fp32", (3, 32, 32), args, steps=1)
    assert {w.env["XLA_PYTHON_CLIENT_PREALLOCATE"] for w in workers} == {"true"}


@pytest.mark.slow
def test_gpu_bench_script_quick_mode_measures_jresnet_and_flax(tmp_path: Path) -> None:
    env = {**os.environ, "QUICK": "1", "PYTHON": sys.executable, "TORCH_PYTHON": sys.executable}
    run = subprocess.run(["bash", str(EXPERIMENTS / "gpu_bench.sh"), str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=600)
    logs = "".join(f"\n--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(tmp_path.glob("*.log")))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs
    assert "jax devices:" in (tmp_path / "environment.txt").read_text()
    record = json.loads((tmp_path / "quick.json").read_text())
    (group,) = record["groups"]
    assert group["started_together"] is True
    rows = {r["variant"]: r for r in group["rows"]}
    for variant in ("jresnet", "flax-ref"):
        assert rows[variant]["error"] is None, (rows[variant]["error"], logs)
        assert rows[variant]["train_img_s"] > 0 and rows[variant]["infer_img_s"] > 0
    # the torch row reports either its timing (torch importable here) or why its worker failed
    torch_row = rows["torch-eager_cl"]
    if importlib.util.find_spec("torch") is None:
        assert torch_row["error"], torch_row
    else:
        assert torch_row["error"] is None and torch_row["train_img_s"] > 0


def test_kernel_count_counts_the_work_in_the_entry_computation() -> None:
    import jax
    import jax.numpy as jnp
    import step_overhead

    x = jnp.ones((64, 64))
    one = jax.jit(lambda a: a * 2.0).lower(x).compile().as_text()
    # a matmul and an elementwise op on a different input cannot share a kernel
    two = jax.jit(lambda a, b: (a @ a, jnp.sin(b) * 3.0)).lower(x, x + 1).compile().as_text()
    assert step_overhead.kernel_count(one) >= 1
    assert step_overhead.kernel_count(two) > step_overhead.kernel_count(one)
    # parameters, tuples and bitcasts launch nothing; a copy does
    packing = ("HloModule m\n\nENTRY %main (p: f32[4]) -> (f32[4], f32[2,2]) {\n"
               "  %p = f32[4]{0} parameter(0)\n  %b = f32[2,2]{1,0} bitcast(%p)\n"
               "  ROOT %t = (f32[4]{0}, f32[2,2]{1,0}) tuple(%p, %b)\n}\n")
    assert step_overhead.kernel_count(packing) == 0
    assert step_overhead.kernel_count(jax.jit(lambda a: a).lower(x).compile().as_text()) == 1


@pytest.mark.slow
def test_norm_core_ab_pairs_the_two_cores_on_the_same_step(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from jresnet import native

    if not native.available():
        pytest.skip(native.unavailable_reason())
    import norm_core_ab

    assert norm_core_ab.norm_shapes("resnet20", 4) == [(4, 32, 32, 16), (4, 16, 16, 32), (4, 8, 8, 64)]
    assert norm_core_ab.main(["--model", "resnet20", "--batch", "4", "--repeats", "1", "--steps", "1",
                              "--shapes"]) == 0
    out = capsys.readouterr().out
    found = re.findall(r"^(xla|auto): loss ([\d.]+), grad norm ([\d.]+), oneDNN norm calls (\d+)$", out, re.M)
    losses = {core: (float(loss), float(norm)) for core, loss, norm, _ in found}
    calls = {core: int(n) for core, _, _, n in found}
    assert set(losses) == {"xla", "auto"}, out
    # resnet20's 13 norms of <= 32 channels (the stem, stages 1 and 2) run on oneDNN, forward and backward.
    assert calls == {"xla": 0, "auto": 26}, out
    # One step from the same state: the same loss and gradient norm, to float rounding.
    np.testing.assert_allclose(losses["auto"], losses["xla"], rtol=1e-4)
    assert re.search(r"auto speed, paired over 1 repeats: \d+\.\d{3}", out), out
    assert len(re.findall(r"^\| 4 (32 32 16|16 16 32|8 8 64) \| (True|False) \|", out, re.M)) == 6, out


def test_torch_workers_get_cudnn_benchmark_only_when_asked() -> None:
    args = harness.argparse.Namespace(batch=2, matmul_n=64, xla_flags="", variants=["torch-eager_cl"],
                                      baseline=None, torch_python="python3", torch_cudnn_benchmark=False)
    (plain,) = harness.build_workers("resnet20", "fp32", (3, 32, 32), args, steps=1)
    args.torch_cudnn_benchmark = True
    (tuned,) = harness.build_workers("resnet20", "fp32", (3, 32, 32), args, steps=1)
    assert "--cudnn-benchmark" not in plain.cmd and "--cudnn-benchmark" in tuned.cmd


def test_jax_workers_run_on_the_malloc_jresnet_train_preloads(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from jresnet import host_allocator

    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    monkeypatch.setattr(host_allocator, "default_search_dirs", lambda: [tmp_path])
    for name in ("LD_PRELOAD", host_allocator.ENV_CHOICE, "JRESNET_XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    args = harness.argparse.Namespace(batch=2, matmul_n=64, xla_flags="", variants=["jresnet", "torch-eager_cl"],
                                      baseline=None, torch_python="python3", torch_cudnn_benchmark=False)
    jax_worker, torch_worker = harness.build_workers("resnet20", "fp32", (3, 32, 32), args, steps=1)
    assert jax_worker.env["LD_PRELOAD"] == str(tmp_path / "libjemalloc.so.2")
    assert "LD_PRELOAD" not in torch_worker.env  # torch runs as its users run it
    monkeypatch.setenv(host_allocator.ENV_CHOICE, "system")
    jax_worker, _ = harness.build_workers("resnet20", "fp32", (3, 32, 32), args, steps=1)
    assert "LD_PRELOAD" not in jax_worker.env


@pytest.mark.slow
def test_malloc_ab_pairs_glibc_with_each_installed_malloc(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    import malloc_ab

    from jresnet.host_allocator import find_allocator

    # Batch 64: XLA's per-step block (~120 MB) is over glibc's 32 MB mmap ceiling, as at batch 128.
    assert malloc_ab.main(["--model", "resnet20", "--batch", "64", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (glibc|tcmalloc|jemalloc) \| \d+ \| \d+ \| (\d+) \| \d+ \| [\d.]+ \(", out, re.M))
    expected = {"glibc"} | {name for name in ("tcmalloc", "jemalloc") if find_allocator(name) is not None}
    assert set(rows) == expected, out
    assert int(rows["glibc"]) > 10_000, out  # the block's pages, faulted in again every step
    for name in expected - {"glibc"}:  # their workers really ran on it (the script checks) and kept the block
        assert int(rows[name]) < int(rows["glibc"]) / 100, out
