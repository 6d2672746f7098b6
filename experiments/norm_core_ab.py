"""What the oneDNN norm core buys: jresnet's train step with BatchNorm (+ReLU) by XLA and by oneDNN, paired.

`jresnet.norm_core` computes training-mode BatchNorm either with XLA's formula ("xla") or with oneDNN's
batch-normalisation primitive, the ReLU after it fused ("onednn"); "auto", the default, takes oneDNN's on
CPU for float32 norms of few channels only. This script traces jresnet's real train step
(`jresnet.bench.ModelBench`) under "xla" and under ``--against`` ("auto", as shipped, or "onednn": every
norm on oneDNN), prints how many oneDNN norm calls each compiled step holds, checks that one step gives
the same loss and gradient norm to float rounding, then times them alternately in one process and prints
the paired speed ratio (> 1: the ``--against`` core is faster). ``--shapes`` also times one norm alone
(forward and backward, with and without the ReLU) at each BatchNorm shape of the model, "xla" against
"onednn".

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python experiments/norm_core_ab.py --model resnet20 --repeats 9 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jresnet import native, norm_core
from jresnet.bench import ModelBench, default_input_shape
from jresnet.registry import create_model, get_spec
from jresnet.summary import summary


def benches(model: str, batch: int, against: str) -> dict[str, ModelBench]:
    """The fp32 train step traced under the "xla" norm core and under ``against``."""
    out = {}
    for core in ("xla", against):
        previous = norm_core.set_norm_core(core)
        try:
            out[core] = ModelBench(model, batch, "fp32", checks_overhead=False, steps=1)
        finally:
            norm_core.set_norm_core(previous)
    return out


def onednn_norm_calls(bench: ModelBench) -> int:
    """How many oneDNN batch-norm calls (forward and backward) the compiled train step holds."""
    return bench._train_exe.as_text().count('custom_call_target="jresnet_batch_norm_')


def one_step(bench: ModelBench) -> tuple[float, float]:
    """(loss, gradient norm) of one train step from the bench's initial state."""
    _, metrics = bench._train_exe(jax.tree.map(jnp.copy, bench.state), bench.images, bench.labels)
    return float(metrics["loss"]), float(metrics["grad_norm"])


def norm_shapes(model: str, batch: int) -> list[tuple[int, int, int, int]]:
    """The distinct NHWC activation shapes the model's BatchNorms see, in order of first use."""
    rows = summary(create_model(model), default_input_shape(get_spec(model))).rows  # per-example (C, H, W) shapes
    shapes = [(batch, r.out_shape[1], r.out_shape[2], r.out_shape[0]) for r in rows if r.kind == "BatchNorm2d"]
    return list(dict.fromkeys(shapes))


def _norm_step(shape: tuple[int, int, int, int], relu: bool, core: str) -> Callable[[], jax.Array]:
    """Forward and backward of one training-mode norm (+ReLU) at ``shape``, traced under ``core``."""
    rng = np.random.default_rng(0)
    x, r = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    w, b = jnp.ones(shape[-1]), jnp.zeros(shape[-1])

    def loss(x_: jax.Array, w_: jax.Array, b_: jax.Array) -> jax.Array:
        return jnp.sum(norm_core.batch_norm_train_with_stats(x_, w_, b_, 1e-5, relu=relu)[0] * r)

    previous = norm_core.set_norm_core(core)
    try:
        step = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, w, b).compile()
    finally:
        norm_core.set_norm_core(previous)
    return lambda: step(x, w, b)


def time_shapes(model: str, batch: int, repeats: int) -> None:
    """Print a table: each BatchNorm shape's forward+backward under "xla" and "onednn", paired."""
    print(f"\n{model}: one BatchNorm's forward + backward alone, batch {batch}, median of {repeats} (ms)\n")
    print("| B H W C | relu | xla | onednn | onednn speed |\n|---|---|---:|---:|---:|")
    for shape in norm_shapes(model, batch):
        for relu in (False, True):
            steps = {core: _norm_step(shape, relu, core) for core in ("xla", "onednn")}
            times: dict[str, list[float]] = {core: [] for core in steps}
            for _ in range(repeats + 1):  # the first round warms up
                for core, step in steps.items():
                    start = time.perf_counter()
                    jax.block_until_ready(step())
                    times[core].append(time.perf_counter() - start)
            xla, onednn = (statistics.median(times[core][1:]) for core in ("xla", "onednn"))
            print(f"| {' '.join(map(str, shape))} | {relu} | {1e3 * xla:.2f} | {1e3 * onednn:.2f} | "
                  f"{xla / onednn:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3, help="train steps per timed repeat")
    parser.add_argument("--against", default="auto", choices=("auto", "onednn"),
                        help='the norm core timed against "xla": "auto" (as shipped) or "onednn" (every norm)')
    parser.add_argument("--shapes", action="store_true", help="also time each BatchNorm shape alone")
    parser.add_argument("--shapes-only", action="store_true", help="time each BatchNorm shape alone, no train step")
    args = parser.parse_args(argv)
    if not native.available():
        print(f"the oneDNN kernels are not available: {native.unavailable_reason()}", file=sys.stderr)
        return 1
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.shapes or args.shapes_only:
        time_shapes(args.model, args.batch, max(args.repeats, 5))
    if args.shapes_only:
        return 0
    paired = benches(args.model, args.batch, args.against)
    for name, bench in paired.items():
        loss, grad_norm = one_step(bench)
        print(f"{name}: loss {loss:.7f}, grad norm {grad_norm:.7f}, oneDNN norm calls {onednn_norm_calls(bench)}")
    b = args.against
    times: dict[str, list[float]] = {name: [] for name in paired}
    for r in range(args.repeats):
        for name in (("xla", b) if r % 2 == 0 else (b, "xla")):
            times[name].append(paired[name].run_repeat("train", args.steps))
    ratios = [x / y for x, y in zip(times["xla"], times[b], strict=True)]
    print(f"\n{args.model} fp32 batch {args.batch}: norm core xla {1e3 * statistics.median(times['xla']):.1f} "
          f"ms/step, {b} {1e3 * statistics.median(times[b]):.1f} ms/step; {b} speed, paired over "
          f"{args.repeats} repeats: {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
