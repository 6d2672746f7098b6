"""What the CPU conv-core levers buy, measured in one process, interleaved, medians of ``--repeats``.

1. **Fused transposes.** XLA CPU computes a conv's kernel gradient as a convolution over the batch and
   transposes x to (C, H, W, B) for it. Alone, that transpose of a (128, 32, 32, 16) activation is cheap;
   fused with the elementwise chain that produced x (BatchNorm, ReLU and residual adds of earlier blocks)
   it is not. Rows: a plain transpose, the same transpose of a 4-block residual chain, and that chain
   materialised first with `jresnet.conv_core`'s `lax.cond` boundary.
2. **Train step by conv core.** jresnet's real train step (`jresnet.bench.ModelBench`) traced once per
   core: "lax" (JAX's own conv gradient), "materialized" and, where its kernels load, "onednn"; the
   paired ratios are medians over rounds of one core's seconds over another's.
3. ``--passes``: each conv shape of the model timed alone, forward, input gradient and kernel gradient,
   as XLA computes them (jresnet's ``lax.conv_general_dilated`` call and JAX's gradients of it) and as
   the oneDNN kernels of `jresnet.native` do: where the time goes, and what oneDNN buys per shape.

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

from jresnet import conv_core, native
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
    cores = ["lax", "materialized"] + (["onednn"] if native.available() else [])
    benches = {}
    for core in cores:
        previous = conv_core.set_conv_core(core)
        try:
            benches[core] = ModelBench(model, batch, "fp32", checks_overhead=False, steps=2)
        finally:
            conv_core.set_conv_core(previous)
    for _ in range(repeats):
        for bench in benches.values():
            bench.run_repeat("train")
    print(f"\n2. {model} train step, batch {batch}, fp32 (median of {repeats} repeats; each repeat times 2 steps)\n")
    print("| conv core | ms/step | img/s |\n|---|---:|---:|")
    for core, bench in benches.items():
        seconds = statistics.median(bench.result.train_s)  # per step
        print(f"| {core} | {1e3 * seconds:.1f} | {batch / seconds:.1f} |")
    print()
    for faster, slower in zip(cores[1:], cores[:-1], strict=True):
        ratios = [a / b for a, b in zip(benches[slower].result.train_s, benches[faster].result.train_s, strict=True)]
        print(f"{faster} / {slower} speed, paired per round: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def _pass_functions(conv: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, w: jax.Array,
                    dy: jax.Array) -> dict[str, Callable[[], Any]]:
    fwd = jax.jit(conv)
    dgrad = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda v: conv(v, w_), x_)[1](dy_)[0])
    wgrad = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda v: conv(x_, v), w_)[1](dy_)[0])
    return {"forward": lambda: fwd(x, w), "input grad": lambda: dgrad(x, w, dy),
            "kernel grad": lambda: wgrad(x, w, dy)}


def _time_passes(c: int, h: int, co: int, k: int, s: int, p: int, batch: int,
                 repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of one conv's forward, input gradient and kernel gradient per backend, interleaved."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((co, c, k, k)), jnp.float32)
    geometry = (s, ((p, p), (p, p)), 1, 1)
    convs = {"xla": lambda x_, w_: conv_core._lax_conv(x_, w_, *geometry)}  # differentiated by JAX itself
    if native.available():
        convs["onednn"] = lambda x_, w_: conv_core._conv_onednn(x_, w_, *geometry)
    dy = jnp.ones(jax.eval_shape(convs["xla"], x, w).shape, jnp.float32)
    fns = {(backend, name): fn for backend, conv in convs.items()
           for name, fn in _pass_functions(conv, x, w, dy).items()}
    times = _interleaved(fns, repeats)  # type: ignore[arg-type]
    medians: dict[str, dict[str, float]] = {backend: {} for backend in convs}
    for (backend, name), t in times.items():
        medians[backend][name] = statistics.median(t)
    return medians


def conv_passes(model: str, batch: int, repeats: int) -> None:
    table = summary(create_model(model), (3, 32, 32), name=model)
    shapes: dict[tuple[int, ...], int] = {}
    for row in table.rows:
        if row.kind == "Conv2d":  # ksp is "K/S/P"
            k, s, p = (int(v) for v in row.ksp.split("/"))
            key = (row.in_shape[0], row.in_shape[1], row.out_shape[0], k, s, p)
            shapes[key] = shapes.get(key, 0) + 1
    passes = ("forward", "input grad", "kernel grad")
    print(f"\n3. {model} conv shapes alone, batch {batch}: ms, median of {repeats} (GFLOP/s); "
          "XLA vs oneDNN and their ratio\n")
    print("| C_in → C_out | H | K/S | count | " + " | ".join(f"{n} XLA | {n} oneDNN | ×" for n in passes) + " |")
    print("|---|---:|---|---:|" + "---:|---:|---:|" * len(passes))
    totals: dict[str, dict[str, float]] = {}
    for (c, h, co, k, s, p), count in shapes.items():
        medians = _time_passes(c, h, co, k, s, p, batch, repeats)
        h_out = (h + 2 * p - k) // s + 1
        flops = 2 * batch * h_out * h_out * co * c * k * k
        cells = []
        for name in passes:
            for backend in ("xla", "onednn"):
                seconds = medians.get(backend, {}).get(name)
                if seconds is None:
                    cells.append("–")
                    continue
                totals.setdefault(backend, {}).setdefault(name, 0.0)
                totals[backend][name] += count * seconds
                cells.append(f"{1e3 * seconds:.1f} ({flops / seconds / 1e9:.0f})")
            ratio = medians["xla"][name] / medians["onednn"][name] if "onednn" in medians else float("nan")
            cells.append(f"{ratio:.2f}")
        print(f"| {c} → {co} | {h} | {k}/{s} | {count} | " + " | ".join(cells) + " |")
    for backend, by_pass in totals.items():
        print(f"\nsum over the model's convs, {backend}: " + ", ".join(
            f"{name} {1e3 * seconds:.0f} ms" for name, seconds in by_pass.items()))


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
