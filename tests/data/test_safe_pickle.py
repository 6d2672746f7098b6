"""The restricted unpickler: numpy arrays and containers load; anything that could run code is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from jresnet.data import UnsafePickleError, safe_load_pickle, safe_loads_pickle

from .format_writers import write_py2_pickle, write_py3_pickle


class RunsShellCommand:
    """Unpickling this calls os.system(command): the classic malicious pickle."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class CallsExec:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("import os; os.system('true')",))


def sample_batch() -> dict[bytes, object]:
    return {
        b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
        b"labels": [3, 7],
        b"batch_label": b"training batch 1 of 5",
        b"floats": np.linspace(0, 1, 5),
    }


def assert_same_batch(loaded: dict[bytes, object], original: dict[bytes, object]) -> None:
    assert set(loaded) == set(original)
    for key, value in original.items():
        if isinstance(value, np.ndarray):
            assert isinstance(loaded[key], np.ndarray) and loaded[key].dtype == value.dtype
            assert np.array_equal(loaded[key], value)
        else:
            assert loaded[key] == value


@pytest.mark.parametrize(
    "write",
    [write_py2_pickle, write_py3_pickle, lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=4))],
    ids=["python2-style", "python3-protocol2", "python3-protocol4"],
)
def test_numpy_arrays_and_containers_load(tmp_path: Path, write: object) -> None:
    path = tmp_path / "batch"
    write(path, sample_batch())  # type: ignore[operator]
    assert_same_batch(safe_load_pickle(path), sample_batch())


def test_python2_pickles_name_numpy_core_and_still_load(tmp_path: Path) -> None:
    path = write_py2_pickle(tmp_path / "batch", sample_batch())
    assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()  # the writer mimics the originals
    assert_same_batch(safe_load_pickle(path), sample_batch())


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(RunsShellCommand(f"touch {marker}"), protocol=2))

    with pytest.raises(UnsafePickleError) as raised:
        safe_load_pickle(path)

    assert not marker.exists()
    message = str(raised.value)
    assert str(path) in message and f"{os.system.__module__}.system" in message and "\n" not in message
    assert isinstance(raised.value, ValueError)


def test_the_malicious_pickle_really_would_run_code_with_plain_pickle(tmp_path: Path) -> None:
    """Control: the payload used above is live, so its refusal above is what kept the marker away."""
    marker = tmp_path / "pwned-by-plain-pickle"
    pickle.loads(pickle.dumps(RunsShellCommand(f"touch {marker}"), protocol=2))
    assert marker.exists()


def test_a_payload_hidden_inside_a_valid_batch_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch = {**sample_batch(), b"extra": RunsShellCommand(f"touch {marker}")}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        safe_load_pickle(path)
    assert not marker.exists()


def test_builtins_are_refused_too() -> None:
    with pytest.raises(UnsafePickleError, match=r"global (__builtin__|builtins)\.exec"):
        safe_loads_pickle(pickle.dumps(CallsExec(), protocol=2), source="payload")


def test_codecs_encode_is_admitted_only_as_latin1_bytes() -> None:
    # Hand-built: GLOBAL _codecs.encode, args ("abc", "rot13"), REDUCE, STOP.
    rot13 = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match=r"payload: refused _codecs.encode\(str, 'rot13'"):
        safe_loads_pickle(rot13, source="payload")
    latin1 = rot13.replace(b"X\x05\x00\x00\x00rot13", b"X\x06\x00\x00\x00latin1")
    assert safe_loads_pickle(latin1) == b"abc"


def test_garbage_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="garbage.bin: not a valid pickle"):
        safe_loads_pickle(b"\x80\x02this is not a pickle", source="garbage.bin")
    with pytest.raises(ValueError, match="not a valid pickle"):
        safe_loads_pickle(pickle.dumps(sample_batch(), protocol=2)[:-40])


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        safe_load_pickle(tmp_path / "absent")
