"""The ``jresnet`` command: train, eval, summary, shapes, check, bench.

The CLI is an entry point, so it may set XLA flags before JAX starts its backend (importing the
library never does). Every user mistake ends in one clear line on stderr and exit status 2; a model
that does not fit its input ends with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from jresnet.host_allocator import reexec_with_preferred_allocator

# Measured on 2-core Zen 4 (see README, Performance): XLA's "ynn" path for single convolutions is
# 1.2–1.45× slower than the default emitter for ResNet train steps. Set only by our entry points.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# oneDNN's OpenMP threads (jresnet.native) sleep between convolutions instead of spinning, which leaves the
# cores to XLA's own threads for the elementwise work in between: resnet20 train step ~1.03x, faster in 5
# of 6 process pairs on the 2-core VM (README, Performance). Read when libgomp loads, hence set here.
CPU_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_cpu_xla_flags() -> None:
    """Add jresnet's CPU XLA flags to ``XLA_FLAGS`` unless the user set that flag already, and set
    `CPU_ENVIRONMENT`'s variables where the user has not.

    Must run before JAX initialises its backend and before the oneDNN kernels load; it is a no-op
    afterwards, so call it first thing. ``JRESNET_XLA_FLAGS=0`` opts out of both.
    """
    if os.environ.get("JRESNET_XLA_FLAGS", "1") == "0":
        return
    for name, value in CPU_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_XLA_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags


def enable_compilation_cache() -> None:
    """Keep XLA's compiled programs in ``~/.cache/jresnet/xla`` (``JAX_COMPILATION_CACHE_DIR`` wins), so a
    second ``jresnet train`` of the same model skips most of its compile time. Entry points only."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "jresnet", "xla")
        jax.config.update("jax_compilation_cache_dir", cache)


def _parse_chw(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like 3x224x224 (C x H x W); got {text!r}") from None
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--input must be three positive ints C x H x W; got {text!r}")
    return values  # type: ignore[return-value]


def _padding(text: str) -> int | str | tuple[int, int]:
    if text.lower() in ("same", "valid"):
        return text.lower()
    if "," in text:
        lo, hi = text.split(",", 1)
        return (int(lo), int(hi))
    return int(text)


def _cmd_shapes(args: argparse.Namespace) -> int:
    from jresnet.shapes import ConvGeometry

    print(ConvGeometry(args.kernel, args.stride, args.padding, args.dilation).explain(args.size))
    return 0


def _model_for(args: argparse.Namespace) -> object:
    from flax import nnx

    from jresnet.registry import create_model

    overrides = {"in_channels": args.input[0]}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    return nnx.eval_shape(lambda: create_model(args.model, **overrides))


def _cmd_summary(args: argparse.Namespace) -> int:
    from jresnet.summary import summary

    print(summary(_model_for(args), args.input, name=args.model).table())  # type: ignore[arg-type]
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from jresnet.summary import check_model

    result = check_model(_model_for(args), args.input, name=args.model)  # type: ignore[arg-type]
    print(f"ok: {args.model} on {'×'.join(map(str, args.input))} -> {result.output_shape}, "
          f"{result.total_params:,} params, {result.total_macs:,} MACs per example")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from jresnet.train.loop import train_from_cli

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.exists(config):  # `jresnet train optim.lr=0.05`
        config, overrides = None, [config, *overrides]
    return train_from_cli(config, overrides)


def _cmd_eval(args: argparse.Namespace) -> int:
    from jresnet.train.loop import eval_from_cli

    return eval_from_cli(args.run_dir, which=args.which)


def _cmd_bench(args: argparse.Namespace) -> int:
    from jresnet.bench import bench_from_cli

    return bench_from_cli(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jresnet`` command."""
    parser = argparse.ArgumentParser(prog="jresnet", description="Typed, shape-checked ResNets for JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: resnet20 on the built-in digits)")
    p.add_argument("config", nargs="?", default=None, help="YAML config (configs/*.yaml); default: digits")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.05 train.epochs=3")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a run's best (or last) checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--which", choices=("best", "last"), default="best")
    p.set_defaults(func=_cmd_eval)

    for name, func, helptext in (("summary", _cmd_summary, "per-layer table of a model"),
                                 ("check", _cmd_check, "check that a model fits an input size")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("model", help="a registered model, e.g. resnet50 (see `jresnet summary --list`)")
        p.add_argument("--input", type=_parse_chw, default=(3, 224, 224), help="C x H x W, e.g. 3x224x224")
        p.add_argument("--num-classes", type=int, default=None)
        p.set_defaults(func=func)

    p = sub.add_parser("shapes", help="explain the output size of one convolution or pooling window")
    p.add_argument("--size", type=int, required=True, help="input size along one axis (H or W)")
    p.add_argument("--kernel", type=int, required=True)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=_padding, default=0, help="int, same, valid, or lo,hi")
    p.add_argument("--dilation", type=int, default=1)
    p.set_defaults(func=_cmd_shapes)

    p = sub.add_parser("bench", help="train-step and inference throughput (see experiments/bench.py)")
    p.add_argument("--models", default="resnet20,resnet18_cifar")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp32,bf16")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.set_defaults(func=_cmd_bench)
    return parser


# The commands that run steps: worth the second start-up that re-executing under another malloc costs.
PRELOAD_COMMANDS = ("train", "eval", "bench")


def run() -> NoReturn:
    """The console script: `main` under jemalloc or tcmalloc when the command runs steps and one is
    installed (`jresnet.host_allocator`; see README, Performance), then exit with its status."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in PRELOAD_COMMANDS:
        try:
            reexec_with_preferred_allocator()
        except ValueError as err:
            print(f"jresnet {command}: error: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:  # exec failed: run on the malloc we have
            print(f"jresnet {command}: note: could not restart under another malloc ({err}); "
                  "running on the system's", file=sys.stderr)
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jresnet`` command; returns the exit status."""
    apply_cpu_xla_flags()
    enable_compilation_cache()
    args = build_parser().parse_args(argv)
    from jresnet.typing import ShapeError

    if os.environ.get("JRESNET_DEBUG") == "1":  # full tracebacks, for developers
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except ShapeError as err:
        print(f"jresnet {args.command}: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as err:  # bad config, data, input, folders, disks
        print(f"jresnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ArithmeticError as err:  # a NaN/Inf loss (jresnet.train.loop.NonFiniteLossError)
        print(f"jresnet {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:  # `train` says where it stopped and what it saved, in one line
        print(f"jresnet {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    run()
