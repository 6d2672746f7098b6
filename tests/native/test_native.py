"""jresnet.native: the oneDNN kernels build once, load, register, and fall back with a reason when they cannot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jresnet import native

linux_x86 = sys.platform == "linux" and platform.machine() == "x86_64"


def _onednn_extra_installed() -> bool:
    try:
        importlib.metadata.version("onednn-devel-cpu-gomp")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not (linux_x86 and _onednn_extra_installed()), reason="the [onednn] extra is not installed")
def test_with_the_onednn_extra_installed_the_kernels_load() -> None:
    # Guards the skips elsewhere: where the extra is installed (as in CI), a build failure is a failure.
    st = native.status()
    assert st.available, st.reason
    assert st.library is not None and st.library.is_file()
    assert st.library.parent == native.cache_dir()
    assert "2023.2.0" in st.onednn_version


@pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
@pytest.mark.parametrize(("c_in", "hw", "c_out", "k", "stride"), [
    (3, 32, 16, 3, 1), (16, 32, 16, 3, 1), (16, 32, 32, 3, 2), (16, 32, 32, 1, 2), (32, 16, 64, 3, 2),
    (64, 8, 64, 3, 1), (64, 56, 64, 3, 1), (3, 224, 64, 7, 2), (256, 56, 64, 1, 1), (128, 28, 512, 1, 1)])
def test_resnet_convolutions_get_optimised_kernels_not_the_reference_loop(c_in, hw, c_out, k, stride) -> None:
    p = (k - 1) // 2
    out = (hw + 2 * p - k) // stride + 1
    impls = native.implementations(32, (hw, hw), c_in, (out, out), c_out, (k, k), stride, (p, p, p, p))
    assert set(impls) == {"forward", "input_grad", "kernel_grad"}
    assert not any(name.startswith("ref") for name in impls.values()), impls


@pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
def test_implementations_rejects_an_inconsistent_geometry() -> None:
    with pytest.raises(ValueError, match="oneDNN rejected"):
        native.implementations(2, (8, 8), 4, (5, 5), 4, (3, 3))  # 8 - 3 + 1 is 6, not 5
    with pytest.raises(ValueError, match="divisible by groups"):
        native.implementations(2, (8, 8), 4, (6, 6), 6, (3, 3), groups=4)
    with pytest.raises(ValueError, match="groups must be >= 1; got 0"):
        native.implementations(2, (8, 8), 4, (6, 6), 4, (3, 3), groups=0)


def _status_in_subprocess(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = ("from jresnet import native; import jax, jax.numpy as jnp\n"
            "from jresnet.conv_core import conv2d_nhwc, resolved_conv_core\n"
            "st = native.status(); print('AVAILABLE', st.available); print('REASON', st.reason)\n"
            "print('CORE', resolved_conv_core())\n"
            "y = conv2d_nhwc(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 2, 3, 3)), stride=1, padding=((1, 1), (1, 1)))\n"
            "print('CENTRE', float(y[0, 2, 2, 0]))\n")
    full_env = {**os.environ, "JRESNET_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_switched_off_by_environment_convolutions_still_run(tmp_path: Path) -> None:
    run = _status_in_subprocess({"JRESNET_ONEDNN": "0"}, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "AVAILABLE False" in run.stdout and "REASON switched off by JRESNET_ONEDNN=0" in run.stdout
    assert "CORE materialized" in run.stdout
    assert "CENTRE 18.0" in run.stdout  # 3 x 3 window x 2 channels of ones
    assert not (tmp_path / "cache").exists()  # nothing was compiled


@pytest.mark.skipif(not (linux_x86 and native.available()), reason="needs a machine that can build the kernels")
def test_a_compiler_that_fails_leaves_a_reason_and_a_working_fallback(tmp_path: Path) -> None:
    run = _status_in_subprocess({"CXX": str(tmp_path / "no-such-compiler")}, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "AVAILABLE False" in run.stdout and "no-such-compiler" in run.stdout
    assert "CORE materialized" in run.stdout and "CENTRE 18.0" in run.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (linux_x86 and native.available()), reason="needs a machine that can build the kernels")
def test_the_first_process_compiles_and_later_ones_load_the_cached_library(tmp_path: Path) -> None:
    first, second = (_status_in_subprocess({}, tmp_path) for _ in range(2))
    for run in (first, second):
        assert run.returncode == 0, run.stderr
        assert "AVAILABLE True" in run.stdout and "CORE onednn" in run.stdout and "CENTRE 18.0" in run.stdout
    assert "compiling the oneDNN kernels" in first.stderr
    assert "compiling" not in second.stderr
    assert len(list((tmp_path / "cache" / "native").glob("jresnet_onednn_*.so"))) == 1


def test_main_reports_the_status(tmp_path: Path) -> None:
    env = {**os.environ, "JRESNET_ONEDNN": "0"}
    run = subprocess.run([sys.executable, "-m", "jresnet.native"], capture_output=True, text=True, env=env)
    assert run.returncode == 1
    assert "not available: switched off by JRESNET_ONEDNN=0" in run.stdout


@pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
def test_busy_time_counts_each_kernel_call() -> None:
    import jax
    import jax.numpy as jnp

    from jresnet.conv_core import conv2d_nhwc, resolved_conv_core

    assert resolved_conv_core() == "onednn"
    loss = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv2d_nhwc(x, w, stride=1, padding=((1, 1), (1, 1))))),
                            argnums=(0, 1)))
    x, w = jnp.ones((2, 6, 6, 3)), jnp.ones((4, 3, 3, 3))
    jax.block_until_ready(loss(x, w))  # compile
    jax.effects_barrier()  # nothing else still running
    native.busy_time(reset=True)
    jax.block_until_ready(loss(x, w))
    seconds, calls = native.busy_time(reset=True)
    assert calls == 3 and seconds > 0  # forward, input gradient, kernel gradient
    assert native.busy_time() == (0.0, 0)


@pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
@pytest.mark.parametrize("bhwc", [(128, 32, 32, 16), (128, 16, 16, 32), (2, 3, 5, 7)])
def test_batch_norm_gets_an_optimised_kernel_and_a_relu_workspace(bhwc: tuple[int, int, int, int]) -> None:
    plain, fused = native.batch_norm_plan(bhwc, 1e-5, False), native.batch_norm_plan(bhwc, 1e-5, True)
    for plan in (plain, fused):
        assert not any(part.strip().startswith("ref") for part in plan.implementation.split("/")), plan
    assert plain.workspace_bytes == 0
    assert fused.workspace_bytes >= bhwc[0] * bhwc[1] * bhwc[2] * bhwc[3] // 8  # at least a bit per value


@pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
def test_batch_norm_plan_rejects_an_empty_activation_by_name() -> None:
    with pytest.raises(ValueError, match=r"\(B, H, W, C\) = \(2, 0, 4, 3\).*must be >= 1"):
        native.batch_norm_plan((2, 0, 4, 3), 1e-5, False)


@pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
def test_busy_time_counts_batch_norm_calls_too() -> None:
    import jax
    import jax.numpy as jnp

    from jresnet.norm_core import batch_norm_train_with_stats

    w, b = jnp.ones(4), jnp.zeros(4)
    step = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(batch_norm_train_with_stats(x, w, b, 1e-5, relu=True)[0]))))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 4)), jnp.float32)
    jax.block_until_ready(step(x))
    jax.effects_barrier()
    native.busy_time(reset=True)
    jax.block_until_ready(step(x))
    assert native.busy_time(reset=True)[1] == 2  # forward and backward
