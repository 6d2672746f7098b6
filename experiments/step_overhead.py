"""Where jresnet's train step spends more than a plain Flax NHWC step, lever by lever, on this backend.

On a GPU the CIFAR nets' steps at batch 128 take 3–5 ms, so they are bound by the number of kernels
and launches rather than by arithmetic, and what jresnet adds around the convolutions shows. This
times, in one process, interleaved (medians of ``--repeats``, each repeat ``--steps`` steps):

- ``jresnet``: jresnet's real train step (`jresnet.bench.ModelBench`), as shipped;
- ``conv lax``: the same under ``set_conv_core("lax")`` (JAX's own conv gradient, no custom_vjp);
- ``bn autodiff``: BatchNorm's training gradient by JAX's autodiff instead of `jresnet.norm_core`'s
  hand-written backward (same values; on CPU this also sets the norm core to "xla");
- ``conv lax + bn autodiff``: both;
- ``flax-ref``: `experiments/flax_nhwc_reference.py`'s step (plain ``nnx.Conv``/``nnx.BatchNorm``).

For each it also counts the kernels of the compiled step: the instructions of the optimised HLO's entry
computation that launch work (fusions, convolutions, custom calls, reductions, copies), and prints
paired ratios against ``flax-ref`` (> 1: faster than flax-ref).

    python experiments/step_overhead.py --models resnet20,resnet18_cifar --dtypes fp32,bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from jresnet import conv_core, norm_core
from jresnet.bench import ModelBench, default_input_shape
from jresnet.registry import get_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flax_nhwc_reference  # noqa: E402

# Entry instructions that only rename or pack buffers launch nothing.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id"}


def _opcode(instruction: str) -> str:
    """The opcode of one HLO instruction line: ``%name = SHAPE opcode(operands), ...``."""
    rest = instruction.split("=", 1)[1].lstrip()
    if rest.startswith("("):  # a tuple shape: skip its balanced parentheses
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                rest = rest[i + 1:]
                break
    else:
        rest = rest.split(None, 1)[1]
    return rest.lstrip().split("(", 1)[0]


def kernel_count(hlo_text: str) -> int:
    """Instructions of the optimised module's entry computation that launch work."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    body = entry[entry.index("{\n") + 2:entry.index("\n}")]  # the signature may hold layouts {1,0}
    return sum(1 for line in body.splitlines() if "=" in line and _opcode(line) not in _FREE)


def _autodiff_batch_norm(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    return norm_core.normalize(x32, *norm_core.batch_stats(x32), weight, bias, eps)


@contextlib.contextmanager
def lever(conv: str, autodiff_bn: bool) -> Iterator[None]:
    """Trace under a conv core and, optionally, with BatchNorm differentiated by JAX's autodiff."""
    previous = conv_core.set_conv_core(conv)
    previous_norm = norm_core.set_norm_core("xla" if autodiff_bn else norm_core.get_norm_core())
    shipped = norm_core.batch_norm_train
    if autodiff_bn:
        norm_core.batch_norm_train = _autodiff_batch_norm  # what the "xla" norm core calls
    try:
        yield
    finally:
        norm_core.batch_norm_train = shipped
        norm_core.set_norm_core(previous_norm)
        conv_core.set_conv_core(previous)


def build(model: str, dtype: str, batch: int) -> dict[str, tuple[Callable[[int], float], int]]:
    """name -> (run(steps) -> seconds per step, kernel count)."""
    variants: dict[str, tuple[Callable[[int], float], int]] = {}
    for name, conv, autodiff_bn in (("jresnet", "auto", False), ("conv lax", "lax", False),
                                    ("bn autodiff", "auto", True), ("conv lax + bn autodiff", "lax", True)):
        with lever(conv, autodiff_bn):
            bench = ModelBench(model, batch, dtype, checks_overhead=False, steps=1)
        variants[name] = (lambda n, b=bench: b.run_repeat("train", n), kernel_count(bench._train_exe.as_text()))
    ref = flax_nhwc_reference.Runner(model, batch, dtype, default_input_shape(get_spec(model)))
    variants["flax-ref"] = (lambda n: ref.run("train", n), kernel_count(ref._train.as_text()))
    return variants


def measure(model: str, dtype: str, batch: int, steps: int, repeats: int) -> None:
    variants = build(model, dtype, batch)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        names = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
        for name in names:
            times[name].append(variants[name][0](steps))
    ref = times["flax-ref"]
    print(f"\n{model} {dtype} batch {batch}, {jax.default_backend()} ({jax.devices()[0].device_kind}): "
          f"median of {repeats} repeats × {steps} steps\n")
    print("| variant | ms/step | img/s | kernels | speed vs flax-ref, paired (min–max) |\n|---|---:|---:|---:|---|")
    for name, (_, kernels) in variants.items():
        t = times[name]
        ratios = [b / a for a, b in zip(t, ref, strict=True)]
        print(f"| {name} | {1e3 * statistics.median(t):.3f} | {batch / statistics.median(t):,.0f} | {kernels} "
              f"| {statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            measure(model, dtype, args.batch, args.steps, args.repeats)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
