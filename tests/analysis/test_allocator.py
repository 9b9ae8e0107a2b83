"""The allocator re-exec: once, skipped when active or opted out, and the program's output unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import allocator

ROOT = Path(__file__).resolve().parents[2]
needs_wheel = pytest.mark.skipif(
    allocator.library_path() is None or not sys.platform.startswith("linux"), reason="cmeel-mimalloc not installed"
)


@pytest.fixture
def execs(monkeypatch):
    """Record os.execve calls instead of replacing the test process."""
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    for var in (allocator.OPT_OUT_VAR, allocator.REEXEC_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(allocator, "active", lambda: False)
    return calls


@needs_wheel
def test_reexec_once_with_the_library_preloaded(execs, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/some/other.so")
    assert allocator.ensure_preloaded() is None
    [(path, argv, env)] = execs
    assert path == sys.executable and argv[0] == sys.executable and argv[1:] == sys.orig_argv[1:]
    # mimalloc first, the user's preload kept; the marker stops a second re-exec in the child
    assert env["LD_PRELOAD"].split(":") == [str(allocator.library_path()), "/some/other.so"]
    assert env[allocator.REEXEC_VAR] == "1"
    monkeypatch.setattr(allocator.os, "environ", env)
    assert allocator.ensure_preloaded() == "already re-executed once"
    assert len(execs) == 1


def test_skipped_when_opted_out_or_active(execs, monkeypatch):
    monkeypatch.setenv(allocator.OPT_OUT_VAR, "system")
    assert allocator.ensure_preloaded() == "opted out"
    monkeypatch.delenv(allocator.OPT_OUT_VAR)
    monkeypatch.setattr(allocator, "active", lambda: True)
    if sys.platform.startswith("linux"):
        assert allocator.ensure_preloaded() == "already active"
    assert execs == []


def test_bad_choice_is_a_clear_error(execs, monkeypatch):
    monkeypatch.setenv(allocator.OPT_OUT_VAR, "tcmalloc")
    with pytest.raises(ValueError, match="valid choices: mimalloc"):
        allocator.ensure_preloaded()


@needs_wheel
def test_program_output_is_the_same_with_and_without():
    # A real re-exec: the child reports mimalloc loaded; with the opt-out it runs on glibc; the
    # command's own output (`lnscope list`) is identical either way.
    script = (
        "from analysis.allocator import ensure_preloaded, active\n"
        "reason = ensure_preloaded()\n"
        "print(active(), reason)\n"
        "from analysis.cli import main\n"
        "main(['list'])\n"
    )
    outputs = {}
    for choice in ("mimalloc", "system"):
        env = {**os.environ, allocator.OPT_OUT_VAR: choice, "PYTHONPATH": str(ROOT)}
        env.pop(allocator.REEXEC_VAR, None)
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr
        outputs[choice] = done.stdout.splitlines()
    assert outputs["mimalloc"][0] == "True already re-executed once"
    assert outputs["system"][0] == "False opted out"
    assert outputs["mimalloc"][1:] == outputs["system"][1:] and len(outputs["system"]) > 10


@pytest.mark.parametrize(
    "argv, program",
    [
        (["python", "/venv/bin/lnscope", "probe"], True),
        (["python", "-m", "analysis.cli", "--help"], True),
        (["python", "-X", "importtime", "-m", "analysis.report"], True),
        (["python", "-m", "pytest", "tests"], False),
        (["python", "my_study.py"], False),
        (["python", "-c", "import analysis"], False),
        (["python"], False),
    ],
)
def test_lnscope_programs_are_told_from_other_processes(argv, program):
    assert allocator.started_as_program(argv) is program


def test_a_program_re_executes_before_importing_jax():
    """What `lnscope` imports before its early re-exec (analysis.command) imports no JAX, so the
    re-executed process is the only one that pays for it; the package's re-exports still work."""
    script = (
        "import sys, analysis.command\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'pandas')], 'imported early'\n"
        "from analysis import CHEAP_PROBES\n"
        "assert 'jax' in sys.modules and CHEAP_PROBES\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", script]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr


@needs_wheel
def test_the_installed_kernel_runs_with_mimalloc(tmp_path, monkeypatch):
    """A notebook's kernel cannot re-execute itself: the kernel lnscope installs preloads mimalloc
    through its environment, and code run in it finds mimalloc loaded."""
    client_lib = pytest.importorskip("jupyter_client.manager")
    folder = allocator.install_kernel(prefix=str(tmp_path))
    assert folder == tmp_path / "share" / "jupyter" / "kernels" / allocator.KERNEL_NAME
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))  # found before this environment's
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for var in (allocator.OPT_OUT_VAR, allocator.REEXEC_VAR, "LD_PRELOAD"):
        monkeypatch.delenv(var, raising=False)
    manager, client = client_lib.start_new_kernel(kernel_name=allocator.KERNEL_NAME)
    try:
        seen = []
        reply = client.execute_interactive(
            "from analysis.allocator import active; print(active())",
            timeout=120,
            output_hook=lambda msg: seen.append(msg["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok"
        assert "".join(seen).strip() == "True"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


# In a fresh process: import lnscope, then allocate a block above glibc's default mmap threshold and
# report whether glibc served it by mmap (mallinfo2's count of mapped blocks grew) and what the allocator module says.
MMAPPED_BLOCKS = """
import ctypes, json
import analysis
from analysis.allocator import system_allocator_tuned
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
print(json.dumps({"tuned": system_allocator_tuned(), "mmapped": libc.mallinfo2().hblks - before}))
"""


@pytest.mark.skipif(not allocator._on_glibc(), reason="glibc's malloc only")
@pytest.mark.parametrize("opt_out, tuned", [(False, True), (True, False)])
def test_importing_lnscope_keeps_glibc_from_mapping_large_blocks(opt_out, tuned):
    """A script's `import analysis` tunes glibc's malloc (a large block comes from the heap, reused
    after free, not mapped afresh); `LNSCOPE_ALLOCATOR=system` leaves it as it comes."""
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.OPT_OUT_VAR)}
    env["PYTHONPATH"] = str(ROOT)
    if opt_out:
        env[allocator.OPT_OUT_VAR] = "system"
    done = subprocess.run(
        [sys.executable, "-c", MMAPPED_BLOCKS], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"tuned": tuned, "mmapped": 0 if tuned else 1}


@pytest.mark.skipif(not allocator._on_glibc(), reason="glibc's malloc only")
def test_glibc_is_not_tuned_under_mimalloc(monkeypatch):
    monkeypatch.setattr(allocator, "_system_tuned", False)
    monkeypatch.setattr(allocator, "active", lambda: True)
    assert allocator.tune_system_allocator({}) == "mimalloc is loaded"
    assert allocator.tune_system_allocator({allocator.OPT_OUT_VAR: "system"}) == "opted out"
    assert not allocator.system_allocator_tuned()
