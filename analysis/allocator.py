"""A faster memory allocator for lnscope's programs: mimalloc, preloaded by a one-time re-exec.

Why: XLA's CPU runtime takes a fresh scratch buffer for every call of a compiled program (tens of
MiB for a training step). glibc's malloc serves blocks over its mmap threshold (32 MiB at most) with
`mmap` and gives them back with `munmap`, so every step page-faults its whole scratch buffer in
again. mimalloc (Microsoft's allocator, shipped as a wheel by `cmeel-mimalloc`, a dependency of
lnscope) keeps freed memory mapped and reuses it, so those faults disappear (measurements:
benchmarks/README.md). No root is needed and nothing changes but speed.

How: an allocator can only replace malloc if it is loaded before the program starts, so
`ensure_preloaded()` re-executes the running program once with `LD_PRELOAD` naming mimalloc. The
`lnscope` command, `python -m analysis.report` and `python -m benchmarks` call it first.

    LNSCOPE_ALLOCATOR=system lnscope ...     opt out (glibc's malloc, no re-exec)

Your own script: call `analysis.allocator.ensure_preloaded()` as its first statement (it re-runs
the script once, so do it before any work), or start it with the library preloaded yourself:

    LD_PRELOAD=$(python -m analysis.allocator) python my_script.py

A notebook: a running Jupyter kernel cannot re-execute itself, so lnscope installs a kernel whose
environment preloads mimalloc ("Python (lnscope, mimalloc)"; `make setup` does it, or `make kernel`):

    python -m analysis.allocator kernel            # into this environment (sys.prefix), name "lnscope"

A script or a kernel without mimalloc: importing `analysis` (any lnscope module under it) tunes
glibc's malloc instead (`tune_system_allocator`: no mmap for large blocks, no trimming of the heap),
so a step's scratch buffer is reused from the heap rather than mapped and faulted in again each call.
The process then keeps its peak heap mapped until it ends. `LNSCOPE_ALLOCATOR=system` leaves glibc's
malloc untouched as well.

Linux only (elsewhere, and without the wheel, everything runs as before on the system allocator).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from pathlib import Path

OPT_OUT_VAR = "LNSCOPE_ALLOCATOR"  # "system": keep the system allocator
OPT_OUT_VALUES = ("system",)
REEXEC_VAR = "LNSCOPE_REEXEC"  # set in the re-executed process: never re-exec twice
LIBRARY_NAME = "libmimalloc.so"
DISTRIBUTION = "cmeel-mimalloc"


def library_path() -> Path | None:
    """Path of libmimalloc.so from the cmeel-mimalloc wheel, or None if it is not installed."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if Path(str(entry)).name == LIBRARY_NAME:
            path = Path(entry.locate()).resolve()
            return path if path.is_file() else None
    return None


def active() -> bool:
    """Whether mimalloc is loaded into this process (preloaded by us or by the user)."""
    try:
        return "libmimalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _skip_reason(environ: dict[str, str]) -> str | None:
    choice = environ.get(OPT_OUT_VAR, "")
    if choice and choice not in OPT_OUT_VALUES + ("mimalloc",):
        raise ValueError(f"{OPT_OUT_VAR}={choice!r}; valid choices: mimalloc (default), {', '.join(OPT_OUT_VALUES)}")
    if choice in OPT_OUT_VALUES:
        return "opted out"
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if environ.get(REEXEC_VAR):
        return "already re-executed once"
    if active():
        return "already active"
    if library_path() is None:
        return f"{DISTRIBUTION} is not installed"
    return None


def ensure_preloaded() -> str | None:
    """Re-execute this program once with mimalloc preloaded, unless that is not wanted or possible.

    Returns the reason it did not re-execute (opted out, already active, already re-executed once,
    library missing, not Linux); when it does re-execute it does not return (os.execve). The program
    is run again from the start with the same interpreter, arguments and environment, plus
    `LD_PRELOAD` (mimalloc first) and `LNSCOPE_REEXEC=1`, so its output is the same.
    """
    reason = _skip_reason(dict(os.environ))
    if reason is not None:
        return reason
    env = dict(os.environ)
    preload = [str(library_path())] + [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    env["LD_PRELOAD"] = ":".join(preload)
    env[REEXEC_VAR] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *sys.orig_argv[1:]]
    os.execve(sys.executable, argv, env)
    return None  # not reached (execve replaces the process); kept for tests that stub it


# glibc's mallopt parameters (malloc.h): large blocks from the heap, never mmapped, and a heap that is
# never trimmed, so freed scratch buffers stay mapped and are reused; the top pad grows the heap in
# steps large enough for a step's buffers.
MALLOPT_SETTINGS = (("M_MMAP_MAX", -4, 0), ("M_TRIM_THRESHOLD", -1, 2**31 - 1), ("M_TOP_PAD", -2, 64 << 20))
_system_tuned = False


def _on_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # a libc without the name (musl)
        return False


def system_allocator_tuned() -> bool:
    """Whether `tune_system_allocator` changed glibc's malloc in this process."""
    return _system_tuned


def tune_system_allocator(environ: dict[str, str] | None = None) -> str | None:
    """Keep glibc's malloc from mapping and unmapping large blocks (MALLOPT_SETTINGS), where it is this
    process's allocator: not when mimalloc is loaded, not under `LNSCOPE_ALLOCATOR=system`, not off
    glibc. Idempotent. Returns why it did not tune (None: tuned, now or before); a bad
    LNSCOPE_ALLOCATOR is left for the program's own setup, which reports it."""
    global _system_tuned
    if _system_tuned:
        return None
    choice = (os.environ if environ is None else environ).get(OPT_OUT_VAR, "")
    if choice in OPT_OUT_VALUES:
        return "opted out"
    if not _on_glibc():
        return "not glibc"
    if active():
        return "mimalloc is loaded"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    refused = [name for name, param, value in MALLOPT_SETTINGS if mallopt(param, value) != 1]
    if refused:
        return f"mallopt refused {', '.join(refused)}"
    _system_tuned = True
    return None


PROGRAM_NAMES = ("lnscope",)  # console scripts that are lnscope programs
PROGRAM_MODULES = ("analysis.cli", "analysis.report")  # `python -m` modules that are lnscope programs


def started_as_program(argv: list[str] | None = None) -> bool:
    """Whether this process is one of lnscope's programs (`lnscope ...`, `python -m analysis.cli`,
    `python -m analysis.report`), from the command line it was started with (default: sys.orig_argv)."""
    argv = list(sys.orig_argv if argv is None else argv)[1:]  # the interpreter's options, then the program
    while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):
        argv = argv[2:] if argv[0] in ("-X", "-W") else argv[1:]
    if argv[:1] == ["-c"]:  # python -c CODE: a snippet, not a program
        return False
    if argv[:1] == ["-m"]:
        return argv[1:2] != [] and argv[1] in PROGRAM_MODULES
    return bool(argv) and Path(argv[0]).name in PROGRAM_NAMES  # .venv/bin/lnscope (its #! runs python)


def preload_before_imports() -> str | None:
    """`ensure_preloaded()` in one of lnscope's programs, called as the program starts importing, before
    JAX and the rest: the re-executed process then imports them once, not twice. Elsewhere (a test, a
    notebook, a user's script importing lnscope) nothing happens; returns why it did not re-execute.
    A bad LNSCOPE_ALLOCATOR is left for the program's own setup, which reports it as one line."""
    if not started_as_program():
        return "not an lnscope program"
    try:
        return ensure_preloaded()
    except ValueError as err:
        return str(err)


KERNEL_NAME = "lnscope"
KERNEL_DISPLAY_NAME = "Python (lnscope, mimalloc)"


def kernel_spec(library: Path | None = None) -> dict:
    """The Jupyter kernel.json of this environment's Python with mimalloc preloaded (`library`,
    default: the wheel's), or a plain one where there is none (not Linux, the wheel missing)."""
    library = library_path() if library is None and sys.platform.startswith("linux") else library
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }
    if library is not None:
        # LNSCOPE_REEXEC: the kernel's process is already what a re-exec would make
        spec["env"] = {"LD_PRELOAD": str(library), REEXEC_VAR: "1"}
    return spec


def install_kernel(prefix: str | None = None, name: str = KERNEL_NAME) -> Path:
    """Install `kernel_spec()` as Jupyter kernel `name` under `prefix` (default: this environment,
    sys.prefix), replacing an older one of that name; returns its folder. Needs jupyter_client."""
    import json
    import tempfile

    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1) + "\n")
        where = KernelSpecManager().install_kernel_spec(folder, name, prefix=prefix or sys.prefix, replace=True)
    return Path(where)


if __name__ == "__main__":
    # `LD_PRELOAD=$(python -m analysis.allocator) python my_script.py`; `python -m analysis.allocator kernel`
    if sys.argv[1:] == ["kernel"]:
        print(install_kernel())
        sys.exit(0)
    if sys.argv[1:]:
        sys.exit(f"unknown argument {' '.join(sys.argv[1:])!r}; valid: none (print the library's path), kernel")
    path = library_path()
    if path is None:
        sys.exit(f"{DISTRIBUTION} is not installed (pip install {DISTRIBUTION})")
    print(path)
