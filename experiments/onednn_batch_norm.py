"""Would BatchNorm (+ReLU) through oneDNN's batch-normalisation primitive speed up the CPU train step? A prototype.

jresnet computes BatchNorm with XLA (`jresnet.norm_core`); on CPU, XLA's library (ynn) reductions cannot fuse
a per-channel broadcast, so its forward writes x - mean to memory before the variance pass. oneDNN's primitive
(the one PyTorch's CPU BatchNorm uses) computes the statistics, normalises and applies the ReLU in its own
passes. This script compiles `experiments/onednn_batch_norm.cc` (FFI handlers for the forward with batch
statistics and the backward, optionally fused with the following ReLU) against the oneDNN that
`jresnet.native` uses, and times jresnet's real train step two ways in one process, alternating:

- **shipped**: jresnet as it is;
- **prototype**: every BasicBlock's bn1 + ReLU and bn2 through oneDNN (``--mode relu``, the default), or bn1
  + ReLU only (``--mode relu1``: bn2 stays XLA's and fuses into the residual add), or both without the
  ReLU fusion (``--mode plain``). The stem and the projection shortcuts keep XLA's BatchNorm.

It prints one train step's loss and gradient norm under each (the same to float rounding) and the paired
speed ratio (> 1: the prototype is faster). It is a measurement, not a feature: the prototype has no
higher-order gradients, no bf16 and no GPU path.

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python experiments/onednn_batch_norm.py --model resnet20 --repeats 9 --steps 3
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jresnet import blocks, native
from jresnet.bench import ModelBench

SOURCE = Path(__file__).with_name("onednn_batch_norm.cc")


def build(out_dir: Path) -> ctypes.CDLL:
    """Compile the prototype handlers, load them and register their FFI targets for the CPU."""
    found = native._onednn_prefix()
    if found is None or not native.available():
        raise SystemExit(f"oneDNN is not available: {native.unavailable_reason()}")
    prefix = found[0]
    native._loaded_library()  # load jresnet's own kernels (and libdnnl) first
    target = out_dir / "onednn_batch_norm.so"
    native._compile(prefix, ["g++"], target, source=SOURCE)  # the same command jresnet's own kernels build with
    lib = ctypes.CDLL(str(target))
    for name in ("ProtoBnFwd", "ProtoBnBwd"):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    lib.ProtoBnWorkspaceBytes.restype = ctypes.c_size_t
    lib.ProtoBnWorkspaceBytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_float]
    return lib


def make_batch_norm(lib: ctypes.CDLL) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array]]:
    """``bn(x, weight, bias, eps, relu) -> (y, mean, var)`` on NHWC float32, differentiable once."""
    f32 = partial(jax.ShapeDtypeStruct, dtype=jnp.float32)

    def workspace(shape: tuple[int, ...], eps: float, relu: bool) -> int:
        return int(lib.ProtoBnWorkspaceBytes(*shape, eps)) if relu else 1

    def forward(x: jax.Array, w: jax.Array, b: jax.Array, eps: float, relu: bool) -> tuple[Any, Any]:
        c = x.shape[-1]
        y, mean, var, ws = jax.ffi.ffi_call("ProtoBnFwd", (f32(x.shape), f32((c,)), f32((c,)), jax.ShapeDtypeStruct(
            (workspace(x.shape, eps, relu),), jnp.uint8)))(x, w, b, eps=np.float32(eps), relu=relu)
        return (y, mean, var), (x, mean, var, w, ws)

    def backward(eps: float, relu: bool, res: tuple[jax.Array, ...], cts: tuple[jax.Array, ...]) -> tuple[Any, ...]:
        x, mean, var, w, ws = res
        c = x.shape[-1]
        # the statistics feed only the running averages, which the loss does not see: their cotangents are 0
        return tuple(jax.ffi.ffi_call("ProtoBnBwd", (f32(x.shape), f32((c,)), f32((c,))))(
            x, cts[0], mean, var, w, ws, eps=np.float32(eps), relu=relu))

    @partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def bn(x: jax.Array, w: jax.Array, b: jax.Array, eps: float, relu: bool) -> tuple[jax.Array, ...]:
        return forward(x, w, b, eps, relu)[0]

    bn.defvjp(forward, backward)
    return bn


def patched_block_forward(bn: Callable[..., Any], mode: str) -> Callable[..., jax.Array]:
    """A BasicBlock forward whose BatchNorms run through the prototype, as ``mode`` says."""
    shipped = blocks.BasicBlock.forward_nhwc

    def apply(layer: Any, x: jax.Array, relu: bool) -> jax.Array:
        y, mean, var = bn(x, layer.weight[...], layer.bias[...], layer.eps, relu)
        mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        n, m = x.shape[0] * x.shape[1] * x.shape[2], layer.momentum
        layer.running_mean[...] = m * layer.running_mean[...] + (1 - m) * mean
        layer.running_var[...] = m * layer.running_var[...] + (1 - m) * var * (n / max(n - 1, 1))
        return y

    def forward(self: blocks.BasicBlock, x: jax.Array) -> jax.Array:
        if self.bn1.use_running_average:
            return shipped(self, x)
        out = apply(self.bn1, self.conv1.forward_nhwc(x), relu=mode != "plain")
        out = jax.nn.relu(out) if mode == "plain" else out
        conv2 = self.conv2.forward_nhwc(out)
        out = self.bn2.forward_nhwc(conv2) if mode == "relu1" else apply(self.bn2, conv2, relu=False)
        return jax.nn.relu(self.residual_add(out, self.shortcut_nhwc(x)))

    return forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--mode", default="relu", choices=("relu", "relu1", "plain"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bn = make_batch_norm(build(Path(tmp)))
        shipped_forward = blocks.BasicBlock.forward_nhwc
        benches = {"shipped": ModelBench(args.model, args.batch, "fp32", checks_overhead=False, steps=1)}
        blocks.BasicBlock.forward_nhwc = patched_block_forward(bn, args.mode)
        try:
            benches["prototype"] = ModelBench(args.model, args.batch, "fp32", checks_overhead=False, steps=1)
        finally:
            blocks.BasicBlock.forward_nhwc = shipped_forward
        for name, b in benches.items():
            _, metrics = b._train_exe(jax.tree.map(jnp.copy, b.state), b.images, b.labels)
            print(f"{name}: loss {float(metrics['loss']):.7f}, grad norm {float(metrics['grad_norm']):.7f}")
        times: dict[str, list[float]] = {name: [] for name in benches}
        for r in range(args.repeats):
            for name in (("shipped", "prototype") if r % 2 == 0 else ("prototype", "shipped")):
                times[name].append(benches[name].run_repeat("train", args.steps))
    ratios = [a / b for a, b in zip(times["shipped"], times["prototype"], strict=True)]
    print(f"\n{args.model} fp32 batch {args.batch}, mode {args.mode}: shipped "
          f"{1e3 * statistics.median(times['shipped']):.1f} ms/step, prototype "
          f"{1e3 * statistics.median(times['prototype']):.1f} ms/step; prototype speed, paired: "
          f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
