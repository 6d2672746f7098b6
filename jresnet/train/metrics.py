"""Run logging: metrics as JSON lines (mirrored to CSV), the run's environment, and training curves.

A run folder holds:

- ``metrics.jsonl``: one JSON object per record, flushed as it is written, so a killed run keeps every
  record it logged. Each record has ``step`` (int) and ``kind`` ("train", "val", "test", "ema_val", ...)
  and any scalars, plus ``time`` (Unix seconds).
- ``metrics.csv``: the same records as a table, rewritten from the JSONL by `MetricsLog.flush_csv`
  and `MetricsLog.close`. Its header is the union of keys seen, in first-seen order.
- ``config.yaml`` and ``env.json``: from `write_run_info`.
- ``curves.png``: from `plot_curves`, which reads the keys ``loss``, ``accuracy`` and ``lr``.

On resume, call `truncate_after` with the restored step first, so no step is logged twice.

This module imports no JAX, and imports matplotlib only inside `plot_curves`.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import io
import json
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

__all__ = [
    "CSV_NAME",
    "METRICS_NAME",
    "MetricsLog",
    "plot_curves",
    "read_metrics",
    "truncate_after",
    "write_run_info",
]

METRICS_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "jresnet")
_ENV_PREFIXES = ("JAX_", "XLA_", "CUDA_VISIBLE_DEVICES", "TPU_")  # settings that change what a run computes

Scalar = int | float | str | bool | None


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new one, never a mix."""
    # Same folder, so os.replace is a rename; opened with plain open() so the file gets the umask's
    # permissions (tempfile.mkstemp would make every run file private to its owner).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _parse_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records in ``path`` and whether its tail needs repair (a partial or unterminated last line).

    Only the last line may be broken: that is what a process killed mid-write leaves. A broken line
    anywhere else is corruption and raises ``ValueError`` with its line number.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path} line {number} is not a JSON record ({e}); only a partial last line, "
                             f"from a killed run, is dropped") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "kind" not in record:
            raise ValueError(f"{path} line {number} is not a metrics record: expected an object with an int "
                             f"'step' and a 'kind'; got {line[:80]!r}")
        records.append(record)
    if tail.strip():
        try:
            records.append(json.loads(tail))  # complete but unterminated: keep it
        except ValueError:
            pass  # cut off mid-write: drop it
    return records, bool(tail)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record in ``run_dir/metrics.jsonl``, in order; a partial last line is ignored.

    Raises:
        FileNotFoundError: the run folder has no metrics.jsonl.
        ValueError: a line other than the last is not JSON.
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_NAME} in {run_dir}")
    return _parse_jsonl(path)[0]


def _write_csv(run_dir: Path, records: list[dict[str, Any]]) -> None:
    header = {"step": None, "kind": None}  # a dict keeps first-seen order, with step and kind first
    for record in records:
        header.update(dict.fromkeys(record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    _atomic_write(run_dir / CSV_NAME, buffer.getvalue().encode())


def truncate_after(run_dir: str | Path, step: int) -> int:
    """Drop every record with ``step`` greater than ``step``, and a partial last line; returns how many.

    Call it when a run resumes from a checkpoint taken at ``step``: the steps after it will be logged
    again. The JSONL is rewritten atomically and the CSV is rewritten to match. A run folder without
    metrics.jsonl is left as it is.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return 0
    records, _ = _parse_jsonl(path)
    kept = [r for r in records if r["step"] <= step]
    _write_jsonl(path, kept)
    _write_csv(run_dir, kept)
    return len(records) - len(kept)


def _scalar(key: str, value: Any) -> Scalar:
    """``value`` as a JSON scalar; NumPy and JAX scalars (anything with ``.item()``) are converted."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # a device array: this waits for it, so log after the step, not inside it
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"metric {key!r} must be a scalar (int, float, str, bool or None); "
                    f"got {value!r} ({type(value).__name__})")


class MetricsLog:
    """Appends metric records to ``run_dir/metrics.jsonl``; ``close()`` mirrors them to metrics.csv.

    Example::

        with MetricsLog(run_dir) as log:
            log.log("train", step, loss=loss, accuracy=acc, lr=lr)
            log.log("val", step, loss=val_loss, accuracy=val_acc)

    Records are flushed to the OS after every write, so a killed process loses none of them (a power
    cut can lose the last few: fsync runs only at ``close()``, as it costs milliseconds). Opening a log
    whose last line was cut off mid-write drops that line first, so new records start on a line of
    their own. Non-finite floats are written as JSON's NaN / Infinity extensions, which `json` reads.
    Open one log per run, in one process (process 0 of a multi-host job).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_NAME
        if self.path.is_file():
            records, broken_tail = _parse_jsonl(self.path)
            if broken_tail:
                _write_jsonl(self.path, records)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def log(self, kind: str, step: int, **metrics: Any) -> dict[str, Any]:
        """Append one record, ``{"step": step, "kind": kind, "time": now, **metrics}``, and return it.

        Args:
            kind: "train", "val", "test", "ema_val", ...
            step: the optimiser step the metrics belong to (an int >= 0).
            metrics: scalars; NumPy / JAX scalars are converted with ``.item()``.
        """
        if self._file is None:
            raise ValueError(f"MetricsLog for {self.run_dir} is closed")
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"kind must be a non-empty string like 'train' or 'val'; got {kind!r}")
        step = _scalar("step", step)  # type: ignore[assignment]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"step must be an int >= 0; got {step!r} ({type(step).__name__})")
        record: dict[str, Any] = {"step": step, "kind": kind, "time": round(time.time(), 3)}
        record.update((key, _scalar(key, value)) for key, value in metrics.items())
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return record

    def flush_csv(self) -> None:
        """Rewrite metrics.csv from every record in metrics.jsonl so far."""
        if self._file is not None:
            self._file.flush()
        _write_csv(self.run_dir, read_metrics(self.run_dir))

    def close(self) -> None:
        """Sync metrics.jsonl to disk, write metrics.csv, and close. Closing twice is harmless."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.flush_csv()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_run_info(run_dir: str | Path, config_dict: Mapping[str, Any],
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``run_dir/config.yaml`` (the resolved config) and ``run_dir/env.json``; return the env.

    env.json records Python's and the key packages' versions (None for one not installed), the
    platform, host name, CPU count, JAX/XLA environment variables, the time, and ``extra`` (devices,
    seed, ...). Values in ``extra`` that JSON cannot hold are written as their ``str()``. Package
    versions come from installed metadata, so this imports no JAX.

    Raises:
        ValueError: a key of ``extra`` clashes with one this function writes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "env_vars": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)},
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    clashes = sorted(set(env) & set(extra or {}))
    if clashes:
        raise ValueError(f"write_run_info: extra keys {clashes} clash with the keys it writes itself "
                         f"({', '.join(env)})")
    env.update(extra or {})
    text = yaml.safe_dump(dict(config_dict), sort_keys=False, default_flow_style=None)
    _atomic_write(run_dir / "config.yaml", text.encode())
    _atomic_write(run_dir / "env.json", (json.dumps(env, indent=2, default=str) + "\n").encode())
    return env


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in the records of one ``kind``."""
    pairs = [(r["step"], r[key]) for r in records
             if r.get("kind") == kind and isinstance(r.get(key), int | float)]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def plot_curves(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Plot loss, validation accuracy and learning rate against step; returns the PNG's path.

    Panels: ``loss`` of the train records (and of the val records, where present); ``accuracy`` of
    every kind except train (val, ema_val, test, ...); ``lr`` of the train records. The figure is drawn
    with matplotlib's Agg canvas directly, so a user's pyplot backend is left alone.

    Args:
        run_dir: the run folder, holding metrics.jsonl.
        out_png: where to write; ``run_dir/curves.png`` by default.

    Raises:
        FileNotFoundError: no metrics.jsonl. ValueError: it holds no records.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"nothing to plot: {run_dir / METRICS_NAME} holds no records")
    out = Path(out_png) if out_png is not None else run_dir / "curves.png"
    kinds = list(dict.fromkeys(r["kind"] for r in records))
    eval_kinds = [k for k in kinds if k != "train"]

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    panels = (
        (loss_ax, "loss", [k for k in ("train", "val") if k in kinds], "loss"),
        (acc_ax, "accuracy", eval_kinds, "accuracy"),
        (lr_ax, "lr", ["train"], "learning rate"),
    )
    for ax, key, plot_kinds, title in panels:
        drawn = False
        for kind in plot_kinds:
            steps, values = _series(records, kind, key)
            if steps:
                few = len(steps) <= 50  # markers make sparse evaluations visible; dense ones they clutter
                ax.plot(steps, values, label=kind, color=f"C{kinds.index(kind) % 10}",  # one colour per kind
                        marker="o" if few else None, markersize=3, linewidth=1.0 if kind == "train" else 1.5)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no '{key}' records", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(run_dir.name)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, buffer.getvalue())
    return out
