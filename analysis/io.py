"""Results on disk: a tidy parquet plus a JSON of its configuration, each written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

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
