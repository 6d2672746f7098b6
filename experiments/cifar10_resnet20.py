"""ResNet-20 on the real CIFAR-10 training images in ../shared/data: validation accuracy and time per epoch.

The shared folder holds the 50,000 CIFAR-10 training images as JPEGs in an image-folder layout
(``train/<class>/NNNN.jpg``) inside a tarball. This script unpacks it once into ``--work`` (default
``.cache/cifar10-jpeg``), lets ``jresnet.data.imagefolder`` decode and cache it, and trains with He et
al.'s recipe from ``configs/cifar10_resnet20.yaml`` (batch 128, SGD 0.1 momentum 0.9, wd 1e-4, crop 4 +
flip) for ``--epochs`` epochs on a cosine schedule, since the paper's 64k-step multistep schedule is days
of CPU time here. The split: 20% of the 50k carved off as a test set (CIFAR's official test batch is not
in the shared folder), then 10% of the rest as validation.

    python experiments/cifar10_resnet20.py --epochs 3
    python experiments/cifar10_resnet20.py --epochs 1 --per-class 500   # a 5k-image subset, for a quick look

It prints one row per epoch (validation accuracy, seconds) and the test accuracy at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARBALL = REPO.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"


def unpack(work: Path, per_class: int | None) -> Path:
    """Unpack the tarball (or its first ``per_class`` images of each class) into ``work``; returns the root."""
    root = work / (f"train-{per_class}" if per_class else "train-all")
    if (root / ".complete").exists():
        return root
    if not TARBALL.exists():
        raise SystemExit(f"{TARBALL} is missing: this experiment needs the shared CIFAR-10 JPEGs")
    shutil.rmtree(root, ignore_errors=True)
    counts: dict[str, int] = {}
    with tarfile.open(TARBALL) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            label = parts[-2]
            if per_class and counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            target = root / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, target.open("wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)
    (root / ".complete").write_text(json.dumps(counts))
    return root


def main() -> None:
    from jresnet.cli import apply_cpu_xla_flags, enable_compilation_cache

    apply_cpu_xla_flags()
    enable_compilation_cache()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=None, help="use only this many images per class")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "cifar10-jpeg")
    parser.add_argument("--out-dir", default=str(REPO / "runs"))
    args = parser.parse_args()

    from jresnet.train import loop
    from jresnet.train.config import load_config
    from jresnet.train.metrics import read_metrics

    t0 = time.perf_counter()
    root = unpack(args.work, args.per_class)
    print(f"unpacked to {root} in {time.perf_counter() - t0:.1f} s")
    cfg = load_config(REPO / "configs" / "cifar10_resnet20.yaml", [
        "data.name=imagefolder", f"data.root={root}", f"data.cache_dir={args.work / 'cache'}",
        "data.test_fraction=0.2", "data.val_fraction=0.1", f"train.epochs={args.epochs}", "optim.schedule=cosine",
        "optim.milestones=[]", f"train.out_dir={args.out_dir}", "train.resume=fresh",
        f"name=cifar10_resnet20_jpeg_{args.per_class or 'all'}_{args.epochs}ep"])
    result = loop.train(cfg)
    records = read_metrics(result.run_dir)
    vals = [r for r in records if r["kind"] == "val"]
    trains = [r for r in records if r["kind"] == "train"]
    print("\n| epoch | step | val accuracy | epoch seconds |\n|---|---|---|---|")
    previous = trains[0]["time"] if trains else 0.0
    for i, v in enumerate(vals, 1):
        print(f"| {i} | {v['step']} | {v['accuracy']:.4f} | {v['time'] - previous:.0f} |")
        previous = v["time"]
    print(f"\ntest accuracy {result.test_accuracy:.4f}; {result.images_per_second:.0f} train images/s; "
          f"compile {result.compile_seconds:.1f} s; run folder {result.run_dir}")


if __name__ == "__main__":
    main()
