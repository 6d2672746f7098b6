"""Benchmark harness: jresnet against a plain Flax NHWC reference and PyTorch, interleaved, on this machine.

What it measures, per model, dtype and input size (medians of ``--repeats`` timed repeats):

- **train img/s**: one optimiser step at batch B from uint8 images (normalise, forward, backward with
  BatchNorm in train mode, cross-entropy, SGD momentum 0.9), without augmentation:
  - ``jresnet``: jresnet's real train step (`jresnet.train.step.make_train_step`) through its public
    (B, C, H, W) API, via `jresnet.bench.ModelBench`;
  - ``flax-ref``: `experiments/flax_nhwc_reference.py`, plain ``nnx.Conv``/``nnx.BatchNorm`` in NHWC;
  - ``torch-eager``, ``torch-eager_cl`` (channels_last), ``torch-compile_cl`` (channels_last +
    ``torch.compile``): `experiments/torch_reference.py`, bf16 rows under ``torch.autocast``.
- **infer img/s**: the eval-mode forward on normalised images.
- **compile s**: JAX: trace + lower + compile of the train step; torch: the first train call.
- **GFLOP/s** and **% of matmul peak**: FLOPs from jresnet's layer shapes (2 × summary MACs per image
  forward, ×3 for a train step) over the median time, against the fp32 2048³ matmul peak measured in
  the jresnet worker after every worker's turn in every round (median; the best is reported too).
- **ratios**: train (and infer) img/s against torch eager channels_last and torch.compile of the same
  model, dtype and input; jresnet against flax-ref and ``[flags]`` against default flags as the median
  of per-round ratios (each round runs both, so the pair shares the machine's state).
- ``--xla-flags F`` adds ``jresnet [flags]`` and ``flax-ref [flags]``: the same workers with
  ``XLA_FLAGS=F`` (flags must be set before JAX starts, hence separate processes). The other JAX
  workers run with the XLA_FLAGS of this process's environment (normally none).

How: every variant is a worker process (JAX and torch never share one) that builds, compiles and warms
up its model once, then times one repeat (``--steps`` calls, then block) per request. The workers start
one after another (so compile times are not inflated by each other), then every round asks each worker
in turn for one train repeat and one infer repeat (A B C ... A B C ...), rotating the starting worker
from round to round; only one worker runs at a time. The 1-minute load average is logged every round:
the machine is shared, so say what it was.

Run (torch optional; see `experiments/torch_reference.py` for its venv)::

    FLAG=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
    .venv/bin/python experiments/bench.py --models resnet20,resnet18_cifar --batch 128 --dtype fp32,bf16 \\
        --repeats 5 --steps 5,resnet18_cifar=2 --xla-flags=$FLAG \\
        --torch-python /work/torchvenv/bin/python --json out.json --markdown out.md
    .venv/bin/python experiments/bench.py --models resnet20 --input 1x8x8 --xla-flags=...   # the digits size

``--baseline DIR`` adds ``jresnet-before``: the same jresnet worker importing ``jresnet`` from DIR, a
checkout of an older commit (``git worktree add /tmp/jresnet-before <commit>``), so a change's before and
after are timed in one interleaved run and reported as a paired ratio.

On a GPU host the same command measures the GPU: JAX workers use JAX's default backend (without
preallocating 75% of the GPU's memory, so the workers fit side by side) and torch workers use CUDA when
torch sees a GPU (`experiments/torch_reference.py --device auto`). Each model runs at its own input size
unless ``--input`` is given (resnet50: 3×224×224). ``--start-together`` compiles a group's workers side by
side, for hosts with many cores; `experiments/gpu_bench.sh` is the GPU run. On a GPU the fp32 matmul
peak is what JAX's default precision gives (TF32 on recent NVIDIA GPUs).

``--variants jresnet,flax-ref`` picks a subset; without ``--torch-python`` the torch venv is used when
``/work/torchvenv/bin/python`` exists (``--no-torch`` skips torch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_TORCH_PYTHON = "/work/torchvenv/bin/python"
TORCH_VARIANTS = ("eager", "eager_cl", "compile_cl")
ALL_VARIANTS = ("jresnet", "flax-ref", "torch-eager", "torch-eager_cl", "torch-compile_cl")
EAGER_CL, COMPILED = "torch-eager_cl", "torch-compile_cl"
BEFORE = "jresnet-before"
KINDS = ("train", "infer")


# --------------------------------------------------------------------------------------------------
# The jresnet worker (runs in its own process; imports JAX only here).


def jresnet_worker(args: argparse.Namespace) -> int:
    """Serve `jresnet.bench.ModelBench` timings over stdin/stdout (see the protocol in the references)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)  # JSON only; anything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from jresnet.bench import MatmulPeak, ModelBench, environment

    info: dict[str, Any] = {"variant": "jresnet"}
    common = dict(input_shape=args.input, steps=1, warmup=1, checks_overhead=args.checks_overhead)
    try:
        bench = ModelBench(args.model, args.batch, args.dtype, **common)
    except TypeError as err:  # the checks reject the dtype; measure the same program traced without them
        info.update(variant="jresnet [checks off]", checks_error=str(err))
        bench = ModelBench(args.model, args.batch, args.dtype, **{**common, "checks": False})
    r = bench.result
    peak = MatmulPeak(args.matmul_n) if args.peak else None
    info.update(model=r.model, batch=r.batch, dtype=r.dtype, input_shape=list(r.input_shape), params=r.params,
                macs_per_image=r.macs_per_image, lower_train_s=r.lower_train_s,
                compile_train_s=r.compile_train_s, lower_infer_s=r.lower_infer_s,
                compile_infer_s=r.compile_infer_s, checks=r.checks,
                checks_hlo_identical=r.checks_hlo_identical, kinds=list(bench.kinds), env=environment())
    out.write(json.dumps({"ready": True, **info}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            break
        try:
            if cmd["cmd"] == "peak":
                if peak is None:
                    raise ValueError("this worker measures no matmul peak")
                reply: dict[str, Any] = {"seconds": peak.run_repeat(), "flops": peak.flops}
            else:
                reply = {"seconds": bench.run_repeat(cmd["cmd"], int(cmd.get("steps", 1)))}
        except Exception as err:  # report, keep serving
            reply = {"error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(reply) + "\n")
    return 0


# --------------------------------------------------------------------------------------------------
# The orchestrator.


@dataclass
class Worker:
    """A running worker process and what it has measured."""

    label: str
    kind: str  # jresnet | flax-ref | torch-<variant>
    flags: bool
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    busy: list[float] = field(default_factory=list)  # others' busy cores sampled before each request
    error: str | None = None

    spawned_at: float = 0.0

    def spawn(self) -> None:
        """Start the process; it builds, compiles and warms up its model, then prints its ready line."""
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                     text=True, env=self.env, cwd=str(HERE.parent))

    def wait_ready(self) -> bool:
        """Wait for the ready line; False (with ``error``) if the worker failed."""
        reply = self._read()
        if reply is None or not reply.get("ready"):
            self.error = self.error or f"did not start: {reply}"
            self.stop()
            return False
        self.info = reply
        self.info["startup_s"] = time.perf_counter() - self.spawned_at
        return True

    def _read(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.error = f"exited with status {self.proc.poll()}"
            return None
        return json.loads(line)

    def request(self, kind: str, steps: int = 1) -> float | None:
        """Ask for one timed repeat; records and returns the seconds per call (None on failure)."""
        if self.proc is None or self.error:
            return None
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": kind, "steps": steps}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.error = "worker died"
            return None
        reply = self._read()
        if reply is None or "seconds" not in reply:
            self.error = f"{kind}: {reply}"
            return None
        self.times.setdefault(kind, []).append(reply["seconds"])
        return float(reply["seconds"])

    def stop(self) -> None:
        """Ask the worker to quit, then make sure it has."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _median(values: list[float] | None) -> float:
    return float(statistics.median(values)) if values else math.nan


def _paired_ratio(a: Worker, b: Worker, kind: str) -> dict[str, float] | None:
    """Median, min and max over rounds of (b's seconds / a's seconds), i.e. a's speed over b's
    (> 1: ``a`` is faster), with the number of rounds."""
    ta, tb = a.times.get(kind, []), b.times.get(kind, [])
    ratios = [y / x for x, y in zip(ta, tb, strict=False) if x > 0]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def _loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def _cpu_jiffies() -> tuple[int, int] | None:
    """(total, idle + iowait) jiffies of all CPUs since boot, from /proc/stat (None where absent)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(values), values[3] + values[4]


def busy_cores(interval: float = 0.25) -> float:
    """CPU cores kept busy by other processes over ``interval`` seconds.

    Called while every worker of ours is idle (between requests), so what it sees is the machine's
    background load; NaN where /proc/stat is unavailable.
    """
    before = _cpu_jiffies()
    time.sleep(interval)
    after = _cpu_jiffies()
    if before is None or after is None or after[0] == before[0]:
        return math.nan
    total, idle = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * (total - idle) / total


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until others keep fewer than ``threshold`` cores busy.

    Returns (the last busy-cores sample, seconds waited). ``threshold <= 0`` only samples.
    """
    start = time.perf_counter()
    busy = busy_cores()
    while threshold > 0 and busy >= threshold and time.perf_counter() - start < max_wait:
        time.sleep(1.0)
        busy = busy_cores(0.5)
    return busy, time.perf_counter() - start


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _fmt_ratio(r: dict[str, float] | None) -> str:
    return "n/a" if r is None else f"{r['median']:.3f} ({r['min']:.2f}–{r['max']:.2f})"


def model_input(model: str, given: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """``given``, or the model's own input size: 3×32×32 for CIFAR stems, 3×224×224 for ImageNet ones."""
    if given is not None:
        return given
    from jresnet.bench import default_input_shape
    from jresnet.registry import get_spec

    return default_input_shape(get_spec(model))


def build_workers(model: str, dtype: str, input_shape: tuple[int, int, int], args: argparse.Namespace,
                  steps: int) -> list[Worker]:
    """The workers of one (model, dtype, input) group, in the order they run in a round."""
    chw = "x".join(str(v) for v in input_shape)
    torch_env = dict(os.environ)
    torch_env.pop("JRESNET_XLA_FLAGS", None)
    # JAX workers get the environment jresnet's CLI sets (OMP_WAIT_POLICY for the oneDNN kernels, and
    # jemalloc or tcmalloc preloaded where installed; the caller's own values win); torch keeps the caller's
    # environment, as a torch user would run it. Every worker of a group holds its model on the device at
    # once: JAX must not take 75% of a GPU's memory up front (its default), or the torch workers beside it
    # would run out.
    from jresnet.cli import CPU_ENVIRONMENT
    from jresnet.host_allocator import malloc_choice, preload_environment

    base_env = {**CPU_ENVIRONMENT, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", **torch_env}
    base_env = preload_environment(malloc_choice(os.environ), base_env) or base_env
    flag_env = {**base_env, "XLA_FLAGS": f"{base_env.get('XLA_FLAGS', '')} {args.xla_flags}".strip()}
    common = ["--model", model, "--batch", str(args.batch), "--dtype", dtype, "--input", chw]
    me = [sys.executable, str(HERE / "bench.py"), "--worker", *common, "--matmul-n", str(args.matmul_n)]
    ref = [sys.executable, str(HERE / "flax_nhwc_reference.py"), "--serve", *common]
    flag_sets = [(False, base_env)] + ([(True, flag_env)] if args.xla_flags else [])
    workers: list[Worker] = []
    for flags, env in flag_sets:
        tag = " [flags]" if flags else ""
        if "jresnet" in args.variants:
            extra = ["--peak"] if not flags else []
            extra += ["--checks-overhead"] if not flags else []
            workers.append(Worker(f"jresnet{tag}", "jresnet", flags, me + extra, env))
        if args.baseline:  # the same worker importing jresnet from an older checkout: before/after in one run
            before_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [args.baseline, env.get("PYTHONPATH")]))}
            workers.append(Worker(f"{BEFORE}{tag}", BEFORE, flags, me, before_env))
        if "flax-ref" in args.variants:
            workers.append(Worker(f"flax-ref{tag}", "flax-ref", flags, ref, env))
    if args.torch_python:
        for v in TORCH_VARIANTS:
            if f"torch-{v}" in args.variants:
                cmd = [args.torch_python, str(HERE / "torch_reference.py"), "--serve", "--variant", v,
                       *common, *(["--cudnn-benchmark"] if args.torch_cudnn_benchmark else [])]
                workers.append(Worker(f"torch-{v}", f"torch-{v}", False, cmd, torch_env))
    return workers


def run_group(model: str, dtype: str, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """Start one group's workers, run the interleaved rounds, stop them; returns the group's record."""
    input_shape = model_input(model, args.input)
    workers = build_workers(model, dtype, input_shape, args, steps)
    group: dict[str, Any] = {"model": model, "dtype": dtype, "batch": args.batch, "input": list(input_shape),
                             "steps": steps, "repeats": args.repeats, "matmul_n": args.matmul_n,
                             "xla_flags": args.xla_flags, "xla_flags_env": os.environ.get("XLA_FLAGS", ""),
                             "loadavg_rounds": [], "busy_rounds": [], "waited_rounds": [], "peak_s": [],
                             "started_together": args.start_together, "baseline_commit": args.baseline_commit,
                             "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count()}
    try:
        if args.start_together:  # many cores: compile side by side (compile s then overlap), time one by one
            for w in workers:
                w.spawn()
        for w in workers:
            print(f"[{model} {dtype}] starting {w.label} ...", file=sys.stderr, flush=True)
            if not args.start_together:  # one after another, so that compile times are not inflated
                w.spawn()
            if w.wait_ready():
                compile_s = w.info.get("compile_train_s", math.nan)
                print(f"  ready in {w.info['startup_s']:.1f} s (compile {compile_s:.1f} s)", file=sys.stderr,
                      flush=True)
            else:
                print(f"  FAILED: {w.error}", file=sys.stderr, flush=True)
        live = [w for w in workers if not w.error]
        peak_worker = next((w for w in live if w.label == "jresnet"), None)
        for rnd in range(args.repeats):
            busy, waited = wait_quiet(args.quiet, args.max_wait)
            group["busy_rounds"].append(busy)
            group["waited_rounds"].append(waited)
            group["loadavg_rounds"].append(_loadavg())
            k = rnd % max(len(live), 1)
            for w in live[k:] + live[:k]:
                for kind in ("train", "infer", "infer_unchecked"):
                    if kind == "infer_unchecked" and kind not in w.info.get("kinds", []):
                        continue
                    w.busy.append(busy_cores(0.2))
                    w.request(kind, steps)
                # the matmul peak after every worker, so that it samples the same conditions they met
                if peak_worker is not None and not peak_worker.error:
                    seconds = peak_worker.request("peak")
                    if seconds is not None:
                        group["peak_s"].append(seconds)
            print(f"[{model} {dtype}] round {rnd + 1}/{args.repeats}: load average "
                  f"{group['loadavg_rounds'][-1]:.2f}, others busy {busy:.2f} cores (waited {waited:.0f} s)",
                  file=sys.stderr, flush=True)
        group["loadavg_rounds"].append(_loadavg())
    finally:
        for w in workers:
            w.stop()
    if peak_worker is not None and group["peak_s"]:
        flops = 2.0 * args.matmul_n**3
        group["peak_gflops"] = flops / _median(group["peak_s"]) / 1e9
        group["peak_best_gflops"] = flops / min(group["peak_s"]) / 1e9
    else:
        group["peak_gflops"] = group["peak_best_gflops"] = math.nan
    group["workers"] = {w.label: {"info": w.info, "times": w.times, "busy_cores": w.busy, "error": w.error}
                        for w in workers}
    group["rows"] = summarize(workers, group, args.batch)
    return group


def summarize(workers: list[Worker], group: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    """One row per worker: medians, ratios, FLOP rates."""
    by_label = {w.label: w for w in workers if not w.error}
    macs = next((w.info.get("macs_per_image") for w in workers if w.kind == "jresnet" and w.info), None)
    peak = group.get("peak_gflops", math.nan)
    rows = []
    for w in workers:
        train_s, infer_s = _median(w.times.get("train")), _median(w.times.get("infer"))
        row: dict[str, Any] = {
            "variant": w.label if w.kind == BEFORE else w.info.get("variant", w.label) + (" [flags]" * w.flags),
            "label": w.label,
            "model": group["model"], "dtype": group["dtype"], "input": "x".join(map(str, group["input"])),
            "batch": batch, "train_img_s": batch / train_s, "infer_img_s": batch / infer_s,
            "compile_s": w.info.get("lower_train_s", 0.0) + w.info.get("compile_train_s", math.nan),
            "params": w.info.get("params"), "error": w.error, "others_busy_cores": _median(w.busy),
        }
        if macs:
            row["train_gflops"] = 3 * 2 * macs * row["train_img_s"] / 1e9
            row["infer_gflops"] = 2 * macs * row["infer_img_s"] / 1e9
            row["train_pct_peak"] = 100 * row["train_gflops"] / peak
        for ref_label, key in ((EAGER_CL, "vs_eager_cl"), (COMPILED, "vs_compile")):
            ref = by_label.get(ref_label)
            for kind in ("train", "infer"):
                ref_img_s = batch / _median(ref.times.get(kind)) if ref else math.nan
                row[f"{kind}_{key}"] = row[f"{kind}_img_s"] / ref_img_s
        partners = []  # the workers this row is paired with, in the report's order
        if w.kind == "jresnet":  # against the plain Flax reference and the older checkout, same flags
            partners += [w.label.replace("jresnet", "flax-ref"), w.label.replace("jresnet", BEFORE)]
        if w.flags:  # against itself without the flags
            partners.append(w.label.replace(" [flags]", ""))
        row["paired"] = [{"vs": p, **{k: _paired_ratio(w, by_label[p], k) for k in KINDS}}
                         for p in partners if p in by_label and w.label in by_label]
        if "infer_unchecked" in w.times:
            row["paired_checks_on_vs_off_infer"] = _paired_ratio_kinds(w, "infer_unchecked", "infer")
        rows.append(row)
    return rows


def _paired_ratio_kinds(w: Worker, slow: str, fast: str) -> dict[str, float] | None:
    """Median over rounds of times[slow] / times[fast] of one worker (>1: ``fast`` is faster)."""
    ratios = [a / b for a, b in zip(w.times.get(slow, []), w.times.get(fast, []), strict=False) if b > 0]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def markdown(groups: list[dict[str, Any]]) -> str:
    """The report: the main table, then the paired ratios, then the conditions."""
    lines = [
        "| variant | model | input | dtype | train img/s | × torch eager CL | × torch.compile | infer img/s "
        "| infer × eager CL | compile s | GFLOP/s | % of matmul peak | bg cores |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        for r in g["rows"]:
            if r["error"]:
                lines.append(f"| {r['variant']} | {r['model']} | {r['input']} | {r['dtype']} | failed: "
                             f"{str(r['error'])[:60]} | | | | | | | | |")
                continue
            lines.append(
                f"| {r['variant']} | {r['model']} | {r['input']} | {r['dtype']} | {_fmt(r['train_img_s'])} "
                f"| {_fmt(r.get('train_vs_eager_cl'), 2)} | {_fmt(r.get('train_vs_compile'), 2)} "
                f"| {_fmt(r['infer_img_s'])} | {_fmt(r.get('infer_vs_eager_cl'), 2)} "
                f"| {_fmt(r['compile_s'], 1)} "
                f"| {_fmt(r.get('train_gflops'))} | {_fmt(r.get('train_pct_peak'))} "
                f"| {_fmt(r.get('others_busy_cores'), 2)} |")
    lines += ["", "Paired ratios (median over rounds of the per-round speed ratio, min–max in brackets):", "",
              "| model | input | dtype | comparison | train | infer |", "|---|---|---|---|---|---|"]
    for g in groups:
        for r in g["rows"]:
            where = f"| {r['model']} | {r['input']} | {r['dtype']} "
            for p in r["paired"]:
                lines.append(f"{where}| {r['label']} / {p['vs']} "
                             f"| {_fmt_ratio(p['train'])} | {_fmt_ratio(p['infer'])} |")
            if r.get("paired_checks_on_vs_off_infer"):
                lines.append(f"{where}| jresnet forward, checks on / checks off | | "
                             f"{_fmt_ratio(r['paired_checks_on_vs_off_infer'])} |")
    lines += ["", "Conditions:", ""]
    for g in groups:
        loads = ", ".join(f"{x:.2f}" for x in g["loadavg_rounds"])
        jr = g["workers"].get("jresnet", {}).get("info", {})
        extra = ""
        if jr.get("checks_hlo_identical") is not None:
            extra = f"; checked and unchecked forward lower to the same program: {jr['checks_hlo_identical']}"
        env = jr.get("env", {})
        if env.get("backend"):
            extra += f"; JAX {env.get('jax', '')} on {env['backend']} ({env.get('device', '?')})"
        torch_info = next((w["info"] for label, w in g["workers"].items() if label.startswith("torch") and w["info"]),
                          None)
        if torch_info:
            extra += (f"; torch {torch_info.get('torch', '')} on {torch_info.get('device', 'cpu')}"
                      + (f" ({torch_info['gpu']})" if torch_info.get("gpu") else ""))
        isa = env.get("cpu_isa")
        if isa is not None:
            extra += f"; CPU vector extensions: {', '.join(isa) or 'none of AVX2/AVX-512/AMX/NEON'}"
        if env.get("host_malloc"):
            extra += f"; JAX workers' malloc: {env['host_malloc']}"
        core = env.get("conv_core")
        if core is not None:
            extra += f"; jresnet fp32 conv core on CPU: {core['fp32_on_cpu']} (oneDNN: {core['onednn']})"
        if g.get("started_together"):
            extra += "; workers compiled side by side (--start-together), so compile s overlap"
        if jr.get("checks_error"):
            extra += f"; jresnet with checks on failed: {jr['checks_error'][:160]}"
        busy = ", ".join(f"{x:.2f}" for x in g["busy_rounds"])
        lines.append(f"- {g['model']} {'x'.join(map(str, g['input']))} {g['dtype']} batch {g['batch']}, "
                     f"{g['repeats']} rounds × {g['steps']} steps: 1-min load average per round {loads}; "
                     f"cores busy with other processes at each round's start {busy}; "
                     f"fp32 {g['matmul_n']}³ matmul peak {_fmt(g['peak_gflops'])} GFLOP/s (median of "
                     f"{len(g['peak_s'])}, best {_fmt(g.get('peak_best_gflops', math.nan))}){extra}")
    cores = sorted({str(g.get("cpu_count", "?")) for g in groups})
    lines.append("- bg cores: median number of cores other processes kept busy in the 0.2 s before each of "
                 f"the row's timed repeats (our workers idle); {'/'.join(cores)} cores usable in all")
    for commit in sorted({g["baseline_commit"] for g in groups if g.get("baseline_commit")}):
        lines.append(f"- {BEFORE}: jresnet at commit {commit}")
    for flags, env in sorted({(g.get("xla_flags", ""), g.get("xla_flags_env", "")) for g in groups}):
        lines.append(f"- [flags] = XLA_FLAGS={flags!r}; other JAX rows: XLA_FLAGS={env!r}")
    return "\n".join(lines)


def load_groups(paths: list[str]) -> list[dict[str, Any]]:
    """The groups of earlier runs' JSON files, with their rows recomputed from the raw timings."""
    groups = []
    for path in paths:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        for g in record["groups"]:
            for key in ("repeats", "matmul_n", "xla_flags"):
                g.setdefault(key, record["args"][key])
            g.setdefault("xla_flags_env", record.get("xla_flags_env", ""))
            flops, peak_s = 2.0 * g["matmul_n"] ** 3, g.get("peak_s") or []
            g["peak_gflops"] = flops / _median(peak_s) / 1e9 if peak_s else math.nan
            g["peak_best_gflops"] = flops / min(peak_s) / 1e9 if peak_s else math.nan
            workers = []
            for label, stored in g["workers"].items():
                w = Worker(label, label.replace(" [flags]", ""), "[flags]" in label, [], {})
                w.info, w.times, w.error = stored["info"], stored["times"], stored["error"]
                w.busy = [math.nan if b is None else b for b in stored.get("busy_cores", [])]
                workers.append(w)
            g["rows"] = summarize(workers, g, g["batch"])
            groups.append(g)
    return groups


def _parse_input(text: str) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    return c, h, w


def _parse_steps(text: str) -> tuple[int, dict[str, int]]:
    default, per_model = 5, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            name, n = part.split("=", 1)
            per_model[name.strip()] = int(n)
        else:
            default = int(part)
    return default, per_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jresnet vs plain Flax NHWC vs PyTorch, interleaved.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", default="resnet20,resnet18_cifar")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp32,bf16")
    parser.add_argument("--input", type=_parse_input, default=None,
                        help="C x H x W (default: the model's, 3x32x32 for CIFAR nets, 3x224x224 for ImageNet)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", default="5", help="steps per repeat: 5, or 5,resnet18_cifar=2")
    parser.add_argument("--xla-flags", default="", help="also run jresnet and flax-ref under these XLA_FLAGS")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS))
    parser.add_argument("--torch-python", default=None,
                        help=f"python with torch (default {DEFAULT_TORCH_PYTHON} when present)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-cudnn-benchmark", action="store_true",
                        help="on a GPU, torch workers set torch.backends.cudnn.benchmark (off by default in torch)")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also time jresnet imported from DIR (e.g. a `git worktree` of an older commit), "
                             "as jresnet-before, with paired after/before ratios")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--start-together", action="store_true",
                        help="start a group's workers at once (compile side by side; for machines with many "
                             "cores, e.g. a GPU host): shorter runs, but each compile s is inflated")
    parser.add_argument("--quiet", type=float, default=0.5,
                        help="before each round, wait until other processes use fewer cores (0: never)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="longest wait per round, seconds")
    parser.add_argument("--json", default=None, help="write the results (raw timings included) here")
    parser.add_argument("--markdown", default=None, help="write the report's tables here")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="measure nothing: recompute and merge the reports of earlier --json files")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checks-overhead", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return jresnet_worker(args)

    if args.render:
        groups = load_groups(args.render)
        report = markdown(groups)
        header = f"Merged from {', '.join(Path(p).name for p in args.render)}\n\n"
        print(header + report)
        if args.markdown:
            Path(args.markdown).write_text(header + report + "\n", encoding="utf-8")
        if args.json:
            merged = {"merged_from": args.render, "groups": groups, "markdown": report}
            Path(args.json).write_text(json.dumps(_clean(merged), indent=2, default=str, allow_nan=False) + "\n",
                                       encoding="utf-8")
        return 0
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(ALL_VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {ALL_VARIANTS}")
    from jresnet.host_allocator import malloc_choice, preload_environment

    try:  # the malloc the JAX workers will run on, checked before any worker starts
        preload_environment(malloc_choice(os.environ), os.environ)
    except ValueError as err:
        parser.error(str(err))
    if args.no_torch:
        args.torch_python = None
    elif args.torch_python is None and os.path.exists(DEFAULT_TORCH_PYTHON):
        args.torch_python = DEFAULT_TORCH_PYTHON
    if args.torch_python and not any(v.startswith("torch") for v in args.variants):
        args.torch_python = None
    args.baseline_commit = None
    if args.baseline:  # say which commit the before rows ran, not only where its checkout was
        rev = subprocess.run(["git", "-C", args.baseline, "rev-parse", "HEAD"], capture_output=True, text=True)
        args.baseline_commit = rev.stdout.strip() or None
    default_steps, per_model = _parse_steps(args.steps)
    started = dt.datetime.now().isoformat(timespec="seconds")
    groups: list[dict[str, Any]] = []
    header = f"Benchmark of {started}, {os.cpu_count()} cores, `{' '.join(sys.argv)}`\n\n"

    def write(final: bool) -> str:
        """Write the report so far (after every group, so that a long run leaves partial results)."""
        report = markdown(groups)
        if args.markdown:
            Path(args.markdown).write_text(header + report + "\n", encoding="utf-8")
        if args.json:
            record = {"started": started, "finished": dt.datetime.now().isoformat(timespec="seconds"),
                      "complete": final, "argv": sys.argv, "cpu_count": os.cpu_count(),
                      "xla_flags_env": os.environ.get("XLA_FLAGS", ""),
                      "args": {k: v for k, v in vars(args).items() if k not in ("worker", "model", "peak")},
                      "groups": groups, "markdown": report}
            Path(args.json).write_text(json.dumps(_clean(record), indent=2, default=str, allow_nan=False) + "\n",
                                       encoding="utf-8")
        return report

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for i, (model, dtype) in enumerate((m, d) for m in models for d in dtypes):
        groups.append(run_group(model, dtype, args, per_model.get(model, default_steps)))
        write(final=i == len(models) * len(dtypes) - 1)
    print(header + markdown(groups))
    return 0


def _clean(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so that the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
