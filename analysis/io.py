"""Results on disk: a tidy parquet plus a JSON of its configuration, each written atomically, and the
environment stored beside them. (What a result is named by: analysis.identity.)"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

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
            out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                                 timeout=10)  # fmt: skip
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
