"""analysis.options: options generated from a dataclass (types, defaults, help, choices, prefixes)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from analysis.options import add_dataclass_options, dataclass_from_args, field_help


@dataclass(frozen=True)
class Inner:
    x: int = 1


@dataclass(frozen=True)
class Example:
    """An example.

    Attributes:
        name: which one; a long help
            that continues here.
        rate, scale: two numbers.
        flag: a switch.
        limit: optional cap.
        names: several names.
    """

    name: str = "a"
    rate: float = 0.5
    scale: float = 2.0
    flag: bool = False
    limit: float | None = None
    names: tuple[str, ...] = ("p", "q")
    inner: Inner = field(default_factory=Inner)


def _parser(**kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_options(parser, Example, title="example", **kw)
    return parser


def test_help_comes_from_the_docstring():
    helps = field_help(Example)
    assert helps["name"] == "which one; a long help that continues here."
    assert helps["rate"] == helps["scale"] == "two numbers."
    assert "inner" not in helps


def test_types_defaults_and_nested_fields():
    args = _parser().parse_args([])
    assert dataclass_from_args(Example, args, inner=Inner()) == Example()
    args = _parser().parse_args(["--name", "b", "--rate", "0.1", "--flag", "--limit", "3", "--names", "r, s,t"])
    assert dataclass_from_args(Example, args, inner=Inner(2)) == Example("b", 0.1, 2.0, True, 3.0, ("r", "s", "t"), Inner(2))
    assert "--inner" not in _parser().format_help()


def test_choices_flags_and_prefix(capsys):
    parser = _parser(choices={"name": ("a", "b"), "names": ("p", "q", "r")}, flags={"name": "kind"}, prefix="ex.")
    args = parser.parse_args(["--kind", "b"])
    assert getattr(args, "ex.name") == "b"
    assert dataclass_from_args(Example, args, prefix="ex.", inner=Inner()).name == "b"
    assert "(from: p, q, r)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])
    assert "invalid choice: 'c'" in capsys.readouterr().err
