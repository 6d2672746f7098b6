"""Throughput, compile time and FLOP efficiency of jresnet models, measured in this process.

What is measured, for a registered model at batch B and dtype fp32 or bf16:

- **train img/s**: jresnet's real train step (`jresnet.train.step.make_train_step` over
  `jresnet.train.state.create_state`): uint8 (B, C, H, W) images in, normalisation, forward and backward
  through the public (B, C, H, W) API with BatchNorm in train mode, softmax cross-entropy, optax SGD
  with momentum 0.9, and the step's metrics (loss, accuracy, grad norm). Augmentation is switched off
  (``crop_padding=0``, ``flip=False``) so that it costs nothing: the figure is the model's, not the
  augmentation's.
- **infer img/s**: a jitted eval-mode forward, ``jresnet.functional.apply(..., train=False)``, on
  already-normalised images of the benchmark's dtype.
- **compile s**: the wall time of ``jit(...).lower(...)`` (trace + lowering) plus ``.compile()`` of the
  train step; the forward's is reported separately.
- **GFLOP/s**: FLOPs counted from layer shapes, ``2 × summary(model, (C, H, W)).total_macs`` per image
  forward (convs and the linear head; BatchNorm, ReLU and adds are not counted), ×3 for a train step
  (forward + backward), divided by the median time.
- **% of matmul peak**: that GFLOP/s against a jitted fp32 N×N×N matmul measured in the same process and
  the same rounds (N=2048 by default). bf16 rows are also compared with the fp32 peak.
- **check overhead**: the eval forward traced into a fresh jit with `jresnet.set_checks(False)`, timed
  against the checked one, and whether the two lowered programs are identical. The checks run while
  JAX traces, so the programs are expected to be identical and the times equal.

How: every variant is compiled and warmed up first. Then, in each of ``repeats`` rounds, every variant
of every case (train, infer, infer unchecked) and the matmul run once each, in turn (A B C A B C ...),
so drift of a shared machine hits them all alike. One repeat is ``steps`` calls followed by
``jax.block_until_ready``; the reported figure is the median repeat. XLA flags (``XLA_FLAGS``) must be
set before JAX starts, so they are recorded here but not changed: compare flags in separate processes
(see ``experiments/bench.py``). The ``jresnet bench`` command applies jresnet's CPU flags first.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jresnet import native
from jresnet.conv_core import get_conv_core, resolved_conv_core
from jresnet.data import normalize
from jresnet.functional import apply
from jresnet.host_allocator import allocator_in_use
from jresnet.models import ResNetSpec
from jresnet.registry import create_model, get_spec
from jresnet.summary import summary
from jresnet.train.state import create_state
from jresnet.train.step import make_train_step
from jresnet.typing import set_checks

__all__ = [
    "DTYPES",
    "BenchReport",
    "BenchResult",
    "MatmulPeak",
    "ModelBench",
    "bench_from_cli",
    "cpu_isa",
    "default_input_shape",
    "environment",
    "format_table",
    "run_benchmarks",
]

DTYPES: dict[str, Any] = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
"""The dtypes a benchmark accepts, by name, and the JAX dtype each computes in."""

_MEAN, _STD = 0.5, 0.25  # any per-channel values do; they only have to be the same for every variant


def default_input_shape(spec: ResNetSpec) -> tuple[int, int, int]:
    """(C, H, W) the model is made for: 32×32 for CIFAR stems, 224×224 otherwise."""
    size = 32 if spec.stem == "cifar" else 224
    return (spec.in_channels, size, size)


def _jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so that the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()``, which must block until its work is done."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class MatmulPeak:
    """A jitted ``a @ b`` of two N×N matrices, the practical FLOP/s ceiling of this backend.

    Each timed repeat runs ``calls`` matmuls back to back and blocks at the end.
    """

    def __init__(self, n: int = 2048, dtype: str = "fp32", calls: int = 3) -> None:
        if n < 1 or calls < 1:
            raise ValueError(f"MatmulPeak: n and calls must be >= 1; got n={n}, calls={calls}")
        self.n, self.dtype, self.calls = n, dtype, calls
        key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
        self.a = jax.random.normal(key_a, (n, n), DTYPES[dtype])
        self.b = jax.random.normal(key_b, (n, n), DTYPES[dtype])
        self._matmul = jax.jit(lambda a, b: a @ b)
        jax.block_until_ready(self._matmul(self.a, self.b))  # compile and warm up
        self.seconds: list[float] = []

    @property
    def flops(self) -> float:
        """FLOPs of one matmul: 2·N³."""
        return 2.0 * self.n**3

    def run_repeat(self) -> float:
        """Time one repeat; returns and records the seconds per matmul."""
        def body() -> None:
            outs = [self._matmul(self.a, self.b) for _ in range(self.calls)]
            jax.block_until_ready(outs)

        seconds = _timed(body) / self.calls
        self.seconds.append(seconds)
        return seconds

    @property
    def gflops(self) -> float:
        """GFLOP/s of the median repeat (NaN before any repeat)."""
        return self.flops / _median(self.seconds) / 1e9 if self.seconds else math.nan


@dataclass
class BenchResult:
    """Everything measured for one (model, batch, dtype): per-repeat seconds per step and the figures
    derived from their medians. ``*_s`` lists hold one entry per timed repeat, in seconds per call."""

    variant: str
    model: str
    batch: int
    dtype: str
    input_shape: tuple[int, int, int]
    params: int
    macs_per_image: int
    steps: int
    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    infer_unchecked_s: list[float] = field(default_factory=list)
    lower_train_s: float = math.nan
    compile_train_s: float = math.nan
    lower_infer_s: float = math.nan
    compile_infer_s: float = math.nan
    checks: bool = True
    checks_hlo_identical: bool | None = None
    matmul_peak_gflops: float = math.nan

    @property
    def flops_fwd_per_image(self) -> float:
        """Forward FLOPs of one image: 2 × MACs (convs and the linear head)."""
        return 2.0 * self.macs_per_image

    @property
    def train_img_s(self) -> float:
        """Images per second of the train step (median repeat)."""
        return self.batch / _median(self.train_s)

    @property
    def infer_img_s(self) -> float:
        """Images per second of the eval-mode forward (median repeat)."""
        return self.batch / _median(self.infer_s)

    @property
    def infer_unchecked_img_s(self) -> float:
        """Images per second of the forward traced with checks off (NaN when not measured)."""
        return self.batch / _median(self.infer_unchecked_s) if self.infer_unchecked_s else math.nan

    @property
    def train_compile_s(self) -> float:
        """Trace + lower + compile wall seconds of the train step."""
        return self.lower_train_s + self.compile_train_s

    @property
    def train_gflops(self) -> float:
        """Achieved GFLOP/s of the train step, counting forward + backward as 3× the forward."""
        return 3.0 * self.flops_fwd_per_image * self.train_img_s / 1e9

    @property
    def infer_gflops(self) -> float:
        """Achieved GFLOP/s of the forward."""
        return self.flops_fwd_per_image * self.infer_img_s / 1e9

    @property
    def train_pct_of_peak(self) -> float:
        """Train GFLOP/s as a percentage of the fp32 matmul peak measured in the same run."""
        return 100.0 * self.train_gflops / self.matmul_peak_gflops

    @property
    def infer_pct_of_peak(self) -> float:
        """Forward GFLOP/s as a percentage of the fp32 matmul peak."""
        return 100.0 * self.infer_gflops / self.matmul_peak_gflops

    @property
    def check_overhead(self) -> float:
        """Checked over unchecked forward time (1.0 = no overhead; NaN when not measured)."""
        if not self.infer_unchecked_s:
            return math.nan
        return _median(self.infer_s) / _median(self.infer_unchecked_s)

    def to_dict(self) -> dict[str, Any]:
        """The raw fields and the derived figures, JSON-ready."""
        out = asdict(self)
        for name in ("flops_fwd_per_image", "train_img_s", "infer_img_s", "infer_unchecked_img_s",
                     "train_compile_s", "train_gflops", "infer_gflops", "train_pct_of_peak",
                     "infer_pct_of_peak", "check_overhead"):
            out[name] = getattr(self, name)
        out["input_shape"] = list(self.input_shape)
        return _jsonable(out)


class ModelBench:
    """One model at one batch size and dtype, compiled, warmed up and ready to time.

    ``run_repeat("train" | "infer" | "infer_unchecked")`` times one repeat of ``steps`` calls and records
    the seconds per call in `result`. ``checks=False`` traces the train step and the forward with
    jresnet's checks off; ``checks_overhead`` adds the unchecked forward to a checked bench. The timed
    calls go to the compiled executables of the jitted functions (the same programs a training loop
    runs). ``input_shape`` (C, H, W) defaults to the model's (32×32 for CIFAR stems, 224×224 otherwise);
    a different C rebuilds the model with that many input channels.
    """

    def __init__(
        self,
        model: str,
        batch: int,
        dtype: str = "fp32",
        *,
        input_shape: Sequence[int] | None = None,
        steps: int = 5,
        warmup: int = 1,
        checks_overhead: bool = True,
        checks: bool = True,
        seed: int = 0,
        variant: str = "jresnet",
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
        if batch < 1 or steps < 1 or warmup < 0:
            raise ValueError(f"batch and steps must be >= 1 and warmup >= 0; got {batch}, {steps}, {warmup}")
        spec = get_spec(model)
        shape = tuple(input_shape) if input_shape is not None else default_input_shape(spec)
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W); got {input_shape!r}")
        c, h, w = (int(s) for s in shape)
        overrides = {"in_channels": c} if c != spec.in_channels else {}
        net = create_model(model, rngs=seed, **overrides)
        table = summary(net, (c, h, w), name=model)
        self.steps, self.warmup = steps, warmup
        self.result = BenchResult(variant=variant, model=model, batch=batch, dtype=dtype,
                                  input_shape=(c, h, w), params=net.num_params(),
                                  macs_per_image=table.total_macs, steps=steps)

        rng = np.random.default_rng(seed)
        self.images = jnp.asarray(rng.integers(0, 256, (batch, c, h, w), dtype=np.uint8))
        self.labels = jnp.asarray(rng.integers(0, net.num_classes, (batch,), dtype=np.int32))
        mean, std = (_MEAN,) * c, (_STD,) * c
        self.inputs = normalize(self.images, mean, std).astype(DTYPES[dtype])

        tx = optax.sgd(0.01, momentum=0.9)
        graphdef, self.state = create_state(net, tx, seed=seed, ema=False)
        self._train = make_train_step(
            graphdef, tx, optax.constant_schedule(0.01), mean=mean, std=std, crop_padding=0, flip=False,
            label_smoothing=0.0, precision=dtype, ema_decay=None, skip_nonfinite=False)
        self.params, self.batch_stats = self.state.params, self.state.batch_stats
        self.params = jax.tree.map(jnp.copy, self.params)  # the train step donates the state's buffers
        self.batch_stats = jax.tree.map(jnp.copy, self.batch_stats)

        r = self.result
        r.checks = checks
        previous = set_checks(checks)
        try:
            r.lower_train_s, r.compile_train_s, _, self._train_exe = self._compile(
                self._train, self.state, self.images, self.labels)
            self._infer_exe: Callable[..., Any] | None = None
            r.lower_infer_s, r.compile_infer_s, main_hlo, self._infer_exe = self._compile(
                self._make_forward(graphdef), self.params, self.batch_stats, self.inputs)
        finally:
            set_checks(previous)
        self._infer_unchecked_exe: Callable[..., Any] | None = None
        if checks_overhead and checks:
            previous = set_checks(False)
            try:  # a fresh function object, so that jit traces again instead of reusing the checked trace
                _, _, unchecked_hlo, self._infer_unchecked_exe = self._compile(
                    self._make_forward(graphdef), self.params, self.batch_stats, self.inputs)
            finally:
                set_checks(previous)
            r.checks_hlo_identical = main_hlo == unchecked_hlo
        for _ in range(warmup):
            for kind in self.kinds:
                self._run(kind, 1)

    @staticmethod
    def _make_forward(graphdef: Any) -> Callable[..., Any]:
        def forward(params: Any, batch_stats: Any, x: jax.Array) -> jax.Array:
            return apply(graphdef, params, batch_stats, x, train=False)[0]

        return jax.jit(forward)

    @staticmethod
    def _compile(fn: Any, *args: Any) -> tuple[float, float, str, Callable[..., Any]]:
        """(lower seconds, compile seconds, lowered program text, executable) of a jitted function.

        The timed calls go to the executable: calling the jitted function after ``lower().compile()``
        would compile it a second time, and the executable's dispatch costs the same (~30 µs here).
        """
        start = time.perf_counter()
        lowered = fn.lower(*args)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        return lowered_at - start, time.perf_counter() - lowered_at, lowered.as_text(), compiled

    @property
    def kinds(self) -> tuple[str, ...]:
        """The variants this bench times, in the order each round runs them."""
        if self._infer_unchecked_exe is None:
            return ("train", "infer")
        return ("train", "infer", "infer_unchecked")

    def _run(self, kind: str, steps: int) -> None:
        if kind == "train":
            metrics = None
            for _ in range(steps):
                self.state, metrics = self._train_exe(self.state, self.images, self.labels)
            jax.block_until_ready((self.state, metrics))
            return
        fn = self._infer_exe if kind == "infer" else self._infer_unchecked_exe
        if fn is None:
            raise ValueError(f"{kind!r} is not measured by this bench (checks_overhead off or checks off)")
        outs = [fn(self.params, self.batch_stats, self.inputs) for _ in range(steps)]
        jax.block_until_ready(outs)

    def run_repeat(self, kind: str, steps: int | None = None) -> float:
        """Time one repeat of ``steps`` (default: the bench's) calls of ``kind``, blocking at the end;
        records and returns the seconds per call."""
        if kind not in ("train", "infer", "infer_unchecked"):
            raise ValueError(f"kind must be train, infer or infer_unchecked; got {kind!r}")
        n = self.steps if steps is None else steps
        if n < 1:
            raise ValueError(f"steps must be >= 1; got {n}")
        seconds = _timed(lambda: self._run(kind, n)) / n
        getattr(self.result, f"{kind}_s").append(seconds)
        return seconds


# The vector extensions that decide CPU throughput: the same VM kind has shown AVX-512 on one day and only
# AVX2 on another, with a ~2.7x different matmul peak.
_CPU_ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")


def cpu_isa(cpuinfo: str | None = None) -> list[str] | None:
    """Which of the throughput-relevant vector extensions the CPU reports (Linux ``/proc/cpuinfo`` flags),
    or None where that file does not exist."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm64
            flags.update(value.split())
    return [isa for isa in _CPU_ISA if isa in flags]


def environment() -> dict[str, Any]:
    """What the numbers depend on: versions, backend, device, XLA_FLAGS, the host malloc, the conv core, the persistent
    compilation cache, cores, the CPU's vector extensions and the load average."""
    device = jax.devices()[0]
    onednn = native.status()
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_malloc": allocator_in_use(),
        "conv_core": {"set": get_conv_core(), "fp32_on_cpu": resolved_conv_core(jnp.float32),
                      "onednn": onednn.onednn_version if onednn.available else f"unavailable: {onednn.reason}"},
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,  # a warm cache shortens compile s
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_isa": cpu_isa(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@dataclass
class BenchReport:
    """The results of one run, the matmul peak measured in it, and the environment before and after."""

    results: list[BenchResult]
    matmul_n: int
    matmul_s: list[float]
    matmul_peak_gflops: float
    repeats: int
    env_before: dict[str, Any]
    env_after: dict[str, Any]
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with every result's derived figures."""
        return _jsonable({
            "results": [r.to_dict() for r in self.results],
            "matmul_n": self.matmul_n,
            "matmul_s": self.matmul_s,
            "matmul_peak_gflops": self.matmul_peak_gflops,
            "repeats": self.repeats,
            "env_before": self.env_before,
            "env_after": self.env_after,
            "errors": self.errors,
        })


def run_benchmarks(
    models: Sequence[str],
    dtypes: Sequence[str] = ("fp32",),
    *,
    batch: int = 128,
    repeats: int = 5,
    steps: int = 5,
    warmup: int = 1,
    input_shape: Sequence[int] | None = None,
    checks_overhead: bool = True,
    matmul_n: int = 2048,
    variant: str = "jresnet",
    unchecked_fallback: bool = False,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Benchmark every (model, dtype) pair, interleaved, and return the medians' report.

    All cases are compiled and warmed up first; then each of ``repeats`` rounds times one repeat of
    every case's train step, forward (and unchecked forward), and of the matmul peak, in turn.
    A case whose trace fails with a ``TypeError`` (the checks rejecting a dtype) is listed in
    ``report.errors``; with ``unchecked_fallback`` it is measured again traced with checks off and
    labelled ``[checks off]``, which compiles the same program when the checks pass.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    say = log or (lambda _msg: None)
    env_before = environment()
    benches: list[ModelBench] = []
    errors: list[dict[str, str]] = []
    for model in models:
        for dtype in dtypes:
            say(f"compiling {model} {dtype} batch {batch} ...")
            kwargs: dict[str, Any] = dict(input_shape=input_shape, steps=steps, warmup=warmup,
                                          checks_overhead=checks_overhead, variant=variant)
            try:
                bench = ModelBench(model, batch, dtype, **kwargs)
            except TypeError as err:  # a dtype the checks reject; the program itself may still run
                errors.append({"model": model, "dtype": dtype, "error": str(err)})
                say(f"  FAILED with checks on: {err}")
                if not unchecked_fallback:
                    continue
                say("  measuring it traced with checks off instead")
                bench = ModelBench(model, batch, dtype, **{**kwargs, "checks": False,
                                                          "variant": f"{variant} [checks off]"})
            say(f"  train step: {bench.result.lower_train_s:.2f} s to trace and lower, "
                f"{bench.result.compile_train_s:.2f} s to compile")
            benches.append(bench)
    peak = MatmulPeak(matmul_n)
    for round_ in range(repeats):
        for bench in benches:
            for kind in bench.kinds:
                bench.run_repeat(kind)
        peak.run_repeat()
        say(f"round {round_ + 1}/{repeats} done")
    for bench in benches:
        bench.result.matmul_peak_gflops = peak.gflops
    return BenchReport([b.result for b in benches], matmul_n, peak.seconds, peak.gflops, repeats,
                       env_before, environment(), errors)


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def format_table(results: Sequence[BenchResult]) -> str:
    """A Markdown table: variant, model, dtype, train and infer img/s, compile s, train GFLOP/s and its
    percentage of the fp32 matmul peak."""
    lines = [
        "| variant | model | dtype | train img/s | infer img/s | compile s | GFLOP/s | % of matmul peak |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {r.model} | {r.dtype} | {_fmt(r.train_img_s)} | {_fmt(r.infer_img_s)} | "
            f"{_fmt(r.train_compile_s, 2)} | {_fmt(r.train_gflops)} | {_fmt(r.train_pct_of_peak)} |"
        )
    return "\n".join(lines)


def format_checks_table(results: Sequence[BenchResult]) -> str:
    """A Markdown table of the shape-check overhead: forward img/s with checks on and off."""
    lines = [
        "| model | dtype | infer img/s, checks on | checks off | on/off time | same program |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        same = "n/a" if r.checks_hlo_identical is None else ("yes" if r.checks_hlo_identical else "NO")
        lines.append(f"| {r.model} | {r.dtype} | {_fmt(r.infer_img_s)} | {_fmt(r.infer_unchecked_img_s)} | "
                     f"{_fmt(r.check_overhead, 3)} | {same} |")
    return "\n".join(lines)


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def bench_from_cli(args: argparse.Namespace) -> int:
    """Run ``jresnet bench``: ``args.models``, ``args.dtype`` (comma lists), ``args.batch``,
    ``args.repeats``, ``args.steps`` and ``args.json`` (a path or None). Prints Markdown tables;
    returns the exit status."""
    models, dtypes = _split(args.models), _split(args.dtype)
    if not models:
        raise ValueError("--models needs at least one model name")
    for dtype in dtypes or ["<none>"]:
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be fp32, bf16 or fp32,bf16; got {args.dtype!r}")
    for name in models:
        get_spec(name)  # unknown names fail before anything compiles
    report = run_benchmarks(models, dtypes, batch=args.batch, repeats=args.repeats, steps=args.steps,
                            unchecked_fallback=bool(getattr(args, "unchecked_fallback", False)),
                            log=lambda msg: print(msg, flush=True))
    env = report.env_after
    print(f"\njax {env['jax']} on {env['backend']} ({env['device']}, {env['cpu_count']} cores), "
          f"XLA_FLAGS={env['xla_flags'] or '(none)'}")
    print(f"batch {args.batch}, median of {args.repeats} repeats × {args.steps} steps; "
          f"fp32 {report.matmul_n}³ matmul peak {report.matmul_peak_gflops:.1f} GFLOP/s; load average "
          f"{report.env_before['loadavg']} before, {env['loadavg']} after\n")
    print(format_table(report.results))
    print()
    print(format_checks_table(report.results))
    for err in report.errors:
        print(f"\nFAILED: {err['model']} {err['dtype']}: {err['error']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=2)
        print(f"\nwrote {args.json}")
    return 1 if report.errors else 0
