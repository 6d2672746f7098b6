"""jresnet's compiled CPU kernels: oneDNN convolutions and batch norm, built once per machine, as XLA FFI targets.

The kernels (``onednn_conv.cc``, ``onednn_batch_norm.cc`` and their shared ``onednn_common.h``) are C++
against two headers-and-library sets that pip installs: XLA's FFI
API (shipped inside jaxlib) and oneDNN (the ``onednn-devel-cpu-gomp`` wheel, jresnet's ``[onednn]``
extra). The first process that needs them compiles the source with the system C++ compiler into a cache
directory (``$JRESNET_CACHE_DIR``, default ``~/.cache/jresnet``), which takes ~10 s; later processes load
the cached library. The cache key hashes the sources, the compiler, jaxlib's and oneDNN's versions, so an
upgrade of any of them rebuilds.

Nothing here is required: without oneDNN or a compiler, `available()` is False, `unavailable_reason()`
says why, and jresnet computes convolutions with XLA's own kernels. ``JRESNET_ONEDNN=0`` switches the
kernels off without uninstalling anything. ``python -m jresnet.native`` builds them and prints the status.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FFI_TARGETS", "BatchNormPlan", "NativeStatus", "available", "batch_norm_plan", "busy_time", "cache_dir",
           "implementations", "status", "unavailable_reason"]

_HERE = Path(__file__).parent
# Compiled together into one library; the header is hashed with them, so editing any of them rebuilds.
SOURCES = (_HERE / "onednn_conv.cc", _HERE / "onednn_batch_norm.cc")
HEADERS = (_HERE / "onednn_common.h",)
# Python name -> C symbol exported by XLA_FFI_DEFINE_HANDLER_SYMBOL in the sources.
FFI_TARGETS = {
    "jresnet_conv_forward": "JresnetConvForward",
    "jresnet_conv_backward_data": "JresnetConvBackwardData",
    "jresnet_conv_backward_weights": "JresnetConvBackwardWeights",
    "jresnet_batch_norm_forward": "JresnetBatchNormForward",
    "jresnet_batch_norm_backward": "JresnetBatchNormBackward",
}


@dataclass(frozen=True)
class NativeStatus:
    """Whether the oneDNN kernels are loaded, from which file, or why not."""

    available: bool
    library: Path | None = None
    reason: str = ""
    onednn_version: str = ""


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$JRESNET_CACHE_DIR`` or ``~/.cache/jresnet``."""
    root = os.environ.get("JRESNET_CACHE_DIR") or Path.home() / ".cache" / "jresnet"
    return Path(root) / "native"


def _onednn_prefix() -> tuple[Path, str] | None:
    """The prefix holding include/dnnl.hpp and lib/libdnnl.so, and oneDNN's version; None if absent."""
    candidates = [Path(p) for p in (os.environ.get("DNNL_ROOT"), sys.prefix, sys.base_prefix) if p]
    for prefix in candidates:
        if (prefix / "include" / "dnnl.hpp").is_file() and any((prefix / "lib").glob("libdnnl.so*")):
            for dist in ("onednn-devel-cpu-gomp", "onednn-devel", "onednn-cpu-gomp"):
                try:
                    return prefix, f"{dist} {importlib.metadata.version(dist)}"
                except importlib.metadata.PackageNotFoundError:
                    continue
            return prefix, "unknown (DNNL_ROOT)"
    return None


def _compile(prefix: Path, compiler: list[str], target: Path, sources: tuple[Path, ...] = SOURCES) -> None:
    """Build ``sources`` (jresnet's kernels unless told otherwise) into the shared library ``target``."""
    import jax.ffi

    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a private name, then rename: parallel test workers may build at once.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [*compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", *map(str, sources),
               f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,-rpath,{prefix / 'lib'}", "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            names = ", ".join(source.name for source in sources)
            raise RuntimeError(f"compiling {names} failed ({' '.join(cmd)}):\n{result.stderr[-4000:]}")
        os.replace(out, target)


_lock = threading.Lock()


@functools.cache
def _library() -> ctypes.CDLL | None:
    st = status()
    return ctypes.CDLL(str(st.library)) if st.available else None


def _loaded_library() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(f"the oneDNN kernels are not available: {unavailable_reason()}")
    return lib


def status() -> NativeStatus:
    """Build (once per machine) and load the oneDNN kernels, registering them with XLA for the CPU."""
    with _lock:  # threads tracing at once must not build or register twice
        return _status()


@functools.cache
def _status() -> NativeStatus:
    if os.environ.get("JRESNET_ONEDNN", "1") == "0":
        return NativeStatus(False, reason="switched off by JRESNET_ONEDNN=0")
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return NativeStatus(False, reason=f"oneDNN kernels are built for Linux x86-64 only, not "
                                          f"{sys.platform} {platform.machine()}")
    found = _onednn_prefix()
    if found is None:
        return NativeStatus(False, reason="oneDNN is not installed: pip install 'jresnet[onednn]'")
    prefix, onednn_version = found
    found_compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if found_compiler is None:
        return NativeStatus(False, reason="no C++ compiler found (set CXX, or install g++)")
    compiler = shlex.split(found_compiler)  # CXX may carry a wrapper or flags: "ccache g++"
    import jaxlib

    # An in-place upgrade of oneDNN's headers or of jaxlib's FFI API must rebuild; so must a new source.
    version_header = prefix / "include" / "oneapi" / "dnnl" / "dnnl_version.h"
    fingerprint = hashlib.sha256()
    for part in (*(path.read_bytes() for path in (*SOURCES, *HEADERS)), " ".join(compiler).encode(),
                 jaxlib.__version__.encode(), onednn_version.encode(), str(prefix).encode(),
                 version_header.read_bytes() if version_header.is_file() else b""):
        fingerprint.update(part)
    library = cache_dir() / f"jresnet_onednn_{fingerprint.hexdigest()[:16]}.so"
    try:
        if not library.is_file():
            print(f"jresnet: compiling the oneDNN kernels once, into {library} ...", file=sys.stderr)
            _compile(prefix, compiler, library)
        lib = ctypes.CDLL(str(library))
    except (OSError, RuntimeError) as error:
        return NativeStatus(False, reason=str(error), onednn_version=onednn_version)

    import jax.ffi

    for name, symbol in FFI_TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return NativeStatus(True, library=library, onednn_version=onednn_version)


def available() -> bool:
    """True when the oneDNN kernels are built, loaded and registered (building them if needed)."""
    return status().available


def unavailable_reason() -> str:
    """Why the oneDNN kernels are not available ("" when they are)."""
    return status().reason


def implementations(batch: int, in_hw: tuple[int, int], in_c: int, out_hw: tuple[int, int], out_c: int,
                    kernel: tuple[int, int], stride: int = 1, padding: tuple[int, int, int, int] = (0, 0, 0, 0),
                    dilation: int = 1, groups: int = 1) -> dict[str, str]:
    """Which oneDNN implementation each pass of this convolution runs, e.g. {"forward": "brgconv:avx2", ...}.

    A name starting with "ref" is oneDNN's slow reference loop: a shape that gets one is worth a look.
    padding is (top, bottom, left, right).
    """
    lib = _loaded_library()
    if groups < 1:
        raise ValueError(f"implementations: groups must be >= 1; got {groups}")
    geometry = (ctypes.c_int64 * 18)(batch, *in_hw, in_c, *out_hw, out_c, *kernel, stride, stride, *padding,
                                     dilation, dilation, groups)
    names = {}
    for direction, name in enumerate(("forward", "input_grad", "kernel_grad")):
        out = ctypes.create_string_buffer(256)
        if lib.JresnetConvImpl(direction, geometry, out, len(out)) != 0:
            raise ValueError(f"oneDNN rejected this convolution: {out.value.decode()}")
        names[name] = out.value.decode()
    return names


def busy_time(reset: bool = False) -> tuple[float, int]:
    """Seconds spent inside the oneDNN kernels, and their number of calls, since the last reset (profiling)."""
    lib = _loaded_library()
    ns, calls = ctypes.c_int64(), ctypes.c_int64()
    lib.JresnetConvBusy(ctypes.byref(ns), ctypes.byref(calls), int(reset))
    return ns.value / 1e9, calls.value


@dataclass(frozen=True)
class BatchNormPlan:
    """What oneDNN's batch norm does for one (B, H, W, C) activation: its ReLU workspace and implementations."""

    workspace_bytes: int
    implementation: str  # "forward / backward", e.g. "bnorm_jit:avx2 / bnorm_jit:avx2"


@functools.cache
def batch_norm_plan(bhwc: tuple[int, int, int, int], eps: float, relu: bool) -> BatchNormPlan:
    """oneDNN's batch-norm plan for an NHWC float32 activation of shape ``bhwc`` (built and cached on first use)."""
    lib = _loaded_library()
    dims = (ctypes.c_int64 * 4)(*bhwc)
    workspace, impl = ctypes.c_int64(), ctypes.create_string_buffer(256)
    if lib.JresnetBatchNormPlan(dims, ctypes.c_float(eps), int(relu), ctypes.byref(workspace), impl, len(impl)) != 0:
        raise ValueError(f"oneDNN rejected a batch norm of a (B, H, W, C) = {bhwc} activation: {impl.value.decode()}")
    return BatchNormPlan(workspace.value, impl.value.decode())
