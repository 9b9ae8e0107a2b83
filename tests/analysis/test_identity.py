"""analysis.identity: content ids are stable (across processes and key order), tell different content
apart, and follow the documented canonical form; the code fingerprint follows every source edit."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from analysis.identity import (
    COMPUTE_ROOMS,
    canonical,
    canonical_json,
    code_fingerprint,
    content_id,
    file_digest,
    source_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inner:
    rate: float
    names: tuple[str, ...]


@dataclass(frozen=True)
class Outer:
    inner: Inner
    size: int | None = None


PAYLOAD = {"b": [1, 2.5, None], "a": {"y": 0.1, "x": True}, "c": "text"}


def test_a_content_id_is_16_hex_digits_and_the_same_in_another_process():
    here = content_id(PAYLOAD)
    assert len(here) == 16 and int(here, 16) >= 0
    code = f"from analysis.identity import content_id; print(content_id({PAYLOAD!r}))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == here


def test_key_order_does_not_matter_and_plain_json_keeps_its_old_key():
    reordered = {"c": "text", "a": {"x": True, "y": 0.1}, "b": [1, 2.5, None]}
    assert content_id(reordered) == content_id(PAYLOAD)
    # plain JSON data: the text is json.dumps(sort_keys=True), so stores keyed before analysis.identity
    # (experiments' jobs, the init atlas) keep their keys
    assert canonical_json(PAYLOAD) == json.dumps(PAYLOAD, sort_keys=True)


@pytest.mark.parametrize(
    "changed",
    [
        {**PAYLOAD, "c": "other"},
        {**PAYLOAD, "b": [1, 2.5000000000000004, None]},
        {**PAYLOAD, "b": [2, 1, None]},
        {**PAYLOAD, "d": None},
        {k: v for k, v in PAYLOAD.items() if k != "c"},
        {**PAYLOAD, "a": {"y": 0.1, "x": 1}},
    ],
)
def test_different_content_gets_a_different_id(changed):
    assert content_id(changed) != content_id(PAYLOAD)


def test_floats_by_their_shortest_repr():
    assert canonical_json(0.1) == "0.1" and canonical_json(1e-8) == "1e-08"
    assert content_id(0.1 + 0.2) != content_id(0.3)  # a different float is a different number
    assert content_id(1) != content_id(1.0)  # an int and a float are told apart (JSON does)
    assert content_id(0.0) != content_id(-0.0)
    assert content_id(np.float32(0.5)) == content_id(0.5) and content_id(np.int64(3)) == content_id(3)


def test_tuples_and_lists_are_one_sequence_type():
    """Decided: a tuple hashes as the list with its items, as in JSON, so a config read back from its
    stored JSON (tuples come back as lists) has the id of the config that wrote it."""
    assert content_id((1, 2)) == content_id([1, 2]) and canonical((1, (2, 3))) == [1, [2, 3]]
    assert content_id((1, 2)) != content_id((2, 1))


def test_a_dataclass_nested_in_a_dict_is_its_fields():
    value = {"job": Outer(Inner(0.25, ("a", "b")), size=3), "kind": "x"}
    expected = {"job": {"inner": {"rate": 0.25, "names": ["a", "b"]}, "size": 3}, "kind": "x"}
    assert canonical(value) == expected and content_id(value) == content_id(expected)
    assert content_id({**value, "job": Outer(Inner(0.5, ("a", "b")), size=3)}) != content_id(value)


@pytest.mark.parametrize(
    "bad, where",
    [
        ({1: "x"}, "value has non-string key"),
        ({"s": {1, 2}}, r"value\.s is a set"),
        ([object()], r"value\[0\] is a object"),
    ],
)
def test_values_without_a_canonical_form_are_an_error_naming_where(bad, where):
    with pytest.raises(TypeError, match=where):
        content_id(bad)


def test_paths_are_their_strings_and_files_by_their_bytes(tmp_path):
    assert content_id({"p": Path("a/b")}) == content_id({"p": "a/b"})
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc")
    first = file_digest(f)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    f.write_bytes(b"abd")
    assert file_digest(f) != first


def test_source_fingerprint_changes_with_the_code(tmp_path):
    """Stored results are keyed by this: any edit, new or removed file in a room must change it; files
    outside the rooms must not."""
    room = tmp_path / "models"
    room.mkdir()
    (room / "a.py").write_text("x = 1\n")
    first = source_fingerprint(("models",), root=tmp_path)
    assert source_fingerprint(("models",), root=tmp_path) == first and len(first) == 16
    (tmp_path / "elsewhere.py").write_text("y = 1\n")
    (room / "notes.txt").write_text("not source")
    assert source_fingerprint(("models",), root=tmp_path) == first
    (room / "a.py").write_text("x = 2\n")
    second = source_fingerprint(("models",), root=tmp_path)
    (room / "b.py").write_text("")
    third = source_fingerprint(("models",), root=tmp_path)
    (room / "b.py").unlink()
    assert len({first, second, third}) == 3 and source_fingerprint(("models",), root=tmp_path) == second


def test_the_code_fingerprint_is_the_compute_rooms_as_first_read():
    assert COMPUTE_ROOMS == ("models", "analysis/execution", "analysis/probe", "analysis/train")
    assert code_fingerprint() == source_fingerprint(COMPUTE_ROOMS, root=REPO) == code_fingerprint()
