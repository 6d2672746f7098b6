"""Run logging: JSONL records, the CSV mirror, kill and resume, run info, and the curves plot."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jresnet.train.metrics import MetricsLog, plot_curves, read_metrics, truncate_after, write_run_info

REPO = Path(__file__).resolve().parents[2]
METRICS_FILE = REPO / "jresnet" / "train" / "metrics.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fill(run_dir: Path, steps: int = 20, val_every: int = 5) -> None:
    """A small run: train records every step, val (and ema_val) every ``val_every``."""
    with MetricsLog(run_dir) as log:
        for step in range(1, steps + 1):
            log.log("train", step, loss=2.0 / step, lr=0.1 * (1 - step / (steps + 1)))
            if step % val_every == 0:
                log.log("val", step, loss=2.5 / step, accuracy=min(1.0, step / steps))
                log.log("ema_val", step, accuracy=min(1.0, step / steps + 0.01))


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


# --- records -----------------------------------------------------------------------------------------


def test_records_read_back_in_order_with_their_types(tmp_path: Path) -> None:
    with MetricsLog(tmp_path / "run") as log:
        first = log.log("train", 0, loss=np.float32(0.5), lr=0.1, note="warm", finite=True)
        log.log("val", 10, accuracy=0.75, count=np.int64(3))
    records = read_metrics(tmp_path / "run")
    assert without_time(records) == [
        {"step": 0, "kind": "train", "loss": 0.5, "lr": 0.1, "note": "warm", "finite": True},
        {"step": 10, "kind": "val", "accuracy": 0.75, "count": 3},
    ]
    assert records[0] == first
    assert type(records[1]["count"]) is int and isinstance(records[0]["time"], float)


def test_nan_losses_are_kept(tmp_path: Path) -> None:
    with MetricsLog(tmp_path) as log:
        log.log("train", 1, loss=float("nan"))
    assert math.isnan(read_metrics(tmp_path)[0]["loss"])


@pytest.mark.parametrize("kind, step, metrics, error", [
    ("train", -1, {}, "step must be an int >= 0; got -1"),
    ("train", 1.5, {}, "step must be an int >= 0; got 1.5"),
    ("train", True, {}, "step must be an int >= 0; got True"),
    ("", 1, {}, "kind must be a non-empty string"),
    ("train", 1, {"loss": [1.0]}, "metric 'loss' must be a scalar"),
    ("train", 1, {"loss": np.zeros(3)}, "can only convert an array of size 1"),
])
def test_bad_records_are_refused(tmp_path: Path, kind: str, step: object, metrics: dict, error: str) -> None:
    with MetricsLog(tmp_path) as log, pytest.raises((TypeError, ValueError), match=error):
        log.log(kind, step, **metrics)  # type: ignore[arg-type]
    assert read_metrics(tmp_path) == []


def test_logging_after_close_is_an_error(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.close()
    log.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        log.log("train", 1, loss=1.0)


def test_reopening_appends(tmp_path: Path) -> None:
    fill(tmp_path, steps=3, val_every=10)
    with MetricsLog(tmp_path) as log:
        log.log("train", 4, loss=0.1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_read_metrics_without_a_log() -> None:
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in /nonexistent"):
        read_metrics("/nonexistent")


def test_a_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n{"step": 2, "ki\n'
                                            '{"step": 3, "kind": "train"}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not a JSON record"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is not a metrics record"):
        read_metrics(tmp_path)


# --- kill and resume ---------------------------------------------------------------------------------


def test_a_killed_process_keeps_every_logged_record(tmp_path: Path) -> None:
    # The child logs, never closes, and dies by SIGKILL: only per-write flushing saves its records.
    code = ("import importlib.util, os, signal, sys\n"
            f"spec = importlib.util.spec_from_file_location('m', {str(METRICS_FILE)!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['m'] = m; spec.loader.exec_module(m)\n"
            f"log = m.MetricsLog({str(tmp_path)!r})\n"
            "for step in range(1, 6):\n"
            "    log.log('train', step, loss=1.0 / step)\n"
            "assert not any(name.split('.')[0] in ('jax', 'matplotlib') for name in sys.modules)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]


def test_truncate_after_drops_later_steps_and_a_partial_line(tmp_path: Path) -> None:
    fill(tmp_path, steps=20, val_every=5)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 21, "kind": "train", "lo')  # killed mid-write
    with pytest.raises(ValueError):  # the partial line is JSON no more
        json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(read_metrics(tmp_path)) == 28  # the partial line is ignored when reading

    dropped = truncate_after(tmp_path, 12)
    assert dropped == 8 + 2 * 2  # train 13..20, val and ema_val at 15 and 20
    records = read_metrics(tmp_path)
    assert max(r["step"] for r in records) == 12
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len([json.loads(line) for line in text.splitlines()]) == len(records)
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.jsonl"]
    assert len(list(csv.DictReader((tmp_path / "metrics.csv").open()))) == len(records)

    # the resumed run logs step 13 again, once
    with MetricsLog(tmp_path) as log:
        log.log("train", 13, loss=0.1)
    steps = [r["step"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert steps == list(range(1, 14))


def test_rewritten_files_keep_ordinary_permissions(tmp_path: Path) -> None:
    fill(tmp_path, steps=3, val_every=10)
    truncate_after(tmp_path, 2)
    (tmp_path / "plain").write_text("")
    mode = (tmp_path / "plain").stat().st_mode
    assert (tmp_path / "metrics.jsonl").stat().st_mode == mode
    assert (tmp_path / "metrics.csv").stat().st_mode == mode


def test_truncate_after_without_a_log_is_a_no_op(tmp_path: Path) -> None:
    assert truncate_after(tmp_path, 5) == 0
    assert list(tmp_path.iterdir()) == []


def test_opening_a_log_with_a_partial_last_line_drops_it(tmp_path: Path) -> None:
    fill(tmp_path, steps=2, val_every=10)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "kind": "tr')
    with MetricsLog(tmp_path) as log:
        log.log("train", 3, loss=0.3)
    assert without_time(read_metrics(tmp_path))[-1] == {"step": 3, "kind": "train", "loss": 0.3}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_an_unterminated_but_complete_last_line_is_kept(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n{"step": 2, "kind": "train"}')
    with MetricsLog(tmp_path) as log:
        log.log("train", 3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


# --- CSV ---------------------------------------------------------------------------------------------


def test_csv_holds_the_jsonl_records(tmp_path: Path) -> None:
    fill(tmp_path, steps=10, val_every=5)
    records = read_metrics(tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = list(reader)
    # the union of keys in first-seen order, step and kind first
    assert header == ["step", "kind", "time", "loss", "lr", "accuracy"]
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert {k for k, v in row.items() if v != ""} == set(record)
        assert int(row["step"]) == record["step"] and row["kind"] == record["kind"]
        for key in set(record) - {"step", "kind"}:
            assert float(row[key]) == record[key]  # repr-exact floats


def test_flush_csv_mirrors_a_run_in_progress(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.log("train", 1, loss=1.0)
    log.flush_csv()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2
    log.log("train", 2, loss=0.5)
    log.close()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


# --- run info ----------------------------------------------------------------------------------------


def test_write_run_info(tmp_path: Path) -> None:
    config = {"name": "x", "optim": {"lr": 0.1, "milestones": [3, 5]}, "model": {"overrides": {}}}
    env = write_run_info(tmp_path / "run", config, {"seed": 7, "devices": [object()]})
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == config
    on_disk = json.loads((tmp_path / "run" / "env.json").read_text())
    assert on_disk["seed"] == 7 and on_disk["devices"][0].startswith("<object object")
    assert on_disk["python"] == ".".join(map(str, sys.version_info[:3]))
    assert on_disk["cpu_count"] >= 1 and on_disk["hostname"] and on_disk["platform"]
    assert set(on_disk["packages"]) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"}
    assert on_disk["packages"]["numpy"] == np.__version__
    assert env["packages"] == on_disk["packages"]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_env_json_records_the_jax_version(tmp_path: Path) -> None:
    write_run_info(tmp_path, {}, {})
    packages = json.loads((tmp_path / "env.json").read_text())["packages"]
    assert packages["jax"] == importlib.metadata.version("jax")
    assert packages["jaxlib"] == importlib.metadata.version("jaxlib")


def test_missing_packages_are_null_and_extra_cannot_shadow_fields(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from jresnet.train import metrics

    monkeypatch.setattr(metrics, "_PACKAGES", ("numpy", "surely-not-installed-pkg"))
    assert write_run_info(tmp_path, {}, {})["packages"] == {"numpy": np.__version__,
                                                            "surely-not-installed-pkg": None}
    with pytest.raises(ValueError, match=r"extra keys \['hostname'\] clash"):
        write_run_info(tmp_path, {}, {"hostname": "x"})


# --- curves ------------------------------------------------------------------------------------------


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    fill(tmp_path, steps=60, val_every=10)
    out = plot_curves(tmp_path)
    assert out == tmp_path / "curves.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # three panels of lines and text, not an empty canvas
    pil = pytest.importorskip("PIL.Image")
    with pil.open(out) as image:
        image.verify()
    with pil.open(out) as image:
        assert image.size == (1500, 420)
        # the canvas is not blank: many distinct colours (lines, text, legend)
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 50


def test_plot_curves_to_a_chosen_path_and_with_train_only(tmp_path: Path) -> None:
    with MetricsLog(tmp_path) as log:
        for step in range(5):
            log.log("train", step, loss=1.0 / (step + 1))  # no lr, no val
    out = plot_curves(tmp_path, tmp_path / "plots" / "c.png")
    assert out == tmp_path / "plots" / "c.png" and out.read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "curves.png").exists()


def test_plot_curves_leaves_pyplot_alone(tmp_path: Path) -> None:
    fill(tmp_path, steps=5, val_every=5)
    code = ("import sys, matplotlib\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('m', {str(METRICS_FILE)!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['m'] = m; spec.loader.exec_module(m)\n"
            "matplotlib.use('svg')\n"
            f"m.plot_curves({str(tmp_path)!r})\n"
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False"]


def test_plot_curves_needs_records(tmp_path: Path) -> None:
    MetricsLog(tmp_path).close()
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves(tmp_path)
