"""jresnet.host_allocator: finding tcmalloc/jemalloc, the preload environment, and the real re-exec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jresnet import host_allocator
from jresnet.host_allocator import (
    ENV_DONE,
    JEMALLOC_CONF,
    allocator_in_use,
    find_allocator,
    preload_environment,
)

# .ci/run installs libtcmalloc-minimal4 and sets this, so the real-library tests cannot skip in CI.
REQUIRE_REAL = os.environ.get("JRESNET_TEST_REQUIRE_TCMALLOC") == "1"
REAL_TCMALLOC = find_allocator("tcmalloc")
needs_tcmalloc = pytest.mark.skipif(REAL_TCMALLOC is None and not REQUIRE_REAL,
                                    reason="tcmalloc not installed (apt-get install libtcmalloc-minimal4)")


def _fake_libraries(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_find_allocator_searches_the_given_folders_in_order(tmp_path):
    first = _fake_libraries(tmp_path / "a", "libjemalloc.so.2")
    second = _fake_libraries(tmp_path / "b", "libtcmalloc.so.4", "libjemalloc.so.2")
    assert find_allocator("tcmalloc", [first, second]) == second / "libtcmalloc.so.4"
    assert find_allocator("jemalloc", [first, second]) == first / "libjemalloc.so.2"
    assert find_allocator("tcmalloc", [first]) is None
    with pytest.raises(ValueError, match=r"allocator must be one of \['jemalloc', 'tcmalloc'\]; got 'mimalloc'"):
        find_allocator("mimalloc", [first])


def test_auto_prefers_tcmalloc_and_keeps_the_callers_preload(tmp_path):
    folder = _fake_libraries(tmp_path, "libtcmalloc_minimal.so.4", "libjemalloc.so.2")
    env = preload_environment("auto", {"LD_PRELOAD": "/opt/mine.so", "PATH": "/bin"}, [folder])
    assert env is not None
    assert env["LD_PRELOAD"] == f"{folder / 'libtcmalloc_minimal.so.4'} /opt/mine.so"
    assert env["PATH"] == "/bin" and env[ENV_DONE] == str(folder / "libtcmalloc_minimal.so.4")
    assert "MALLOC_CONF" not in env


def test_jemalloc_gets_the_retaining_conf_unless_the_caller_set_one(tmp_path):
    folder = _fake_libraries(tmp_path, "libjemalloc.so.2")
    env = preload_environment("auto", {}, [folder])
    assert env is not None and env["MALLOC_CONF"] == JEMALLOC_CONF
    env = preload_environment("jemalloc", {"MALLOC_CONF": "narenas:2"}, [folder])
    assert env is not None and env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.parametrize("environ", [
    {"JRESNET_MALLOC_PRELOADED": "/x/libtcmalloc.so.4"},  # already re-executed once
    {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},  # the caller preloads one already
])
def test_nothing_to_do(tmp_path, environ):
    folder = _fake_libraries(tmp_path, "libtcmalloc.so.4")
    assert preload_environment("auto", environ, [folder]) is None
    assert preload_environment("system", {}, [folder]) is None


def test_auto_without_any_allocator_is_quiet_but_an_explicit_one_says_how_to_install(tmp_path):
    empty = _fake_libraries(tmp_path / "empty")
    assert preload_environment("auto", {}, [empty]) is None
    with pytest.raises(ValueError, match=r"JRESNET_MALLOC=tcmalloc: no libtcmalloc_minimal.so.4 or "
                                         r"libtcmalloc.so.4 found in .*empty.*apt-get install libtcmalloc-minimal4"):
        preload_environment("tcmalloc", {}, [empty])
    with pytest.raises(ValueError, match=r"JRESNET_MALLOC must be one of auto, tcmalloc, jemalloc, system; "
                                         r"got 'glibc'"):
        preload_environment("glibc", {}, [empty])


def test_allocator_in_use_reads_the_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert allocator_in_use(str(maps)) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator_in_use(str(maps)) == "system"
    assert allocator_in_use(str(tmp_path / "missing")) == "system"
    assert allocator_in_use() == "system"  # pytest itself runs on the system malloc


def _run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """The real console entry (`jresnet.cli.run`) in a fresh interpreter, as the installed script runs it."""
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV_DONE, "JRESNET_MALLOC")}
    code = "import sys; from jresnet.cli import run; sys.argv[0] = 'jresnet'; run()"
    return subprocess.run([sys.executable, "-c", code, *args], env={**environ, **env}, capture_output=True,
                          text=True, timeout=300)


@needs_tcmalloc
def test_the_jresnet_command_reexecutes_itself_under_tcmalloc(tmp_path, monkeypatch):
    assert REAL_TCMALLOC is not None, "JRESNET_TEST_REQUIRE_TCMALLOC=1 but no tcmalloc found"
    # `eval` of a folder that holds no run: it fails fast, after the re-exec, and says which malloc it ran on
    # only through /proc; so ask the child to print it before main() instead.
    probe = tmp_path / "sitecustomize.py"
    probe.write_text("import sys\nfrom jresnet.host_allocator import allocator_in_use\n"
                     "print('malloc:', allocator_in_use(), file=sys.stderr)\n")
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = _run_cli(["eval", str(tmp_path / "no-run")], PYTHONPATH=pythonpath)
    assert done.stderr.count("malloc:") == 2, done.stderr  # the first start, then the re-executed one
    assert "malloc: system" in done.stderr and "malloc: tcmalloc" in done.stderr
    assert done.returncode == 2 and "no-run" in done.stderr
    kept = _run_cli(["eval", str(tmp_path / "no-run")], PYTHONPATH=pythonpath, JRESNET_MALLOC="system")
    assert kept.stderr.count("malloc:") == 1 and "malloc: system" in kept.stderr
    cheap = _run_cli(["shapes", "--size", "64", "--kernel", "3"], PYTHONPATH=pythonpath)
    assert cheap.returncode == 0 and cheap.stderr.count("malloc:") == 1  # only step-running commands re-exec


def test_a_bad_choice_is_one_line_and_status_2():
    done = _run_cli(["eval", "nowhere"], JRESNET_MALLOC="glibc")
    assert done.returncode == 2
    assert done.stderr.strip() == ("jresnet: error: JRESNET_MALLOC must be one of auto, tcmalloc, jemalloc, "
                                   "system; got 'glibc'")


def test_the_opt_out_covers_the_allocator(monkeypatch):
    monkeypatch.setenv("JRESNET_XLA_FLAGS", "0")
    monkeypatch.setenv("JRESNET_MALLOC", "not-checked-when-opted-out")
    host_allocator.reexec_with_preferred_allocator()  # returns: no exec, no error
