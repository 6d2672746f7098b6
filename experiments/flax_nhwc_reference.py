"""A plain Flax NNX reference of resnet20, resnet18_cifar and resnet50 in NHWC, for `experiments/bench.py`.

This is what a Flax user would write without jresnet: ``nnx.Conv`` / ``nnx.BatchNorm`` (momentum 0.9,
eps 1e-5) / ``nnx.Linear`` on (B, H, W, C) images, no shape checks, no layout changes. It is the
yardstick for jresnet's overhead: jresnet computes in NHWC inside, so it should run as fast as this.

- ``resnet20``: He et al. 2016's CIFAR net, 16/32/64 planes, option A shortcuts (strided subsampling
  plus zero-padded channels); 269,722 parameters.
- ``resnet18_cifar``: kuangliu's CIFAR ResNet-18, a 3×3 stem and projection (1×1 conv + BN) shortcuts;
  11,173,962 parameters.
- ``resnet50``: torchvision's ResNet-50 (v1.5: the stride on the 3×3 of each bottleneck), a 7×7 stride-2
  stem and a 3×3 stride-2 max pool, 1000 classes at 224×224; 25,557,032 parameters.

The train step is minimal and mirrors jresnet's: ``nnx.split`` once, then one ``jax.jit`` over
(params, batch_stats, opt_state, uint8 images, labels) that normalises the images, runs forward and
backward with BatchNorm in train mode, applies optax SGD with momentum 0.9 and returns loss and
accuracy (jresnet's step also returns the gradient norm and the learning rate). bf16 makes every layer
compute in bfloat16 (``dtype=``) with float32 parameters and float32 BatchNorm statistics.

Run on its own (prints JSON)::

    python experiments/flax_nhwc_reference.py --model resnet20 --batch 128 --dtype fp32 --repeats 5

or as a worker of `experiments/bench.py` (``--serve``: one JSON line when ready, then one JSON reply
per command line read from stdin: {"cmd": "train" | "infer", "steps": n} or {"cmd": "quit"}).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
MEAN, STD = 0.5, 0.25
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming normal, fan_out


def conv(cin: int, cout: int, k: int, stride: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free K×K conv with PyTorch's symmetric padding (K-1)/2."""
    p = (k - 1) // 2
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)), use_bias=False,
                    kernel_init=_conv_init, dtype=dtype, rngs=rngs)


def bn(c: int, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 in PyTorch's convention is 0.9 in Flax's)."""
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut, then ReLU. ``shortcut`` is "A" or "B"."""

    def __init__(self, cin: int, planes: int, stride: int, shortcut: str, dtype: Any, rngs: nnx.Rngs) -> None:
        self.conv1 = conv(cin, planes, 3, stride, dtype, rngs)
        self.bn1 = bn(planes, dtype, rngs)
        self.conv2 = conv(planes, planes, 3, 1, dtype, rngs)
        self.bn2 = bn(planes, dtype, rngs)
        self.stride, self.extra = stride, planes - cin
        self.kind = "identity" if stride == 1 and cin == planes else shortcut
        if self.kind == "B":
            self.proj = conv(cin, planes, 1, stride, dtype, rngs)
            self.proj_bn = bn(planes, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.kind == "identity":
            s = x
        elif self.kind == "A":  # every S-th pixel, zero channels on both sides
            e = self.extra
            s = jnp.pad(x[:, ::self.stride, ::self.stride, :], ((0, 0), (0, 0), (0, 0), (e // 2, e - e // 2)))
        else:
            s = self.proj_bn(self.proj(x))
        return jax.nn.relu(y + s)


class CifarResNet(nnx.Module):
    """A 3×3-stem CIFAR ResNet of basic blocks on (B, H, W, C) images."""

    def __init__(self, depths: tuple[int, ...], widths: tuple[int, ...], strides: tuple[int, ...], stem: int,
                 shortcut: str, *, in_channels: int = 3, num_classes: int = 10, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs) -> None:
        self.conv1 = conv(in_channels, stem, 3, 1, dtype, rngs)
        self.bn1 = bn(stem, dtype, rngs)
        blocks, c = [], stem
        for depth, width, stride in zip(depths, widths, strides, strict=True):
            for b in range(depth):
                blocks.append(BasicBlock(c, width, stride if b == 0 else 1, shortcut, dtype, rngs))
                c = width
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(c, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


class Bottleneck(nnx.Module):
    """conv1×1-BN-ReLU-conv3×3(stride)-BN-ReLU-conv1×1(4×)-BN plus a shortcut, then ReLU."""

    def __init__(self, cin: int, planes: int, stride: int, dtype: Any, rngs: nnx.Rngs) -> None:
        cout = 4 * planes
        self.conv1, self.bn1 = conv(cin, planes, 1, 1, dtype, rngs), bn(planes, dtype, rngs)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride, dtype, rngs), bn(planes, dtype, rngs)
        self.conv3, self.bn3 = conv(planes, cout, 1, 1, dtype, rngs), bn(cout, dtype, rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.proj, self.proj_bn = conv(cin, cout, 1, stride, dtype, rngs), bn(cout, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(y + (self.proj_bn(self.proj(x)) if self.project else x))


class ImageNetResNet(nnx.Module):
    """A 7×7-stem ImageNet ResNet of bottleneck blocks on (B, H, W, C) images."""

    def __init__(self, depths: tuple[int, ...], *, in_channels: int = 3, num_classes: int = 1000,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(in_channels, 64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                              kernel_init=_conv_init, dtype=dtype, rngs=rngs)
        self.bn1 = bn(64, dtype, rngs)
        blocks, c = [], 64
        for i, depth in enumerate(depths):
            for b in range(depth):
                blocks.append(Bottleneck(c, 64 * 2**i, 2 if i > 0 and b == 0 else 1, dtype, rngs))
                c = 4 * 64 * 2**i
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(c, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


MODELS = ("resnet20", "resnet18_cifar", "resnet50")


def create(name: str, *, in_channels: int = 3, dtype: Any = jnp.float32,
           seed: int = 0) -> CifarResNet | ImageNetResNet:
    """``resnet20`` (option A, 16/32/64), ``resnet18_cifar`` (projection shortcuts, 64..512) or ``resnet50``."""
    rngs = nnx.Rngs(seed)
    if name == "resnet50":
        return ImageNetResNet((3, 4, 6, 3), in_channels=in_channels, dtype=dtype, rngs=rngs)
    if name == "resnet20":
        return CifarResNet((3, 3, 3), (16, 32, 64), (1, 2, 2), 16, "A", in_channels=in_channels, dtype=dtype,
                           rngs=rngs)
    if name == "resnet18_cifar":
        return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2), 64, "B", in_channels=in_channels,
                           dtype=dtype, rngs=rngs)
    raise ValueError(f"flax reference has {', '.join(MODELS)}; got {name!r}")


def num_params(model: nnx.Module) -> int:
    """Trainable parameters."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def make_steps(model: nnx.Module, tx: optax.GradientTransformation, dtype: Any) -> tuple[Any, ...]:
    """Split once; return (train_step, forward, params, batch_stats, opt_state).

    ``train_step(params, stats, opt_state, images_uint8_nhwc, labels)`` -> (params, stats, opt_state,
    metrics), jitted with the first three donated; ``forward(params, stats, x)`` is the jitted eval-mode
    forward on normalised images.
    """
    model.train()
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.train()

    def loss_fn(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
        m = nnx.merge(graphdef, p, s, copy=True)
        logits = m(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, nnx.state(m, nnx.BatchStat))

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(p: Any, s: Any, opt_state: Any, images: jax.Array, y: jax.Array) -> tuple[Any, ...]:
        x = ((images.astype(jnp.float32) / 255.0 - MEAN) / STD).astype(dtype)
        (loss, (logits, s)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y)
        updates, opt_state = tx.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        return p, s, opt_state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    @jax.jit
    def forward(p: Any, s: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(eval_graphdef, p, s, copy=True)(x)

    return train_step, forward, params, stats, tx.init(params)


class Runner:
    """A compiled reference model at one batch size and dtype, ready to time (same protocol as the
    other workers of `experiments/bench.py`)."""

    def __init__(self, model: str, batch: int, dtype: str, input_shape: tuple[int, int, int], seed: int = 0,
                 warmup: int = 1) -> None:
        c, h, w = input_shape
        net = create(model, in_channels=c, dtype=DTYPES[dtype], seed=seed)
        self.info: dict[str, Any] = {"variant": "flax-ref", "model": model, "batch": batch, "dtype": dtype,
                                     "input_shape": list(input_shape), "params": num_params(net),
                                     "xla_flags": os.environ.get("XLA_FLAGS", "")}
        train_step, forward, self.params, self.stats, self.opt_state = make_steps(
            net, optax.sgd(0.01, momentum=0.9), DTYPES[dtype])
        rng = np.random.default_rng(seed)
        self.images = jnp.asarray(rng.integers(0, 256, (batch, h, w, c), dtype=np.uint8))
        self.labels = jnp.asarray(rng.integers(0, net.fc.out_features, (batch,), dtype=np.int32))
        self.inputs = ((self.images.astype(jnp.float32) / 255.0 - MEAN) / STD).astype(DTYPES[dtype])
        self.eval_params = jax.tree.map(jnp.copy, self.params)  # the train step donates its inputs
        self.eval_stats = jax.tree.map(jnp.copy, self.stats)
        t0 = time.perf_counter()
        lowered = train_step.lower(self.params, self.stats, self.opt_state, self.images, self.labels)
        t1 = time.perf_counter()
        self._train = lowered.compile()
        t2 = time.perf_counter()
        lowered_f = forward.lower(self.eval_params, self.eval_stats, self.inputs)
        t3 = time.perf_counter()
        self._forward = lowered_f.compile()
        t4 = time.perf_counter()
        self.info.update(lower_train_s=t1 - t0, compile_train_s=t2 - t1, lower_infer_s=t3 - t2,
                         compile_infer_s=t4 - t3)
        for _ in range(warmup):
            self.run("train", 1)
            self.run("infer", 1)

    def run(self, kind: str, steps: int) -> float:
        """Run ``steps`` calls of ``kind`` and block; returns wall seconds per call."""
        start = time.perf_counter()
        if kind == "train":
            metrics = None
            for _ in range(steps):
                self.params, self.stats, self.opt_state, metrics = self._train(
                    self.params, self.stats, self.opt_state, self.images, self.labels)
            jax.block_until_ready((self.params, self.stats, self.opt_state, metrics))
        elif kind == "infer":
            jax.block_until_ready([self._forward(self.eval_params, self.eval_stats, self.inputs)
                                   for _ in range(steps)])
        else:
            raise ValueError(f"unknown kind {kind!r}")
        return (time.perf_counter() - start) / steps


def serve(runner_factory: Callable[[], Any], out: TextIO) -> None:
    """The worker protocol: build, print the ready line, then answer commands from stdin."""
    runner = runner_factory()
    out.write(json.dumps({"ready": True, **runner.info}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            break
        reply: dict[str, Any]
        try:
            reply = {"seconds": runner.run(cmd["cmd"], int(cmd.get("steps", 1)))}
        except Exception as err:  # report, keep serving
            reply = {"error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _protocol_stdout() -> TextIO:
    """Keep the real stdout for JSON only; anything else printed (also by C code) goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _parse_input(text: str) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    return c, h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", choices=MODELS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    parser.add_argument("--input", type=_parse_input, default=(3, 32, 32), help="C x H x W")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="run as a worker of experiments/bench.py")
    parser.add_argument("--count-params", action="store_true", help="print parameter counts and exit")
    args = parser.parse_args(argv)
    out = _protocol_stdout()
    if args.count_params:
        counts = {name: num_params(create(name)) for name in MODELS}
        out.write(json.dumps(counts) + "\n")
        return 0

    def factory() -> Runner:
        return Runner(args.model, args.batch, args.dtype, args.input)

    if args.serve:
        serve(factory, out)
        return 0
    runner = factory()
    times: dict[str, list[float]] = {"train": [], "infer": []}
    for _ in range(args.repeats):
        for kind in times:
            times[kind].append(runner.run(kind, args.steps))
    result = {**runner.info, "train_s": times["train"], "infer_s": times["infer"],
              "train_img_s": args.batch / statistics.median(times["train"]),
              "infer_img_s": args.batch / statistics.median(times["infer"])}
    out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
