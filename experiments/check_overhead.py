"""Do the shape checks cost anything under jit? A jitted resnet50 forward with checks on versus off.

jresnet's checks (its own `ShapeError` checks and jaxtyping+beartype) run while JAX traces, so the
compiled program is the same either way and a jitted call should cost the same. This script measures
it: two jitted forwards of the same model and weights, one traced with checks on and one with
``jresnet.set_checks(False)``, timed alternately (A B A B ...), medians over ``--repeats`` repeats of
``--calls`` calls each. It also times the tracing itself (``jax.jit(...).trace``), which is where the
checks do cost, once.

    python experiments/check_overhead.py                 # resnet50, batch 8, 3×224×224
    python experiments/check_overhead.py --batch 2 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jresnet
from jresnet.functional import apply, init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()

    graphdef, params, stats = init(jresnet.create_model(args.model))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size), np.float32))

    def make_forward():  # a new function each time: JAX caches traces per function
        def forward(p, s, images):
            return apply(graphdef, p, s, images, train=False)[0]
        return forward

    fns, trace_s, hlo = {}, {}, {}
    for label, on in (("checks on", True), ("checks off", False)):
        previous = jresnet.set_checks(on)
        try:
            t = time.perf_counter()
            traced = jax.jit(make_forward()).trace(params, stats, x)
            trace_s[label] = time.perf_counter() - t
            lowered = traced.lower()
            hlo[label] = lowered.as_text()
            fns[label] = lowered.compile()
        finally:
            jresnet.set_checks(previous)
    same_program = hlo["checks on"] == hlo["checks off"]

    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm up
        jax.block_until_ready(fn(params, stats, x))
    for _ in range(args.repeats):
        for label, fn in fns.items():  # alternate, so machine drift hits both
            t = time.perf_counter()
            for _ in range(args.calls):
                out = fn(params, stats, x)
            jax.block_until_ready(out)
            times[label].append((time.perf_counter() - t) / args.calls)

    on, off = statistics.median(times["checks on"]), statistics.median(times["checks off"])
    print(f"{args.model}, batch {args.batch}, 3×{args.size}×{args.size}, {jax.devices()[0].platform}; "
          f"medians of {args.repeats} repeats × {args.calls} calls")
    print("| variant | jitted forward (ms) | trace (s) |\n|---|---|---|")
    for label in fns:
        print(f"| {label} | {1e3 * statistics.median(times[label]):.1f} | {trace_s[label]:.2f} |")
    print(f"ratio on/off: {on / off:.3f}; identical HLO with and without checks: {same_program}")


if __name__ == "__main__":
    main()
