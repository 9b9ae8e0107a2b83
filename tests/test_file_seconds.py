"""The order `make test` hands files to its workers (tests/file_seconds.py): recorded files longest
first, unknown ones by the old rule around them; and the record read from JUnit and --durations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.file_seconds import (
    SECONDS_JSON,
    file_seconds_from_durations,
    file_seconds_from_junit,
    main,
    order_files,
    read_seconds,
)


def test_known_files_go_longest_first_whatever_their_number_of_tests() -> None:
    files = {"a.py": (40, False), "b.py": (1, True), "c.py": (3, False), "d.py": (9, True)}
    seconds = {"a.py": 12.0, "b.py": 300.0, "c.py": 95.5, "d.py": 95.4}
    assert order_files(files, seconds) == ["b.py", "c.py", "d.py", "a.py"]


def test_unknown_files_fall_back_to_the_marks_around_the_known_ones() -> None:
    # collection order: the unknown ones interleaved with the known ones
    files = {
        "few_quick.py": (2, False),
        "known_short.py": (5, False),
        "new_slow_few.py": (1, True),
        "many_quick.py": (30, False),
        "known_long.py": (1, False),
        "new_slow_many.py": (4, True),
    }
    seconds = {"known_short.py": 3.0, "known_long.py": 200.0, "gone.py": 999.0}  # gone.py: a deleted file
    assert order_files(files, seconds) == [
        "new_slow_many.py",  # unknown with a slow test: first, more tests first
        "new_slow_few.py",
        "known_long.py",  # the record, longest first
        "known_short.py",
        "many_quick.py",  # unknown, no slow test: last, more tests first
        "few_quick.py",
    ]


def test_ties_keep_the_collection_order() -> None:
    files = {"z.py": (2, False), "y.py": (2, False), "x.py": (1, False), "w.py": (1, False)}
    assert order_files(files, {"x.py": 1.0, "w.py": 1.0}) == ["x.py", "w.py", "z.py", "y.py"]
    assert order_files(files, {}) == ["z.py", "y.py", "x.py", "w.py"]  # no record: by tests only


DURATIONS = """\
============================= slowest 150 durations =============================
295.87s setup    tests/analysis/experiments/test_end_to_end.py::test_checks_run_and_give_verdicts
10.05s call     tests/analysis/experiments/test_end_to_end.py::test_cli_writes_json_and_figures
57.42s call     tests/notebooks/test_notebooks.py::test_notebook_executes_in_a_kernel[02_vanishing.ipynb]
0.50s teardown tests/notebooks/test_notebooks.py::test_there_are_notebooks
(12 durations < 0.005s hidden.  Use -vv to show these durations.)
SKIPPED [1] tests/analysis/report/test_html_report.py:227: no chromium binary
"""

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.analysis.test_cli" name="test_a" time="1.5" />
<testcase classname="tests.analysis.test_cli" name="test_b[x-y.z]" time="2.25" />
<testcase classname="tests.models.test_norms.TestGroup" name="test_c" time="4.0" />
<testcase classname="tests.test_import_graph" name="test_d" time="0.125"><skipped message="no" /></testcase>
</testsuite></testsuites>
"""


def test_the_record_sums_each_files_setup_call_and_teardown() -> None:
    assert file_seconds_from_durations(DURATIONS) == pytest.approx(
        {"tests/analysis/experiments/test_end_to_end.py": 305.92, "tests/notebooks/test_notebooks.py": 57.92}
    )


def test_the_record_from_a_junit_report(tmp_path: Path) -> None:
    (tmp_path / "report.xml").write_text(JUNIT)
    assert file_seconds_from_junit(tmp_path / "report.xml") == {
        "tests/analysis/test_cli.py": 3.75,
        "tests/models/test_norms.py": 4.0,  # a test class's cases count for its module
        "tests/test_import_graph.py": 0.125,
    }


def test_the_command_writes_what_conftest_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "durations.txt").write_text(DURATIONS)
    out = tmp_path / "seconds.json"
    assert main([str(tmp_path / "durations.txt"), "--out", str(out)]) == 0
    assert read_seconds(out) == {
        "tests/analysis/experiments/test_end_to_end.py": 305.9,
        "tests/notebooks/test_notebooks.py": 57.9,
    }
    assert "2 files" in capsys.readouterr().out
    assert read_seconds(tmp_path / "missing.json") == {}
    for bad, problem in [("missing.txt", "no report at"), ("empty.txt", "lists no test durations")]:
        if bad == "empty.txt":
            (tmp_path / bad).write_text("nothing timed here\n")
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path / bad), "--out", str(out)])
        assert exit_.value.code == 2 and problem in capsys.readouterr().err


def test_the_committed_record_is_seconds_of_test_files() -> None:
    record = json.loads(SECONDS_JSON.read_text())
    assert record and all(f.startswith("tests/") and f.endswith(".py") for f in record)
    assert all(isinstance(s, float | int) and s >= 0 for s in record.values())
