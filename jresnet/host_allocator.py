"""The process's malloc, and the launcher step that preloads jemalloc or tcmalloc under it.

On CPU, XLA runs a train step out of one temporary block the size of the step's activations (243 MB for
resnet20 at batch 128). glibc serves blocks over 32 MB with a fresh ``mmap`` and unmaps them on ``free``,
so every step the kernel faults in and zeroes every page of it again: 62k page faults a step, about 10%
of the step's CPU time, much of it inside the oneDNN kernels' first writes. jemalloc and tcmalloc keep
freed blocks for reuse; under either the step takes no page faults and runs 1.05-1.12x faster (README,
Performance).

A malloc can only be swapped before the process starts (``LD_PRELOAD``), so this is for entry points:
the ``jresnet`` command's ``train``, ``eval`` and ``bench`` re-execute themselves under one
(`reexec_with_preferred_allocator`), and ``experiments/bench.py`` gives its JAX workers the same
environment. Importing the library changes nothing; in your own scripts, start Python with
``LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`` (see `JEMALLOC_CONF`).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

# Which malloc JRESNET_MALLOC asks for: "auto" takes the first one found, in LIBRARY_NAMES' order.
CHOICES = ("auto", "jemalloc", "tcmalloc", "system")
# jemalloc first: as fast as tcmalloc on both CIFAR nets' steps, and it held 0.9 GB less at peak on
# resnet18_cifar (experiments/results/host-malloc-cpu-2026-11-26.txt).
LIBRARY_NAMES: dict[str, tuple[str, ...]] = {
    "jemalloc": ("libjemalloc.so.2",),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
}
INSTALL_HINTS = {
    "jemalloc": "apt-get install libjemalloc2 (Debian/Ubuntu), dnf install jemalloc (Fedora) or conda install jemalloc",
    "tcmalloc": ("apt-get install libtcmalloc-minimal4 (Debian/Ubuntu), dnf install gperftools-libs (Fedora) or "
                 "conda install gperftools"),
}
# jemalloc's default gives dirty pages back after 10 s, which still unmaps the step's block between
# steps (62k faults a step measured); never decaying keeps it, as tcmalloc does by default.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# gperftools prints a backtrace to stderr for every allocation over 1 GiB (a resnet50 CPU step makes
# several); the CLI's stderr is for one-line errors.
TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 62)}
ENV_CHOICE = "JRESNET_MALLOC"


def default_search_dirs() -> list[Path]:
    """Library folders searched for the allocators: the interpreter's prefixes (a conda env's lib), then the
    multiarch and plain system folders."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    # The running interpreter's own prefixes only: a conda env that is merely activated may hold a
    # tcmalloc built against a newer libstdc++ than this process can load.
    prefixes = [sys.prefix, sys.base_prefix, "/usr/local", "/usr"]
    dirs: list[Path] = []
    for prefix in filter(None, prefixes):
        dirs += [Path(prefix, "lib", multiarch), Path(prefix, "lib64"), Path(prefix, "lib")]
    dirs += [Path("/lib", multiarch), Path("/lib64"), Path("/lib")]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def find_allocator(name: str, search_dirs: Sequence[Path] | None = None) -> Path | None:
    """The path of allocator ``name`` ("jemalloc" or "tcmalloc") on this machine, or None."""
    if name not in LIBRARY_NAMES:
        raise ValueError(f"allocator must be one of {sorted(LIBRARY_NAMES)}; got {name!r}")
    for folder in default_search_dirs() if search_dirs is None else search_dirs:
        for library in LIBRARY_NAMES[name]:
            if (folder / library).is_file():
                return folder / library
    return None


def allocator_in_use(maps: str = "/proc/self/maps") -> str:
    """"jemalloc" or "tcmalloc" when that library is mapped into this process, else "system" (glibc's
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
    """``environ`` with the chosen allocator preloaded, or None when there is nothing to do.

    Nothing to do: ``choice`` is "system"; "auto" and the caller preloads anything already (their
    ``LD_PRELOAD`` wins: another malloc, a sanitizer, a profiler); the chosen library is preloaded already;
    or "auto" found none. An explicit "jemalloc" or "tcmalloc" goes after the caller's own preloads.

    Raises:
        ValueError: ``choice`` is not one of `CHOICES`; or an explicit "jemalloc"/"tcmalloc" is not
            installed (the message says how to install it) or the platform is not Linux.
    """
    if choice not in CHOICES:
        raise ValueError(f"{ENV_CHOICE} must be one of {', '.join(CHOICES)}; got {choice!r}")
    preloaded = environ.get("LD_PRELOAD", "").strip()
    if choice == "system" or (choice == "auto" and preloaded):
        return None
    if not sys.platform.startswith("linux"):
        if choice == "auto":
            return None
        raise ValueError(f"{ENV_CHOICE}={choice}: preloading a malloc needs Linux (LD_PRELOAD); this is "
                         f"{sys.platform}. Set {ENV_CHOICE}=auto or system")
    names = LIBRARY_NAMES if choice == "auto" else (choice,)
    for name in names:
        if any(library in preloaded for library in LIBRARY_NAMES[name]):
            return None  # already running on it: this is the re-executed process
        path = find_allocator(name, search_dirs)
        if path is not None:
            env = dict(environ, LD_PRELOAD=f"{preloaded} {path}".strip())
            defaults = {"MALLOC_CONF": JEMALLOC_CONF} if name == "jemalloc" else TCMALLOC_QUIET
            for key, value in defaults.items():
                env.setdefault(key, value)  # the caller's own settings win
            return env
    if choice == "auto":
        return None
    searched = default_search_dirs() if search_dirs is None else search_dirs
    raise ValueError(f"{ENV_CHOICE}={choice}: no {' or '.join(LIBRARY_NAMES[choice])} found in "
                     f"{[str(d) for d in searched]}; install it ({INSTALL_HINTS[choice]}) "
                     f"or set {ENV_CHOICE}=auto or system")


def malloc_choice(environ: Mapping[str, str]) -> str:
    """The malloc jresnet's entry points ask for: ``JRESNET_MALLOC`` (default "auto"), or "system" when
    ``JRESNET_XLA_FLAGS=0`` opts out of all of jresnet's CPU tuning (the value is then not checked)."""
    if environ.get("JRESNET_XLA_FLAGS", "1") == "0":
        return "system"
    return environ.get(ENV_CHOICE, "auto")


def _rebuildable_command_line() -> bool:
    """Whether ``sys.orig_argv`` re-runs this very command: a script, ``-m`` or ``-c`` run, not a REPL,
    stdin, or a ``sys.argv`` that the process changed (a test, a notebook)."""
    if sys.flags.interactive or not sys.argv or sys.argv[0] in ("", "-"):
        return False
    rest = sys.argv[1:]
    return len(sys.orig_argv) > len(rest) and sys.orig_argv[len(sys.orig_argv) - len(rest):] == rest


def reexec_with_preferred_allocator() -> None:
    """Re-execute this Python process under jemalloc or tcmalloc (``JRESNET_MALLOC``, default "auto"),
    or return when there is nothing to do. For a command's entry point, before anything else runs:
    ``exec`` keeps the process id but replaces everything else in the process.

    ``JRESNET_XLA_FLAGS=0`` (no jresnet CPU tuning) and ``JRESNET_MALLOC=system`` opt out; so does a
    command line that cannot be rebuilt (see `_rebuildable_command_line`).

    Raises:
        ValueError: from `preload_environment`, for a bad or unavailable ``JRESNET_MALLOC``.
        OSError: the interpreter could not be executed again.
    """
    if not sys.executable:  # embedded Python: nothing to execute
        return
    env = preload_environment(malloc_choice(os.environ), os.environ)
    if env is not None and _rebuildable_command_line():
        sys.stdout.flush()
        sys.stderr.flush()
        # orig_argv keeps the interpreter's own options and `-m jresnet.cli`, `-c ...` or the script path.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
