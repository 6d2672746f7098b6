"""A restricted unpickler for data files: it rebuilds numpy arrays and plain containers, nothing else.

An ordinary ``pickle.load`` imports and calls whatever the file names, so a crafted file runs code.
`RestrictedUnpickler.find_class` is the one place a pickle can reach a Python global; it admits only
what a numpy array's pickle needs and raises `UnsafePickleError` for anything else, before importing
it. Containers, str, bytes, ints and floats need no global and load as usual.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy._core.multiarray import _reconstruct

from jresnet.data.errors import UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "safe_load_pickle", "safe_loads_pickle"]


class _RefusedCodecError(Exception):
    """Raised inside the unpickler by `_latin1_bytes`; reported as `UnsafePickleError` naming the file."""


def _latin1_bytes(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only turns a str into bytes through latin-1.

    Python 3 writes a ``bytes`` object at pickle protocols 0-2 as ``_codecs.encode(text, "latin1")``;
    this admits that spelling of bytes and refuses every other codec.
    """
    # Compared as written, not through codecs.lookup, which would import encoding modules by name.
    if not isinstance(text, str) or encoding != "latin1" or errors != "strict":
        raise _RefusedCodecError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}, {errors!r}): "
            "only the latin-1 encoding of a str (how Python 3 pickles bytes) is allowed"
        )
    return text.encode("latin1")


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # Python 2 era numpy (the CIFAR files) names the reconstructor numpy.core.multiarray; numpy 2 names
    # it numpy._core.multiarray. Both map to the function itself, so numpy.core's deprecation shim is
    # never imported.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
"""The (module, name) globals a data pickle may use, and what each resolves to."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` and names ``source`` in its errors.

    It decodes Python 2 ``str`` objects as ``bytes`` (``encoding="bytes"``), as the CIFAR files need,
    so their dict keys read ``b"data"``, ``b"labels"``.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return the admitted global or raise `UnsafePickleError` naming the file and the global."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{mod}.{attr}" for mod, attr in ALLOWED_GLOBALS)
            raise UnsafePickleError(
                f"{self.source}: refused to load global {module}.{name}; only numpy array "
                f"reconstruction is allowed ({allowed})"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: they would hand control to code outside the pickle."""
        raise UnsafePickleError(
            f"{self.source}: refused persistent id {pid!r}; data pickles must not use them"
        )


def safe_loads_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with `RestrictedUnpickler`; ``source`` names it in errors.

    Raises:
        UnsafePickleError: the pickle names a global outside `ALLOWED_GLOBALS` (nothing was run).
        ValueError: the bytes are not a valid pickle.
    """
    unpickler = RestrictedUnpickler(io.BytesIO(data), source=source)
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except _RefusedCodecError as error:
        raise UnsafePickleError(f"{source}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            MemoryError, OverflowError, AttributeError) as error:  # absurd lengths, ops on allowed globals
        # numpy's own errors for a garbled array state land here too; report them against the file.
        raise ValueError(f"{source}: not a valid pickle: {type(error).__name__}: {error}") from None


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle the file at ``path`` without running any code from it; see `safe_loads_pickle`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the pickle names a global outside `ALLOWED_GLOBALS` (nothing was run).
        ValueError: the file is not a valid pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file {path} does not exist")
    return safe_loads_pickle(path.read_bytes(), source=str(path))
