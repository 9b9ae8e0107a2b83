"""Results on disk: a tidy parquet plus a JSON of its configuration, each written atomically, and the
environment stored beside them. (What a result is named by: analysis.identity.)"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jaxlib
import numpy
import optax
import pandas as pd


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file next to `path`, then rename it over `path`.

    A crash mid-write never leaves a truncated result where a finished one was expected.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What a user can do about an I/O error, by errno (describe_os_error); the rest get a generic hint.
OS_ERROR_ADVICE = {
    errno.ENOSPC: "free space there (or give another --out) and run the command again: finished runs are kept and "
    "an unfinished one resumes from its last checkpoint",
    errno.EDQUOT: "free space within your quota (or give another --out) and run the command again: finished runs are "
    "kept and an unfinished one resumes from its last checkpoint",
    errno.EROFS: "the file system is read-only: finished runs there can be read, new ones need a writable --out",
    errno.EACCES: "no permission to write there: give a folder you may write to (--out), or fix its permissions",
    errno.EPERM: "no permission to write there: give a folder you may write to (--out), or fix its permissions",
    errno.ENOENT: "check that the path exists",
    errno.EIO: "the storage failed to read or write: check the disk or network file system, then run again",
}


def check_writable(folder: Path) -> None:
    """Raise the OSError a write into `folder` would meet (read-only file system, no permission, ...),
    before any compute: the folder is created if missing and a temporary file made and removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lnscope-writable.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def describe_os_error(err: OSError) -> str:
    """One line for a user: what failed, where, and what to do (no traceback)."""
    where = " and ".join(str(f) for f in (err.filename, err.filename2) if f)
    what = err.strerror or str(err)
    advice = OS_ERROR_ADVICE.get(err.errno, "check the path and the file system, then run the command again")
    return f"{what}{f': {where}' if where else ''}; {advice}"


def write_run(frame: pd.DataFrame, meta: dict[str, Any], path: Path) -> None:
    """`path` (.parquet) holds the tidy frame, `path.with_suffix('.json')` the config and settings."""
    path = Path(path)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n"))


def read_run(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    path = Path(path)
    return pd.read_parquet(path), json.loads(path.with_suffix(".json").read_text())


def environment() -> dict[str, Any]:
    """Where a result was computed: library versions, devices, host, and the git commit (if any).

    Stored beside every result (training runs, checks, reports, benchmarks) so a number can be
    traced to the code and machine that made it. The commit is None outside a git checkout, and
    `dirty` says whether tracked files differed from it.
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": numpy.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }
