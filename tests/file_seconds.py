"""The order `make test` hands test files to its two workers, from each file's recorded time.

`make test` runs whole files on each of two workers (--dist loadfile --no-loadscope-reorder), in the
order tests/conftest.py collects them. A long file handed out late leaves one worker running it
alone at the end, so files go longest first (the LPT rule of list scheduling), by the seconds
tests/file_seconds.json records for each. A file it does not know (new, or renamed) falls back to
the marks: holding a `slow` test, before every known file (it may be long); otherwise after them,
more tests first (quick files at the end fill the gaps).

The times are scheduling data only: what matters is their order, and a stale file just gives a
worse order. Regenerate them from a timed run of the suite's first pass (what `make test-durations`
does), from either a JUnit report or pytest's --durations text:

    python -m tests.file_seconds build/test-durations.xml      # writes tests/file_seconds.json
    python -m tests.file_seconds durations.txt --out other.json
"""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from pathlib import Path

SECONDS_JSON = Path(__file__).resolve().parent / "file_seconds.json"
# one line of pytest's --durations report: "12.34s call     tests/a/test_b.py::test_c[x]"
DURATION_LINE = re.compile(r"^\s*([0-9.]+)s\s+(?:setup|call|teardown)\s+(\S+?\.py)(?:::|\s|$)")


def order_files(files: Mapping[str, tuple[int, bool]], seconds: Mapping[str, float]) -> list[str]:
    """The files in the order to hand them out.

    files: {path: (number of tests, holds a `slow` test)}, in collection order; seconds: {path:
    recorded seconds}. Unknown files with a slow test first, then known files longest first, then
    the other unknown files by number of tests, most first; ties keep the collection order.
    """

    def key(path: str) -> tuple[int, float]:
        count, slow = files[path]
        if path in seconds:
            return 1, -seconds[path]
        return (0, -count) if slow else (2, -count)

    return sorted(files, key=key)


def file_seconds_from_junit(path: Path) -> dict[str, float]:
    """{test file: summed seconds} of a JUnit report (pytest --junitxml; each case's time is its
    setup, call and teardown with pytest's default junit_duration_report=total)."""
    seconds: dict[str, float] = {}
    for case in ElementTree.parse(path).iter("testcase"):
        # classname is the module's dotted path, a test class's name appended where there is one
        parts = case.get("classname", "").split(".")
        while parts and not parts[-1].startswith("test_"):
            parts.pop()
        file = "/".join(parts) + ".py"
        seconds[file] = seconds.get(file, 0.0) + float(case.get("time", 0.0))
    return seconds


def file_seconds_from_durations(text: str) -> dict[str, float]:
    """{test file: summed seconds} of pytest's --durations report (setup, call and teardown lines;
    tests under its cut-off are not listed, so run it with --durations=0 -vv for every test)."""
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        match = DURATION_LINE.match(line)
        if match:
            file = match.group(2)
            seconds[file] = seconds.get(file, 0.0) + float(match.group(1))
    return seconds


def write_seconds(seconds: Mapping[str, float], out: Path = SECONDS_JSON) -> None:
    """The record as tests/conftest.py reads it: {file: seconds}, by file name, to 0.1 s."""
    out.write_text(json.dumps({f: round(s, 1) for f, s in sorted(seconds.items())}, indent=1) + "\n")


def read_seconds(path: Path = SECONDS_JSON) -> dict[str, float]:
    """The recorded {file: seconds}; empty where there is no record (every file then falls back)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.file_seconds", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a JUnit report (.xml) or pytest --durations output (text)")
    parser.add_argument("--out", type=Path, default=SECONDS_JSON, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"no report at {args.report}")
    if args.report.suffix == ".xml":
        seconds = file_seconds_from_junit(args.report)
    else:
        seconds = file_seconds_from_durations(args.report.read_text())
    if not seconds:
        parser.error(f"{args.report} lists no test durations")
    write_seconds(seconds, args.out)
    print(f"{len(seconds)} files, {sum(seconds.values()):.0f} s in all -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
