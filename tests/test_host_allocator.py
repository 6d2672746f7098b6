"""jresnet.host_allocator: finding jemalloc/tcmalloc, the preload environment, and the real re-exec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jresnet import host_allocator
from jresnet.host_allocator import (
    JEMALLOC_CONF,
    LIBRARY_NAMES,
    TCMALLOC_QUIET,
    allocator_in_use,
    find_allocator,
    preload_environment,
)

# .ci/run installs jemalloc and tcmalloc and names the one "auto" must pick, so the real re-exec tests
# cannot skip in CI.
REQUIRED = os.environ.get("JRESNET_TEST_REQUIRE_MALLOC")
REAL = next((name for name in LIBRARY_NAMES if find_allocator(name) is not None), None)
needs_a_real_malloc = pytest.mark.skipif(
    REAL is None and not REQUIRED, reason="neither jemalloc nor tcmalloc is installed (apt-get install libjemalloc2)")


def _fake_libraries(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_find_allocator_searches_the_given_folders_in_order(tmp_path: Path) -> None:
    first = _fake_libraries(tmp_path / "a", "libjemalloc.so.2")
    second = _fake_libraries(tmp_path / "b", "libtcmalloc.so.4", "libjemalloc.so.2")
    assert find_allocator("tcmalloc", [first, second]) == second / "libtcmalloc.so.4"
    assert find_allocator("jemalloc", [first, second]) == first / "libjemalloc.so.2"
    assert find_allocator("tcmalloc", [first]) is None
    with pytest.raises(ValueError, match=r"allocator must be one of \['jemalloc', 'tcmalloc'\]; got 'mimalloc'"):
        find_allocator("mimalloc", [first])


def test_auto_prefers_jemalloc_with_its_retaining_conf(tmp_path: Path) -> None:
    folder = _fake_libraries(tmp_path, "libtcmalloc_minimal.so.4", "libjemalloc.so.2")
    env = preload_environment("auto", {"PATH": "/bin"}, [folder])
    assert env is not None
    assert env["LD_PRELOAD"] == str(folder / "libjemalloc.so.2")
    assert env["PATH"] == "/bin" and env["MALLOC_CONF"] == JEMALLOC_CONF


def test_tcmalloc_is_kept_quiet_about_large_blocks(tmp_path: Path) -> None:
    folder = _fake_libraries(tmp_path, "libtcmalloc_minimal.so.4")
    env = preload_environment("auto", {"TCMALLOC_RELEASE_RATE": "0"}, [folder])
    assert env is not None and env["LD_PRELOAD"] == str(folder / "libtcmalloc_minimal.so.4")
    assert env["TCMALLOC_RELEASE_RATE"] == "0"
    assert {k: env[k] for k in TCMALLOC_QUIET} == TCMALLOC_QUIET and "MALLOC_CONF" not in env


def test_the_callers_preload_wins(tmp_path: Path) -> None:
    folder = _fake_libraries(tmp_path, "libtcmalloc_minimal.so.4")
    mine = {"LD_PRELOAD": "/opt/libasan.so.8"}
    assert preload_environment("auto", mine, [folder]) is None  # a sanitizer, profiler or other malloc
    env = preload_environment("tcmalloc", mine, [folder])  # asked for explicitly: after the caller's
    assert env is not None and env["LD_PRELOAD"] == f"/opt/libasan.so.8 {folder / 'libtcmalloc_minimal.so.4'}"
    assert preload_environment("tcmalloc", env, [folder]) is None  # the re-executed process: done


def test_the_callers_malloc_conf_wins(tmp_path: Path) -> None:
    folder = _fake_libraries(tmp_path, "libjemalloc.so.2")
    env = preload_environment("jemalloc", {"MALLOC_CONF": "narenas:2"}, [folder])
    assert env is not None and env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.parametrize("choice", ["auto", "tcmalloc"])
def test_once_preloaded_there_is_nothing_to_do(tmp_path: Path, choice: str) -> None:
    folder = _fake_libraries(tmp_path, "libtcmalloc.so.4")
    assert preload_environment(choice, {"LD_PRELOAD": str(folder / "libtcmalloc.so.4")}, [folder]) is None


def test_system_means_no_preload(tmp_path: Path) -> None:
    assert preload_environment("system", {}, [_fake_libraries(tmp_path, "libtcmalloc.so.4")]) is None


def test_auto_without_any_allocator_is_quiet_but_an_explicit_one_says_how_to_install(tmp_path: Path) -> None:
    empty = _fake_libraries(tmp_path / "empty")
    assert preload_environment("auto", {}, [empty]) is None
    with pytest.raises(ValueError, match=r"JRESNET_MALLOC=tcmalloc: no libtcmalloc_minimal.so.4 or "
                                         r"libtcmalloc.so.4 found in .*empty.*apt-get install libtcmalloc-minimal4"):
        preload_environment("tcmalloc", {}, [empty])
    with pytest.raises(ValueError, match=r"JRESNET_MALLOC must be one of auto, jemalloc, tcmalloc, system; "
                                         r"got 'glibc'"):
        preload_environment("glibc", {}, [empty])


def test_an_explicit_choice_off_linux_says_it_needs_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_libraries(tmp_path, "libtcmalloc.so.4")
    monkeypatch.setattr(host_allocator.sys, "platform", "darwin")
    assert preload_environment("auto", {}, [folder]) is None
    with pytest.raises(ValueError, match=r"JRESNET_MALLOC=tcmalloc: preloading a malloc needs Linux .*darwin"):
        preload_environment("tcmalloc", {}, [folder])


def test_allocator_in_use_reads_the_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert allocator_in_use(str(maps)) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator_in_use(str(maps)) == "system"
    assert allocator_in_use(str(tmp_path / "missing")) == "system"
    if not os.environ.get("LD_PRELOAD"):
        assert allocator_in_use() == "system"


def _run_cli(args: list[str], *, module: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """The real console entry (`jresnet.cli.run`) in a fresh interpreter, as the installed script runs it
    (``python -c``), or as ``python -m jresnet.cli``."""
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "JRESNET_MALLOC", "JRESNET_XLA_FLAGS")}
    code = "import sys; from jresnet.cli import run; sys.argv[0] = 'jresnet'; run()"
    how = ["-m", "jresnet.cli"] if module else ["-c", code]
    return subprocess.run([sys.executable, *how, *args], env={**environ, **env}, capture_output=True,
                          text=True, timeout=300)


@needs_a_real_malloc
def test_the_jresnet_command_reexecutes_itself_under_the_preferred_malloc(tmp_path: Path) -> None:
    assert REAL is not None, f"JRESNET_TEST_REQUIRE_MALLOC={REQUIRED} but neither jemalloc nor tcmalloc is found"
    assert REQUIRED in (None, REAL)
    # Every start of the child prints its malloc (a sitecustomize runs before any command). `eval` of a
    # folder that holds no run fails fast, after the re-exec.
    probe = tmp_path / "sitecustomize.py"
    probe.write_text("import sys\nfrom jresnet.host_allocator import allocator_in_use\n"
                     "print('malloc:', allocator_in_use(), file=sys.stderr)\n")
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = _run_cli(["eval", str(tmp_path / "no-run")], PYTHONPATH=pythonpath)
    assert done.stderr.count("malloc:") == 2, done.stderr  # the first start, then the re-executed one
    assert "malloc: system" in done.stderr and f"malloc: {REAL}" in done.stderr
    assert done.returncode == 2 and "no-run" in done.stderr
    as_module = _run_cli(["eval", str(tmp_path / "no-run")], module=True, PYTHONPATH=pythonpath)
    assert as_module.stderr.count(f"malloc: {REAL}") == 1 and as_module.returncode == 2, as_module.stderr
    kept = _run_cli(["eval", str(tmp_path / "no-run")], PYTHONPATH=pythonpath, JRESNET_MALLOC="system")
    assert kept.stderr.count("malloc:") == 1 and "malloc: system" in kept.stderr
    cheap = _run_cli(["shapes", "--size", "64", "--kernel", "3"], PYTHONPATH=pythonpath)
    assert cheap.returncode == 0 and cheap.stderr.count("malloc:") == 1  # only step-running commands re-exec


def test_a_bad_choice_is_one_line_and_status_2() -> None:
    done = _run_cli(["eval", "nowhere"], JRESNET_MALLOC="glibc")
    assert done.returncode == 2
    assert done.stderr.strip() == ("jresnet eval: error: JRESNET_MALLOC must be one of auto, jemalloc, tcmalloc, "
                                   "system; got 'glibc'")


def test_the_opt_out_covers_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JRESNET_XLA_FLAGS", "0")
    monkeypatch.setenv("JRESNET_MALLOC", "not-checked-when-opted-out")
    host_allocator.reexec_with_preferred_allocator()  # returns: no exec, no error


def test_a_command_line_that_is_not_this_process_is_never_re_executed(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """In-process callers (tests, notebooks) change sys.argv: re-running sys.orig_argv would restart them."""
    (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
    monkeypatch.setattr(host_allocator, "default_search_dirs", lambda: [tmp_path])
    for name in ("LD_PRELOAD", "JRESNET_MALLOC", "JRESNET_XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    calls: list[list[str]] = []
    monkeypatch.setattr(host_allocator.os, "execve", lambda path, argv, env: calls.append(argv))
    monkeypatch.setattr(host_allocator.sys, "argv", ["jresnet", "train"])
    monkeypatch.setattr(host_allocator.sys, "orig_argv", ["python", "-m", "pytest", "-q"])
    host_allocator.reexec_with_preferred_allocator()
    assert calls == []
    monkeypatch.setattr(host_allocator.sys, "orig_argv", ["python", "-X", "dev", "/venv/bin/jresnet", "train"])
    host_allocator.reexec_with_preferred_allocator()
    assert calls == [[host_allocator.sys.executable, "-X", "dev", "/venv/bin/jresnet", "train"]]


def test_malloc_choice_reads_jresnet_malloc_unless_cpu_tuning_is_off() -> None:
    assert host_allocator.malloc_choice({}) == "auto"
    assert host_allocator.malloc_choice({"JRESNET_MALLOC": "tcmalloc"}) == "tcmalloc"
    assert host_allocator.malloc_choice({"JRESNET_MALLOC": "bogus", "JRESNET_XLA_FLAGS": "0"}) == "system"
