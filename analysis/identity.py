"""Content ids: the names stored results go by, and the fingerprint of the code that computed them.

Every store names a result by a hash of what determines its numbers, so running the same thing again
finds it and anything different gets a new name:

    training runs        analysis.train.store.config_hash   (config, data, numerics, code)
    experiments' jobs    analysis.experiments.runs.job_key  (job spec, code)
    the init atlas       analysis.report.init_report        (study settings, code)
    report figures       analysis.report.build.figure_key   (the data file, the source that draws them)

`content_id(value)` is 16 hex digits of sha256 over `canonical_json(value)`. The canonical form:

    dataclass      a dict of its fields (the class name is not part of it: a payload names its kind)
    mapping        a dict; keys must be strings (JSON's own; an int key would collide with its string)
    list, tuple    a list: one sequence type, as in JSON, so a config read back from its stored JSON
                   has the id of the config that wrote it
    float          Python's repr (the shortest string that reads back as the same float): 0.1 stays
                   0.1 in every process; 1 and 1.0 differ, as do 0.0 and -0.0
    numpy scalar   its Python value;  Path: its string
    None, bool, int, str as they are; anything else is a TypeError naming where it sits

and the JSON has sorted keys, so key order never matters. (For plain JSON data this is exactly
`json.dumps(value, sort_keys=True)`: the ids of stores written before this module are unchanged.)

`code_fingerprint()` is the one definition of "the code that computes numbers": the Python sources
of COMPUTE_ROOMS (models/, analysis/execution/, analysis/probe/, analysis/train/), every stored
number passes through them. A store keyed by configuration alone would serve numbers an earlier version of a model or
probe computed; with the fingerprint in the key, a changed model is recomputed instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ID_DIGITS = 16  # 64 bits: collisions are negligible at any number of stored results
ROOT = Path(__file__).resolve().parents[1]  # the repository root (models/ and analysis/ beside each other)
COMPUTE_ROOMS: tuple[str, ...] = ("models", "analysis/execution", "analysis/probe", "analysis/train")


def canonical(value: Any, where: str = "value") -> Any:
    """The JSON-able canonical form of `value` (module docstring); `where` names it in errors."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic):
        return canonical(value.item(), where)
    if isinstance(value, Path):
        return value.as_posix()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where} has non-string key(s) {bad!r}; content ids need string keys")
        return {k: canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__} ({value!r}); content ids take dataclasses, "
        "mappings, lists, tuples, str, int, float, bool, None, numpy scalars and paths"
    )


def canonical_json(value: Any) -> str:
    """`value` in canonical form as JSON with sorted keys: equal content, equal text."""
    return json.dumps(canonical(value), sort_keys=True)


def content_id(value: Any) -> str:
    """16 hex digits of sha256 over `canonical_json(value)`: the name of a result computed from it."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:ID_DIGITS]


def file_digest(path: Path | str) -> str:
    """sha256 (hex) of a file's bytes: a data file's part of a content id."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_fingerprint(rooms: tuple[str, ...] = COMPUTE_ROOMS, root: Path | str = ROOT) -> str:
    """16 hex digits of sha256 over the Python sources under `rooms` (folders relative to `root`),
    each file's path and bytes in path order: any edit, added or removed file changes it."""
    digest = hashlib.sha256()
    root = Path(root)
    for path in sorted(p for room in rooms for p in (root / room).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:ID_DIGITS]


@functools.cache
def code_fingerprint() -> str:
    """`source_fingerprint()` of the compute rooms as this process first read it: the code this process
    runs. A source edited during a long run must not have this process' numbers stored under the
    edited code's name (a module that stores results calls it once when it is imported)."""
    return source_fingerprint()
