"""The library-side benchmark (`jresnet.bench`): structure and arithmetic of its results, never speed."""

from __future__ import annotations

import argparse
import json
import math
import statistics

import pytest

from jresnet.bench import BenchReport, bench_from_cli, cpu_isa, environment, format_table, run_benchmarks
from jresnet.registry import create_model
from jresnet.summary import summary

BATCH = 8


@pytest.fixture(scope="module")
def report() -> BenchReport:
    """resnet20 at batch 8, 2 repeats of 1 step; a small matmul keeps the peak measurement quick."""
    return run_benchmarks(["resnet20"], ["fp32"], batch=BATCH, repeats=2, steps=1, matmul_n=256)


def _positive_finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_result_structure(report: BenchReport) -> None:
    assert len(report.results) == 1
    r = report.results[0]
    assert (r.model, r.batch, r.dtype, r.input_shape) == ("resnet20", BATCH, "fp32", (3, 32, 32))
    assert r.params == 269_722
    for name in ("train_s", "infer_s", "infer_unchecked_s"):
        times = getattr(r, name)
        assert len(times) == 2 and all(_positive_finite(t) for t in times), (name, times)
    for name in ("train_img_s", "infer_img_s", "infer_unchecked_img_s", "train_compile_s", "compile_infer_s",
                 "train_gflops", "infer_gflops", "matmul_peak_gflops", "train_pct_of_peak", "check_overhead"):
        assert _positive_finite(getattr(r, name)), (name, getattr(r, name))
    assert r.checks_hlo_identical is True  # checks run at trace time: the same program either way
    assert len(report.matmul_s) == 2 and report.matmul_peak_gflops == r.matmul_peak_gflops


def test_gflops_follow_from_macs_and_throughput(report: BenchReport) -> None:
    r = report.results[0]
    macs = summary(create_model("resnet20"), (3, 32, 32)).total_macs  # counted independently here
    assert r.macs_per_image == macs
    assert r.train_img_s == pytest.approx(BATCH / statistics.median(r.train_s))
    assert r.infer_img_s == pytest.approx(BATCH / statistics.median(r.infer_s))
    assert r.train_gflops == pytest.approx(3 * 2 * macs * r.train_img_s / 1e9, rel=1e-9)
    assert r.infer_gflops == pytest.approx(2 * macs * r.infer_img_s / 1e9, rel=1e-9)
    assert r.train_pct_of_peak == pytest.approx(100 * r.train_gflops / r.matmul_peak_gflops)


def test_json_and_table(report: BenchReport) -> None:
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    row = data["results"][0]
    assert row["model"] == "resnet20" and row["train_img_s"] > 0 and row["input_shape"] == [3, 32, 32]
    assert data["env_before"]["backend"] and data["errors"] == []
    table = format_table(report.results)
    assert "| jresnet | resnet20 | fp32 |" in table
    assert table.splitlines()[0].count("|") == table.splitlines()[-1].count("|")


@pytest.mark.parametrize(("field", "value"), [("dtype", "fp16"), ("models", "resnet_nope"), ("models", "")])
def test_cli_rejects_bad_arguments_before_compiling(field: str, value: str) -> None:
    args = argparse.Namespace(models="resnet20", batch=8, repeats=1, steps=1, dtype="fp32", json=None)
    setattr(args, field, value)
    with pytest.raises(ValueError):
        bench_from_cli(args)


def test_cpu_isa_reads_the_flags_line_and_keeps_only_throughput_relevant_extensions() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 ht\nbogomips\t: 4800\n"
    assert cpu_isa(x86) == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert cpu_isa("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n") == ["avx2", "fma"]  # the AVX2-only VM
    assert cpu_isa("Features\t: fp asimd sve\n") == ["asimd", "sve"]
    assert cpu_isa("model name\t: unknown\n") == []
    recorded = environment()["cpu_isa"]
    assert recorded is None or isinstance(recorded, list)
