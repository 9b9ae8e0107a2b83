"""analysis.runtime: the persistent compilation cache's configuration and releasing compiled programs."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

from analysis import runtime


@pytest.fixture
def restore_cache_dir():
    saved = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", saved)


def test_cache_dir_from_env_default_or_off(monkeypatch, tmp_path, restore_cache_dir):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "explicit"))
    assert runtime.configure_compilation_cache() == tmp_path / "explicit"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "explicit")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.configure_compilation_cache() == tmp_path / "xdg" / "lnscope" / "jax"
    monkeypatch.setenv(runtime.CACHE_VAR, "off")
    jax.config.update("jax_compilation_cache_dir", "unchanged")
    assert runtime.configure_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == "unchanged"
    monkeypatch.setenv(runtime.CACHE_VAR, "maybe")
    with pytest.raises(ValueError, match="'maybe'.*valid choices: on .default., off"):
        runtime.configure_compilation_cache()


def test_release_only_when_the_mappings_are_crowded(monkeypatch):
    counts = runtime.memory_mappings()
    if counts is None:
        pytest.skip("no /proc on this platform")
    used, limit = counts
    assert 0 < used < limit
    released = []
    monkeypatch.setattr(runtime, "release_compiled", lambda: released.append(True))
    assert runtime.release_compiled_if_crowded(fraction=1.0) is False and not released
    assert runtime.release_compiled_if_crowded(fraction=0.0) is True and released == [True]


def test_released_programs_still_run():
    f = jax.jit(lambda x: x * 2 + 1)
    assert float(f(jnp.float32(1))) == 3.0
    runtime.release_compiled()
    assert float(f(jnp.float32(2))) == 5.0


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "Auto"])
def test_bad_worker_count_is_named_with_the_valid_values(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.WORKERS_VAR, value)
    with pytest.raises(ValueError, match=f"{runtime.WORKERS_VAR}={value!r}.*auto"):
        runtime.default_workers()


def test_worker_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.WORKERS_VAR, "3")
    assert runtime.default_workers() == 3
    monkeypatch.delenv(runtime.WORKERS_VAR)
    assert runtime.default_workers() == 1  # in Python: this process, unless asked
    monkeypatch.setenv(runtime.WORKERS_VAR, "auto")  # what the lnscope command sets
    assert 1 <= runtime.default_workers() <= runtime.MAX_AUTO_WORKERS


def test_streams_one_per_core_on_cpu_or_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.STREAMS_VAR, raising=False)
    expected = min(runtime.available_cores(), runtime.MAX_AUTO_STREAMS) if jax.default_backend() == "cpu" else 1
    assert runtime.default_streams() == expected
    monkeypatch.setenv(runtime.STREAMS_VAR, "3")
    assert runtime.default_streams() == 3


@pytest.mark.parametrize("value", ["0", "-2", "auto", "1.5"])
def test_bad_stream_count_is_named(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.STREAMS_VAR, value)
    with pytest.raises(ValueError, match=f"{runtime.STREAMS_VAR}={value!r}.*whole number"):
        runtime.default_streams()


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="workers are restricted to CPUs only when JAX runs on the CPU"
)
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_worker_cpus_split_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.PIN_VAR, raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {4, 2, 7})
    assert runtime.worker_cpus(1) == [[2, 4, 7]]
    assert runtime.worker_cpus(2) == [[2, 4], [7]]  # contiguous, larger shares first
    assert runtime.worker_cpus(3) == [[2], [4], [7]]
    assert runtime.worker_cpus(4) is None  # more workers than CPUs: no restriction
    monkeypatch.setenv(runtime.PIN_VAR, "off")
    assert runtime.worker_cpus(2) is None
    monkeypatch.setenv(runtime.PIN_VAR, "on")
    assert runtime.worker_cpus(2) == [[2, 4], [7]]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # this process runs on an accelerator
    assert runtime.worker_cpus(2) is None


def test_importing_the_job_pool_starts_no_jax_backend() -> None:
    """A worker restricts its CPUs before JAX starts its CPU client, which sizes its thread pool then;
    the worker imports analysis.experiments.runs (to unpickle its initializer) before that."""
    import subprocess
    import sys

    code = (
        "import analysis.experiments.runs\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized(), 'a JAX backend started at import'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("value", ["yes", "0", "OFF"])
def test_bad_pin_setting_is_named(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.PIN_VAR, value)
    with pytest.raises(ValueError, match=f"{runtime.PIN_VAR}={value!r}.*on, off"):
        runtime.worker_cpus(2)


def test_threads_run_the_callers_program_with_python_scalars_under_x64():
    """Python ints become arrays in the caller's thread: under jax.enable_x64 they are int64 there,
    and converted on a worker thread they would be int32 and not fit the compiled program."""
    import jax
    import jax.numpy as jnp

    from analysis.runtime import run_on_threads

    @jax.jit
    def f(x, s, n):
        return x * s + n

    with jax.enable_x64(True):
        x = jnp.arange(3.0)
        calls = [(x, 3, 4), (x, 5, 6)]
        one, two = run_on_threads(f, calls, 1), run_on_threads(f, calls, 2)
        assert one[0].dtype == two[0].dtype == jnp.float64
    for a, b, (_, s, n) in zip(one, two, calls):
        assert (jax.device_get(a) == jax.device_get(b)).all() and (jax.device_get(a) == jax.device_get(x) * s + n).all()
