"""The process's malloc, and the launcher step that preloads tcmalloc or jemalloc under it.

On CPU, XLA runs a train step out of one temporary block the size of the step's activations (243 MB for
resnet20 at batch 128). glibc serves blocks over 32 MB with a fresh ``mmap`` and unmaps them on ``free``,
so every step the kernel faults in and zeroes every page of it again: 62k page faults a step, about 10%
of the step's CPU time, much of it inside the oneDNN kernels' first writes. tcmalloc and jemalloc keep
freed blocks for reuse; under either the step takes no page faults (README, Performance).

A malloc can only be swapped before the process starts (``LD_PRELOAD``), so this is for entry points:
the ``jresnet`` command re-executes itself under one (`reexec_with_preferred_allocator`) and
``experiments/bench.py`` gives its JAX workers the same environment. Importing the library changes
nothing; in your own scripts, run ``python`` under ``LD_PRELOAD=`` `find_allocator`'s path.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

# Which malloc JRESNET_MALLOC asks for: "auto" takes the first one found, in this order.
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")
LIBRARY_NAMES: dict[str, tuple[str, ...]] = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
# Where Debian/Ubuntu (libtcmalloc-minimal4, libjemalloc2), Fedora (gperftools-libs, jemalloc) and
# conda (gperftools, jemalloc) put them.
INSTALL_HINT = ("apt-get install libtcmalloc-minimal4 (Debian/Ubuntu), dnf install gperftools-libs (Fedora) or "
                "conda install gperftools")
# jemalloc's default gives dirty pages back after 10 s, which still unmaps the step's block between
# steps (62k faults a step measured); never decaying keeps it, as tcmalloc does by default.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
ENV_CHOICE = "JRESNET_MALLOC"
# Set in the re-executed process, so that it never re-executes again.
ENV_DONE = "JRESNET_MALLOC_PRELOADED"


def default_search_dirs() -> list[Path]:
    """Library folders searched for the allocators: the active conda/venv prefix, the multiarch and
    plain system folders."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    prefixes = [os.environ.get("CONDA_PREFIX", ""), sys.prefix, "/usr/local", "/usr", ""]
    dirs = []
    for prefix in filter(None, prefixes):
        dirs += [Path(prefix, "lib", multiarch), Path(prefix, "lib64"), Path(prefix, "lib")]
    dirs += [Path("/lib", multiarch), Path("/lib64"), Path("/lib")]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def find_allocator(name: str, search_dirs: Sequence[Path] | None = None) -> Path | None:
    """The path of allocator ``name`` ("tcmalloc" or "jemalloc") on this machine, or None."""
    if name not in LIBRARY_NAMES:
        raise ValueError(f"allocator must be one of {sorted(LIBRARY_NAMES)}; got {name!r}")
    for folder in default_search_dirs() if search_dirs is None else search_dirs:
        for library in LIBRARY_NAMES[name]:
            if (folder / library).is_file():
                return folder / library
    return None


def allocator_in_use(maps: str = "/proc/self/maps") -> str:
    """"tcmalloc" or "jemalloc" when that library is mapped into this process, else "system" (glibc's
    malloc, or whatever the platform has)."""
    try:
        text = Path(maps).read_text()
    except OSError:  # not Linux
        return "system"
    for name, libraries in LIBRARY_NAMES.items():
        if any(f"/{library}" in text for library in libraries):
            return name
    return "system"


def preload_environment(choice: str, environ: Mapping[str, str],
                        search_dirs: Sequence[Path] | None = None) -> dict[str, str] | None:
    """``environ`` with the chosen allocator preloaded, or None when there is nothing to do: ``choice`` is
    "system", the environment preloads one already, or "auto" found none.

    An explicit "tcmalloc" or "jemalloc" that is not installed raises ValueError with how to install it.
    The caller's own ``MALLOC_CONF`` wins over `JEMALLOC_CONF`.
    """
    if choice not in CHOICES:
        raise ValueError(f"{ENV_CHOICE} must be one of {', '.join(CHOICES)}; got {choice!r}")
    preloaded = environ.get("LD_PRELOAD", "")
    if choice == "system" or not sys.platform.startswith("linux") or environ.get(ENV_DONE):
        return None
    if any(library in preloaded for libraries in LIBRARY_NAMES.values() for library in libraries):
        return None
    names = LIBRARY_NAMES if choice == "auto" else (choice,)
    for name in names:
        path = find_allocator(name, search_dirs)
        if path is not None:
            env = dict(environ, LD_PRELOAD=f"{path} {preloaded}".strip(), **{ENV_DONE: str(path)})
            if name == "jemalloc":
                env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
            return env
    if choice == "auto":
        return None
    raise ValueError(f"{ENV_CHOICE}={choice}: no {' or '.join(LIBRARY_NAMES[choice])} found in "
                     f"{[str(d) for d in (search_dirs or default_search_dirs())]}; install it ({INSTALL_HINT}) "
                     f"or set {ENV_CHOICE}=auto or system")


def reexec_with_preferred_allocator() -> None:
    """Re-execute this Python process under tcmalloc or jemalloc (``JRESNET_MALLOC``, default "auto"),
    or return when there is nothing to do. For a command's entry point, before anything else runs:
    ``exec`` replaces the process, so nothing done before it survives.

    ``JRESNET_XLA_FLAGS=0`` (no jresnet CPU tuning) and ``JRESNET_MALLOC=system`` opt out.
    """
    if os.environ.get("JRESNET_XLA_FLAGS", "1") == "0":
        return
    env = preload_environment(os.environ.get(ENV_CHOICE, "auto"), os.environ)
    if env is not None:
        # orig_argv keeps the interpreter's own options and `-m jresnet` or the script path.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
