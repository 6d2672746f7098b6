"""jresnet's train step under glibc's malloc, tcmalloc and jemalloc: page faults, CPU time and speed, paired.

One long-lived worker process per malloc (a malloc is chosen when a process starts, via ``LD_PRELOAD``)
builds and warms up the same step (`jresnet.bench.ModelBench`); then every round asks each worker in turn
for one timed repeat, rotating who goes first. Each repeat reports its wall time, its CPU time (user +
system) and its minor page faults (``getrusage``); the speed ratio is the median of per-round ratios
against glibc, so the machine's drift hits every malloc alike. The workers get the environment of this
process (set ``XLA_FLAGS`` and ``OMP_WAIT_POLICY`` as `jresnet train` does; see the README).

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution OMP_WAIT_POLICY=PASSIVE \\
      .venv/bin/python experiments/malloc_ab.py --model resnet20 --rounds 40

A malloc that is not installed is left out (``apt-get install libtcmalloc-minimal4 libjemalloc2``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from jresnet.host_allocator import ENV_CHOICE, LIBRARY_NAMES, preload_environment

WORKER = r"""
import resource, sys
from jresnet.bench import ModelBench
from jresnet.host_allocator import allocator_in_use
model, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bench = ModelBench(model, batch, "fp32", checks_overhead=False, steps=steps)
bench.run_repeat("train", 2)
print("ready", allocator_in_use(), flush=True)
for _ in sys.stdin:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    seconds = bench.run_repeat("train")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    print(seconds, cpu / steps, (r1.ru_minflt - r0.ru_minflt) / steps, r1.ru_maxrss / 1024, flush=True)
"""


def environments() -> dict[str, dict[str, str]]:
    """One environment per installed malloc; glibc's first. A preload the caller set is removed."""
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV_CHOICE)}
    envs = {"glibc": base}
    for name in LIBRARY_NAMES:
        try:
            env = preload_environment(name, base)
        except ValueError as err:  # not installed
            print(f"left out: {err}", file=sys.stderr)
            continue
        if env is not None:
            envs[name] = env
    return envs


def main(argv: list[str] | None = None) -> int:
    """Start one worker per installed malloc, time the rounds and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1, help="train steps per timed repeat")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error(f"--rounds and --steps must be >= 1; got {args.rounds} and {args.steps}")

    workers = {}
    for name, env in environments().items():
        proc = subprocess.Popen([sys.executable, "-c", WORKER, args.model, str(args.batch), str(args.steps)],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = proc.stdout.readline().split() if proc.stdout else []
        if ready[:1] != ["ready"]:
            raise RuntimeError(f"the {name} worker did not start (exit status {proc.wait()})")
        if ready[1] != ("system" if name == "glibc" else name):
            raise RuntimeError(f"the {name} worker runs on {ready[1]}: the preload did not take")
        workers[name] = proc
    names = list(workers)
    rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            proc = workers[name]
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            rows[name].append(tuple(map(float, proc.stdout.readline().split())))  # type: ignore[union-attr]
    for proc in workers.values():
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()

    print(f"{args.model}, batch {args.batch}, fp32, {args.rounds} rounds × {args.steps} steps\n")
    print("| malloc | step ms | CPU ms/step | minor faults/step | peak RSS MB | speed × glibc, per round (IQR) |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        ratios = sorted(g[0] / m[0] for g, m in zip(rows["glibc"], rows[name]))
        q1, q3 = ratios[(len(ratios) - 1) // 4], ratios[3 * (len(ratios) - 1) // 4]
        med = [statistics.median(row[i] for row in rows[name]) for i in range(3)]
        print(f"| {name} | {1e3 * med[0]:.0f} | {1e3 * med[1]:.0f} | {med[2]:.0f} | {rows[name][-1][3]:.0f} "
              f"| {statistics.median(ratios):.3f} ({q1:.3f}–{q3:.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
