"""What the CPU conv-core levers buy, measured in one process, interleaved, medians of ``--repeats``.

1. **Fused transposes.** XLA CPU computes a conv's kernel gradient as a convolution over the batch and
   transposes x to (C, H, W, B) for it. Alone, that transpose of a (128, 32, 32, 16) activation is cheap;
   fused with the elementwise chain that produced x (BatchNorm, ReLU and residual adds of earlier blocks)
   it is not. Rows: a plain transpose, the same transpose of a 4-block residual chain, and that chain
   materialised first with `jresnet.conv_core`'s `lax.cond` boundary.
2. **Train step by conv core.** jresnet's real train step (`jresnet.bench.ModelBench`) traced once with
   ``set_conv_core("lax")`` (JAX's own conv gradient) and once with the default "materialized" core; the
   paired ratio is the median over rounds of lax seconds / materialized seconds.
3. ``--passes``: each conv shape of the model timed alone, forward, input gradient and kernel gradient
   (jresnet's ``lax.conv_general_dilated`` call and JAX's gradients of it): where the remaining time goes.

Run with jresnet's CPU flag, as the CLI sets it::

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \\
        .venv/bin/python experiments/conv_core_levers.py --model resnet20 --batch 128 --repeats 5 --passes
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jresnet import conv_core
from jresnet.bench import ModelBench
from jresnet.registry import create_model
from jresnet.summary import summary


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def fused_transposes(batch: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal((batch, 32, 32, 16)), jnp.float32) for _ in range(4)]

    def chain(a: jax.Array, b: jax.Array, c: jax.Array, d: jax.Array) -> jax.Array:
        return jax.nn.relu(a * 2 + jax.nn.relu(b * 3 + jax.nn.relu(c + d)))

    def to_chwb(v: jax.Array) -> jax.Array:
        return jnp.transpose(v, (3, 1, 2, 0))

    plain = jax.jit(to_chwb)
    fused = jax.jit(lambda *v: to_chwb(chain(*v)))
    boundary = jax.jit(lambda *v: to_chwb(conv_core._materialize(chain(*v), conv_core._always(v[0]))))
    times = _interleaved({"transpose alone": lambda: plain(xs[0]), "transpose of a 4-block chain": lambda: fused(*xs),
                          "chain, cond boundary, transpose": lambda: boundary(*xs)}, repeats)
    print(f"\n1. transpose ({batch}, 32, 32, 16) -> (16, 32, 32, {batch}), ms (median of {repeats})\n")
    print("| program | ms |\n|---|---:|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * statistics.median(t):.2f} |")


def train_step_by_core(model: str, batch: int, repeats: int) -> None:
    benches = {}
    for core in conv_core.CORES[::-1]:  # lax first
        previous = conv_core.set_conv_core(core)
        try:
            benches[core] = ModelBench(model, batch, "fp32", checks_overhead=False, steps=2)
        finally:
            conv_core.set_conv_core(previous)
    for _ in range(repeats):
        for bench in benches.values():
            bench.run_repeat("train")
    print(f"\n2. {model} train step, batch {batch}, fp32 (median of {repeats} repeats of 2 steps)\n")
    print("| conv core | ms/step | img/s |\n|---|---:|---:|")
    for core, bench in benches.items():
        seconds = statistics.median(bench.result.train_s)
        print(f"| {core} | {1e3 * seconds:.1f} | {batch / seconds:.1f} |")
    ratios = [a / b for a, b in zip(benches["lax"].result.train_s, benches["materialized"].result.train_s,
                                    strict=True)]
    print(f"\nmaterialized / lax speed, paired per round: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def _time_passes(c: int, h: int, co: int, k: int, s: int, p: int, batch: int, repeats: int) -> list[float]:
    """Median seconds of one conv's forward, input gradient and kernel gradient, interleaved."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((co, c, k, k)), jnp.float32)

    def conv(x_: jax.Array, w_: jax.Array) -> jax.Array:  # jresnet's forward conv, differentiated by JAX itself
        return conv_core._lax_conv(x_, w_, s, ((p, p), (p, p)), 1, 1)

    dy = jnp.ones(jax.eval_shape(conv, x, w).shape, jnp.float32)
    fwd = jax.jit(conv)
    dgrad = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda v: conv(v, w_), x_)[1](dy_)[0])
    wgrad = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda v: conv(x_, v), w_)[1](dy_)[0])
    times = _interleaved({"f": lambda: fwd(x, w), "d": lambda: dgrad(x, w, dy), "w": lambda: wgrad(x, w, dy)}, repeats)
    return [statistics.median(t) for t in times.values()]


def conv_passes(model: str, batch: int, repeats: int) -> None:
    table = summary(create_model(model), (3, 32, 32), name=model)
    shapes: dict[tuple[int, ...], int] = {}
    for row in table.rows:
        if row.kind == "Conv2d":  # ksp is "K/S/P"
            k, s, p = (int(v) for v in row.ksp.split("/"))
            key = (row.in_shape[0], row.in_shape[1], row.out_shape[0], k, s, p)
            shapes[key] = shapes.get(key, 0) + 1
    print(f"\n3. {model} conv shapes alone, batch {batch}: ms (median of {repeats}) and GFLOP/s\n")
    print("| C_in → C_out | H | K/S | count | forward | input grad | kernel grad |\n|---|---:|---|---:|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0]
    for (c, h, co, k, s, p), count in shapes.items():
        medians = _time_passes(c, h, co, k, s, p, batch, repeats)
        h_out = (h + 2 * p - k) // s + 1
        flops = 2 * batch * h_out * h_out * co * c * k * k
        cells = []
        for i, seconds in enumerate(medians):
            totals[i] += count * seconds
            cells.append(f"{1e3 * seconds:.1f} ({flops / seconds / 1e9:.0f})")
        print(f"| {c} → {co} | {h} | {k}/{s} | {count} | " + " | ".join(cells) + " |")
    print(f"\nsum over the model's convs: forward {1e3 * totals[0]:.0f} ms, input grad {1e3 * totals[1]:.0f} ms, "
          f"kernel grad {1e3 * totals[2]:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", action="store_true", help="also time each conv shape's three passes")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.default_backend()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"load average {os.getloadavg()[0]:.2f}")
    fused_transposes(args.batch, args.repeats)
    train_step_by_core(args.model, args.batch, args.repeats)
    if args.passes:
        conv_passes(args.model, args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
