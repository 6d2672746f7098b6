"""PyTorch references of resnet20, resnet18_cifar and resnet50, timed the way `experiments/bench.py` times jresnet.

torch is optional and never a dependency of jresnet. Install it into its own venv (the CPU wheel; the
pin matters, a plain ``torch`` would pull a multi-GB CUDA build)::

    python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch==2.13.0 numpy

This file imports nothing from jresnet or JAX, and runs in its own process (JAX and torch never share
one). It uses 2 threads (``torch.set_num_threads(2)``, the machine's cores; ``--threads`` to change).

- ``resnet20``: He et al. 2016's CIFAR net with option A shortcuts (strided subsampling plus
  zero-padded channels, as in akamaster's pytorch_resnet_cifar10); 269,722 parameters.
- ``resnet18_cifar``: kuangliu's pytorch-cifar ResNet-18 (3×3 stem, projection shortcuts);
  11,173,962 parameters.
- ``resnet50``: torchvision's ResNet-50 (v1.5, the stride on each bottleneck's 3×3), written out here
  with the same modules so that the CPU venv needs no torchvision build; 25,557,032 parameters.

Devices (``--device``): ``auto`` (the default) is CUDA when torch sees a GPU, else the CPU. On CUDA every
timed call ends with ``torch.cuda.synchronize()``; fp32 convolutions use cuDNN's default (TF32 allowed,
as JAX's default precision also allows on GPU). cuDNN picks algorithms by heuristics, torch's default;
``--cudnn-benchmark`` times them per shape instead, as XLA's autotuner does.

Variants (``--variant``):

- ``eager``: eager mode, contiguous (channels-first) tensors;
- ``eager_cl``: eager mode, model and input in ``torch.channels_last``;
- ``compile_cl``: channels_last, the normalisation + forward + loss under ``torch.compile`` (default
  mode, inductor; needs a C compiler), the optimiser eager.

The train step matches jresnet's: uint8 (B, C, H, W) images in, ``(x/255 - mean)/std``, forward and
backward with BatchNorm in train mode, cross-entropy, SGD with momentum 0.9 (foreach). bf16 runs the
forward and the loss under ``torch.autocast(device, torch.bfloat16)`` with float32 parameters. Inference
is the eval-mode forward under ``torch.inference_mode()`` on already-normalised images. "compile s" is
the wall time of the first train call (compilation plus one step; for eager, one step and allocations).

Run on its own (prints JSON)::

    /work/torchvenv/bin/python experiments/torch_reference.py --model resnet20 --variant eager_cl

or as a worker (``--serve``): one JSON line when ready, then one JSON reply per command read from stdin,
{"cmd": "train" | "infer", "steps": n} or {"cmd": "quit"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.5, 0.25
VARIANTS = ("eager", "eager_cl", "compile_cl")


def _init_convs(net: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolution kernels, as kuangliu's and torchvision's ResNets initialise them."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut, then ReLU; ``option`` "A" or "B" when the shape changes."""

    def __init__(self, cin: int, planes: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.option = "identity" if stride == 1 and cin == planes else option
        self.stride, self.extra = stride, planes - cin
        self.shortcut = nn.Sequential()
        if self.option == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option == "A":
            e = self.extra
            s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, e // 2, e - e // 2))
        else:
            s = self.shortcut(x)
        return F.relu(out + s)


class CifarResNet(nn.Module):
    """3×3 stem, stages of basic blocks, global average pool, linear head."""

    def __init__(self, depths: tuple[int, ...], widths: tuple[int, ...], strides: tuple[int, ...], stem: int,
                 option: str, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, c = [], stem
        for depth, width, stride in zip(depths, widths, strides, strict=True):
            for b in range(depth):
                blocks.append(BasicBlock(c, width, stride if b == 0 else 1, option))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(c, num_classes)
        _init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: 1×1 → 3×3 (stride) → 1×1 (4× planes), projection when the shape changes."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ImageNetResNet(nn.Module):
    """torchvision's ResNet layout: 7×7 stride-2 stem, 3×3 stride-2 max pool, four stages, linear head."""

    def __init__(self, depths: tuple[int, ...], in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, c = [], 64
        for i, depth in enumerate(depths):
            for b in range(depth):
                blocks.append(Bottleneck(c, 64 * 2**i, 2 if i > 0 and b == 0 else 1))
                c = 4 * 64 * 2**i
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        _init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        out = self.blocks(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


MODELS = ("resnet20", "resnet18_cifar", "resnet50")


def create(name: str, in_channels: int = 3) -> nn.Module:
    """``resnet20`` (option A), ``resnet18_cifar`` (kuangliu, projection shortcuts) or ``resnet50``."""
    if name == "resnet50":
        return ImageNetResNet((3, 4, 6, 3), in_channels)
    if name == "resnet20":
        return CifarResNet((3, 3, 3), (16, 32, 64), (1, 2, 2), 16, "A", in_channels)
    if name == "resnet18_cifar":
        return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2), 64, "B", in_channels)
    raise ValueError(f"torch reference has {', '.join(MODELS)}; got {name!r}")


class Runner:
    """A torch model in one variant at one batch size and dtype, warmed up and ready to time."""

    def __init__(self, model: str, variant: str, batch: int, dtype: str, input_shape: tuple[int, int, int],
                 seed: int = 0, warmup: int = 2, device: str = "auto", cudnn_benchmark: bool = False) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":  # off is torch's default; on, cuDNN times its algorithms per shape
            torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.manual_seed(seed)
        c, h, w = input_shape
        self.channels_last = variant != "eager"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = create(model, c).to(self.device, memory_format=self.memory_format)
        self.bf16 = dtype == "bf16"
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, foreach=True)
        gen = torch.Generator().manual_seed(seed)
        num_classes = next(m for m in reversed(list(self.net.modules())) if isinstance(m, nn.Linear)).out_features
        self.images = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8, generator=gen).to(self.device)
        self.labels = torch.randint(0, num_classes, (batch,), dtype=torch.int64, generator=gen).to(self.device)
        self.inputs = self._normalize(self.images)
        fwd_loss = self._forward_loss
        self.infer_net: Any = self.net
        if variant == "compile_cl":
            fwd_loss = torch.compile(self._forward_loss)
            self.infer_net = torch.compile(self.net)
        self._fwd_loss = fwd_loss
        self.info: dict[str, Any] = {
            "variant": f"torch-{variant}", "model": model, "batch": batch, "dtype": dtype,
            "input_shape": list(input_shape), "params": sum(p.numel() for p in self.net.parameters()),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(self.device),
        }
        if self.device.type == "cuda":
            self.info["gpu"] = torch.cuda.get_device_name(self.device)
            self.info["cudnn_benchmark"] = cudnn_benchmark
        start = time.perf_counter()
        self.run("train", 1)
        self.info["compile_train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        self.run("infer", 1)
        self.info["compile_infer_s"] = time.perf_counter() - start
        for _ in range(warmup):
            self.run("train", 1)
            self.run("infer", 1)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255.0 - MEAN) / STD
        return x.contiguous(memory_format=self.memory_format)

    def _autocast(self) -> Any:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self._normalize(images)
        with self._autocast():
            return F.cross_entropy(self.net(x), labels)

    def run(self, kind: str, steps: int) -> float:
        """Run ``steps`` calls of ``kind``, then wait for the device; returns wall seconds per call."""
        start = time.perf_counter()
        if kind == "train":
            self.net.train()
            for _ in range(steps):
                loss = self._fwd_loss(self.images, self.labels)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        elif kind == "infer":
            self.net.eval()
            with torch.inference_mode(), self._autocast():
                for _ in range(steps):
                    self.infer_net(self.inputs)
            self.net.train()
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) / steps


def serve(runner: Runner, out: TextIO) -> None:
    """The worker protocol: print the ready line, then answer commands from stdin."""
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


def _parse_input(text: str) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    return c, h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", choices=MODELS)
    parser.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU), cpu or cuda")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="on CUDA, let cuDNN time its algorithms per shape (torch.backends.cudnn.benchmark)")
    parser.add_argument("--variant", default="eager_cl", choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--input", type=_parse_input, default=(3, 32, 32), help="C x H x W")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="run as a worker of experiments/bench.py")
    parser.add_argument("--count-params", action="store_true", help="print parameter counts and exit")
    args = parser.parse_args(argv)
    out = os.fdopen(os.dup(1), "w", buffering=1)  # JSON only; everything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    torch.set_num_threads(args.threads)
    if args.count_params:
        counts = {n: sum(p.numel() for p in create(n).parameters()) for n in MODELS}
        out.write(json.dumps(counts) + "\n")
        return 0
    runner = Runner(args.model, args.variant, args.batch, args.dtype, args.input, device=args.device,
                    cudnn_benchmark=args.cudnn_benchmark)
    if args.serve:
        serve(runner, out)
        return 0
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
