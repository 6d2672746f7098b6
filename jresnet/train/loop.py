"""The training loop: data, model, optimiser, the jitted step, evaluation, checkpoints and logs.

``train(cfg)`` runs a `RunConfig` in ``cfg.train.out_dir/cfg.name``; a second call with the same config
resumes from the newest checkpoint with the same data order and RNG, so its final parameters equal an
uninterrupted run's. Model selection uses the validation split only; the test split is evaluated once,
at the end, with the best checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jresnet.data import Dataset, Loader, dataset_stats, load_dataset, train_val_split
from jresnet.host_allocator import allocator_in_use
from jresnet.models import ResNet
from jresnet.registry import create_model
from jresnet.summary import check_model
from jresnet.train.checkpoint import Checkpoints
from jresnet.train.config import RunConfig, config_to_dict, load_config
from jresnet.train.metrics import MetricsLog, plot_curves, truncate_after, write_run_info
from jresnet.train.optim import build_optimizer
from jresnet.train.parallel import DataParallel, prefetch
from jresnet.train.progress import Progress
from jresnet.train.state import create_state
from jresnet.train.step import make_eval_step, make_train_step
from jresnet.typing import ShapeError

__all__ = ["DataSplits", "TrainResult", "eval_from_cli", "evaluate", "load_splits", "train", "train_from_cli"]


class NonFiniteLossError(ArithmeticError):
    """The loss or the gradients became NaN or Inf (``nan_policy: stop``)."""


@dataclass(frozen=True)
class DataSplits:
    """train / val / test `Dataset`s and the (mean, std) to normalise them with."""

    train: Dataset
    val: Dataset
    test: Dataset
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class TrainResult:
    """What a run produced: where, how far, how fast and how well."""

    run_dir: Path
    steps: int
    compile_seconds: float
    train_seconds: float
    images_per_second: float
    data_wait_fraction: float
    best_val_accuracy: float
    test_accuracy: float
    test_loss: float
    skipped_steps: int = 0
    state: Any = field(default=None, repr=False)


def load_splits(cfg: RunConfig) -> DataSplits:
    """Load the dataset and carve the seeded splits: test (when the source has none), then validation."""
    d = cfg.data
    splits = load_dataset(d.name, d.root, d.cache_dir)
    full = splits["train"]
    if "test" in splits:
        rest, test = full, splits["test"]
    else:
        rest, test = train_val_split(full, val_fraction=d.test_fraction, seed=cfg.train.seed + 1)
    train_set, val = train_val_split(rest, val_fraction=d.val_fraction, seed=cfg.train.seed)
    mean, std = dataset_stats(d.name, train_set)
    return DataSplits(train_set, val, test, tuple(map(float, mean)), tuple(map(float, std)))


def build_model(cfg: RunConfig, data: DataSplits) -> ResNet:
    """The configured model, sized for the data's channels and classes and checked against its images."""
    overrides = {"in_channels": data.train.image_shape[0], "num_classes": data.train.num_classes,
                 **dict(cfg.model.overrides)}
    model = create_model(cfg.model.name, rngs=cfg.train.seed, **overrides)
    try:
        check_model(model, data.train.image_shape, name=cfg.model.name)
    except ShapeError as err:
        c, h, w = data.train.image_shape
        raise ShapeError(f"model {cfg.model.name} does not fit the {c}×{h}×{w} images of {cfg.data.name}: {err}") \
            from None
    return model


def evaluate(eval_step: Any, params: Any, batch_stats: Any, data: Dataset, batch_size: int,
             dp: DataParallel) -> dict[str, float]:
    """Accuracy and mean loss over every example of ``data`` (the last batch padded and masked)."""
    loader = Loader(data, batch_size, shuffle=False, drop_last=False)
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for images, labels, mask in prefetch(loader.epoch(0), lambda b: dp.put_batch(b.images, b.labels, b.mask)):
        sums = jax.device_get(eval_step(params, batch_stats, images, labels, mask))
        for k in totals:
            totals[k] += float(sums[k])
    count = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count, "count": int(totals["count"])}


def _fingerprint(cfg: RunConfig, data: DataSplits) -> dict[str, Any]:
    """What must match for a run folder to be resumed: the model and the data it trains on."""
    return {"model": cfg.model.name, "model_overrides": dict(cfg.model.overrides), "dataset": cfg.data.name,
            "train_examples": len(data.train), "image_shape": list(data.train.image_shape),
            "num_classes": data.train.num_classes}


def _check_resumable(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    path = run_dir / "run.json"
    if not path.exists():
        path.write_text(json.dumps(fingerprint, indent=1))
        return
    saved = json.loads(path.read_text())
    diffs = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in fingerprint.items() if saved.get(k) != v]
    if diffs:
        raise ValueError(
            f"run folder {run_dir} was made by a different run ({'; '.join(diffs)}). Start fresh under another "
            f"name (name=...), or pass train.resume=fresh to move this folder aside and start over."
        )


def _move_aside(run_dir: Path) -> Path | None:
    """``train.resume=fresh``: rename an existing run folder to ``<name>.old-<time>``; nothing is deleted."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    target = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target, n = target.with_name(f"{target.name.split('~')[0]}~{n}"), n + 1
    run_dir.rename(target)
    return target


def _check_disk_space(run_dir: Path, state: Any, keep: int) -> None:
    """Fail before training when the checkpoints the run will keep cannot fit on the disk."""
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    need = state_bytes * (keep + 2) + (64 << 20)  # kept + best + one being written, plus logs
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise OSError(f"not enough free disk space in {run_dir}: the run's checkpoints need about "
                      f"{need / 2**20:.0f} MiB ({keep} kept + best + one in flight), {free / 2**20:.0f} MiB free. "
                      "Free space, lower train.keep_checkpoints, or set train.out_dir elsewhere.")


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        # "Not a directory" alone does not say which path is the file in the way; name it.
        blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else err.strerror or err
        raise PermissionError(f"cannot write to the run folder {run_dir}: {why}") from None


class _StopOnInterrupt:
    """Turn the first Ctrl-C (SIGINT) during training into a request to stop at the next step boundary.

    A KeyboardInterrupt raised wherever the signal lands could hit the moment the train step has been
    dispatched (its input state donated, so deleted) but its result not yet assigned, or the middle of an
    orbax save; then no consistent state is left to save. A second Ctrl-C raises at once, as usual.
    Signal handlers can only be set in the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread() is threading.main_thread():
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)


class _Timer:
    """Seconds spent waiting for data versus seconds overall, after compilation."""

    def __init__(self) -> None:
        self.data = 0.0
        self.start = time.perf_counter()

    def timed(self, batches: Iterator[Any]) -> Iterator[Any]:
        while True:
            t = time.perf_counter()
            try:
                item = next(batches)
            except StopIteration:
                return
            self.data += time.perf_counter() - t
            yield item

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def train(cfg: RunConfig, *, verbose: bool = True) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns its `TrainResult`."""
    t = cfg.train
    run_dir = Path(t.out_dir) / cfg.name
    if t.resume == "fresh" and (moved := _move_aside(run_dir)) is not None and verbose:
        print(f"moved the previous run folder aside to {moved}")
    _check_writable(run_dir)
    data = load_splits(cfg)
    model = build_model(cfg, data)
    dp = DataParallel()
    dp.check_batch_size(t.batch_size)
    loader = Loader(data.train, t.batch_size, shuffle=True, seed=t.seed, drop_last=True)
    per_epoch = loader.steps_per_epoch
    total = t.steps if t.steps is not None else t.epochs * per_epoch
    eval_every = t.eval_every or per_epoch
    ckpt_every = t.checkpoint_every or per_epoch

    tx, schedule = build_optimizer(cfg.optim, total)
    graphdef, state = create_state(model, tx, seed=t.seed, ema=cfg.optim.ema_decay is not None)
    del model
    _check_resumable(run_dir, _fingerprint(cfg, data))
    _check_disk_space(run_dir, state, t.keep_checkpoints)
    ckpts = Checkpoints(run_dir, t.keep_checkpoints)
    start = 0
    restored = ckpts.restore_latest(state, resuming=True)
    if restored is not None:
        state, start = restored
        if verbose:
            print(f"resuming {run_dir} from step {start}")
    # Only now, once the folder's checkpoints are known to fit this config, may its config.yaml change.
    host_malloc = allocator_in_use()
    write_run_info(run_dir, config_to_dict(cfg), {
        "devices": [str(d) for d in jax.devices()], "num_devices": dp.num_devices, "host_malloc": host_malloc,
        "seed": t.seed,
        "train_examples": len(data.train), "val_examples": len(data.val), "test_examples": len(data.test)})
    truncate_after(run_dir, start)
    state = dp.replicate(state)

    train_step = make_train_step(
        graphdef, tx, schedule, mean=data.mean, std=data.std, crop_padding=cfg.data.crop_padding,
        flip=cfg.data.flip, label_smoothing=cfg.optim.label_smoothing, precision=t.precision,
        ema_decay=cfg.optim.ema_decay, skip_nonfinite=t.nan_policy == "skip", shardings=dp.shardings)
    eval_step = make_eval_step(graphdef, mean=data.mean, std=data.std, precision=t.precision,
                               shardings=dp.shardings)
    c0 = time.perf_counter()  # compile both steps up front, so images/s and the ETA exclude it
    n = t.batch_size
    train_step = train_step.lower(state, *dp.put_batch(data.train.images[:n], data.train.labels[:n])).compile()
    eval_step = eval_step.lower(state.params, state.batch_stats, *dp.put_batch(
        data.train.images[:n], data.train.labels[:n], np.ones(n, bool))).compile()
    compile_seconds = time.perf_counter() - c0
    if verbose:
        print(f"{cfg.name}: {cfg.model.name} on {cfg.data.name} ({len(data.train)} train / {len(data.val)} val / "
              f"{len(data.test)} test), {total} steps of {t.batch_size} on {dp.num_devices} "
              f"{jax.devices()[0].platform} device(s), host malloc {host_malloc}; train step compiled in "
              f"{compile_seconds:.1f} s")

    log = MetricsLog(run_dir)
    timer = _Timer()
    pending: list[tuple[int, dict[str, Any]]] = []
    progress = Progress(total, start, enabled=verbose and t.progress)

    def flush() -> None:
        """Fetch the pending step metrics, stop on a non-finite loss, log them."""
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, fetched):
            if not bool(m["finite"]) and t.nan_policy == "stop":
                raise NonFiniteLossError(
                    f"the loss or the gradients became NaN/Inf at step {step} (loss={float(m['loss'])}, "
                    f"grad_norm={float(m['grad_norm'])}). The last good checkpoint is kept in {run_dir / 'checkpoints'}"
                    "; lower optim.lr, set optim.clip_norm, or set train.nan_policy=skip.")
        step, m = pending[-1][0], fetched[-1]
        record = log.log("train", step, loss=float(m["loss"]), accuracy=float(m["accuracy"]), lr=float(m["lr"]),
                         grad_norm=float(m["grad_norm"]),
                         images_per_second=(step - start) * t.batch_size / max(timer.elapsed, 1e-9))
        progress.update(step, record)
        pending.clear()

    def validate(step: int) -> None:
        flush()
        val = evaluate(eval_step, state.params, state.batch_stats, data.val, t.batch_size, dp)
        log.log("val", step, **val)
        progress.note(step, val_accuracy=val["accuracy"])
        if state.ema_params is not None:
            ema = evaluate(eval_step, state.ema_params, state.ema_batch_stats, data.val, t.batch_size, dp)
            log.log("ema_val", step, **ema)
        ckpts.save_if_best(step, state, val["accuracy"], val["loss"])

    step = start
    try:
        with progress, _StopOnInterrupt() as stop:
            while step < total:
                epoch, offset = divmod(step, per_epoch)
                batches = prefetch(loader.epoch(epoch, start_step=offset),
                                   lambda b: dp.put_batch(b.images, b.labels))
                for images, labels in timer.timed(batches):
                    state, metrics = train_step(state, images, labels)
                    step += 1
                    pending.append((step, metrics))
                    if step % t.log_every == 0 or step == total:
                        flush()
                    if step % eval_every == 0 or step == total:
                        validate(step)
                    if step % ckpt_every == 0 or step == total:
                        flush()
                        ckpts.save(step, state)
                    if step >= total:
                        break
                    if stop.requested:  # Ctrl-C, seen at a step boundary: the state is whole
                        raise KeyboardInterrupt
    except KeyboardInterrupt:
        flush()
        ckpts.save(step, state)
        ckpts.close()
        log.close()
        # One line, which the CLI prints as it is; a script calling train() sees it in the exception.
        raise KeyboardInterrupt(f"interrupted at step {step}: saved a checkpoint in {run_dir / 'checkpoints'}; "
                                "run the same command again to resume") from None
    except BaseException:  # NaN stop, full disk, anything: keep what is written, then report the error
        for close in (ckpts.close, log.close):
            try:
                close()
            except Exception:  # noqa: BLE001 - the error being raised is the one to report
                pass
        raise
    train_seconds = timer.elapsed
    ckpts.wait()

    best = ckpts.restore_best(state)
    final_state = best[0] if best is not None else state
    test = evaluate(eval_step, final_state.params, final_state.batch_stats, data.test, t.batch_size, dp)
    log.log("test", step, **test, checkpoint_step=best[1] if best else step)
    log.close()
    ckpts.close()
    plot_curves(run_dir)
    trained = max(step - start, 0)
    result = TrainResult(
        run_dir=run_dir, steps=step, compile_seconds=compile_seconds, train_seconds=train_seconds,
        images_per_second=trained * t.batch_size / max(train_seconds, 1e-9),
        data_wait_fraction=timer.data / max(train_seconds, 1e-9), best_val_accuracy=ckpts.best_accuracy,
        test_accuracy=test["accuracy"], test_loss=test["loss"], skipped_steps=int(jax.device_get(state.skipped)),
        state=state)
    (run_dir / "result.json").write_text(json.dumps(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items() if k != "state"}, indent=1))
    if verbose:
        print(f"done: test accuracy {test['accuracy']:.4f} ({test['count']} examples, checkpoint of step "
              f"{best[1] if best else step}), best val accuracy {ckpts.best_accuracy:.4f}")
        print(f"training wall time {train_seconds:.1f} s for {trained} steps ({result.images_per_second:.0f} images/s, "
              f"data wait {100 * result.data_wait_fraction:.1f}%), compile {compile_seconds:.1f} s; "
              f"run folder {run_dir}")
    return result


def train_from_cli(config: str | None, overrides: Sequence[str]) -> int:
    """``jresnet train [CONFIG] [overrides]``."""
    train(load_config(config, overrides))
    return 0


def eval_from_cli(run_dir: str, which: str = "best") -> int:
    """``jresnet eval RUN_DIR``: test accuracy of the run's best (or last) checkpoint."""
    folder = Path(run_dir)
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(f"{folder} is not a jresnet run folder (no config.yaml); pass the folder "
                                "`jresnet train` printed")
    cfg = load_config(folder / "config.yaml")
    data = load_splits(cfg)
    model = build_model(cfg, data)
    tx, _ = build_optimizer(cfg.optim, max(cfg.train.steps or 1, 1))
    graphdef, state = create_state(model, tx, seed=cfg.train.seed, ema=cfg.optim.ema_decay is not None)
    ckpts = Checkpoints(folder, cfg.train.keep_checkpoints)
    restored = ckpts.restore_best(state) if which == "best" else ckpts.restore_latest(state)
    ckpts.close()
    if restored is None:
        raise FileNotFoundError(f"{folder} has no checkpoint to evaluate")
    state, step = restored
    dp = DataParallel()
    eval_step = make_eval_step(graphdef, mean=data.mean, std=data.std, precision=cfg.train.precision,
                               shardings=dp.shardings)
    test = evaluate(eval_step, state.params, state.batch_stats, data.test, cfg.train.batch_size, dp)
    print(f"{folder}: {which} checkpoint (step {step}): test accuracy {test['accuracy']:.4f}, "
          f"loss {test['loss']:.4f} on {test['count']} examples")
    return 0

