"""analysis.options: options generated from a dataclass (types, defaults, help, choices, prefixes)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from analysis.execution import default_plan
from analysis.options import (
    HelpFormatter,
    Parser,
    add_dataclass_options,
    add_plan_options,
    dataclass_from_args,
    field_help,
    plan_from_args,
    short_help,
)


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
    assert dataclass_from_args(Example, args, inner=Inner(2)) == Example(
        "b", 0.1, 2.0, True, 3.0, ("r", "s", "t"), Inner(2)
    )
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


@dataclass(frozen=True)
class Typed:
    """Typed choices.

    Attributes:
        kind: the kind; a longer explanation (with a default: "x") that the help leaves out.
        many: several.
    """

    kind: Literal["x", "y"] = "x"
    many: tuple[str, ...] = ("p",)


def test_literal_types_are_the_choices_and_help_is_the_first_clause(capsys):
    parser = argparse.ArgumentParser(prog="t", formatter_class=HelpFormatter)
    add_dataclass_options(parser, Typed, title="typed")
    assert parser.parse_args(["--kind", "y"]).kind == "y"
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "z"])
    assert "invalid choice: 'z'" in capsys.readouterr().err
    text = parser.format_help()
    assert "the kind (default: x)" in text and "longer explanation" not in text
    assert short_help("a (b; c. d) e; f") == "a (b; c. d) e"


def _subcommand_helps() -> dict[str, str]:
    from analysis import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"lnscope": parser.format_help(), **{name: p.format_help() for name, p in sub.choices.items()}}


def test_every_help_line_fits_in_100_characters_whatever_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    helps = _subcommand_helps()
    assert {"probe", "train", "sweep", "check", "report", "list"} <= set(helps)
    for name, text in helps.items():
        long = [line for line in text.splitlines() if len(line) > 100]
        assert not long, f"lnscope {name} --help: {long}"


def test_help_shows_each_default_once_and_each_option_its_own_text(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    helps = _subcommand_helps()
    for name, text in helps.items():
        assert "(default: )" not in text and "(default: None)" not in text, name
        for line in text.splitlines():
            assert line.count("(default:") <= 1, f"{name}: {line}"
        assert "TASK-VOCAB" not in text and "SEED_CHUNK" not in text, name
    # one help per option: no two options share a help text (issue 25: --d-ff, --vocab, --max-len did)
    for name in ("probe", "train", "sweep"):
        option_helps = {}
        for line in helps[name].splitlines():
            parts = line.strip().split("  ", 1)
            if parts[0].startswith("--") and len(parts) == 2:
                option_helps.setdefault(parts[1].strip(), []).append(parts[0])
        shared = {text: flags for text, flags in option_helps.items() if len(flags) > 1}
        assert not shared, (name, shared)


def test_every_option_of_every_command_has_its_own_nonempty_help():
    """The same check on the parsers' actions, so an option whose help wraps to the next line counts too."""
    from analysis import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("probe", "train", "sweep"):
        texts: dict[str, list[str]] = {}
        for action in sub.choices[name]._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                texts.setdefault(action.help or "", []).append(action.option_strings[0])
        assert "" not in texts, (name, texts.get(""))
        assert not {t: f for t, f in texts.items() if len(f) > 1}, name


def test_parser_errors_are_one_line_and_negative_numbers_are_values(capsys):
    parser = Parser(prog="t")
    add_dataclass_options(parser, Typed, title="typed")
    add_dataclass_options(parser, Example, title="example", choices={"name": ("alpha", "beta")})
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--name", "bets"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err == "t: error: unknown name 'bets'; valid choices: alpha, beta (did you mean 'beta'?)\n"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "q"])
    assert capsys.readouterr().err == "t: error: unknown kind 'q'; valid choices: x, y\n"  # nothing close: no hint
    for text, value in [("-1e-3", -1e-3), ("-2.5E+2", -250.0), ("-.5", -0.5), ("-3", -3.0), ("-inf", float("-inf"))]:
        assert parser.parse_args(["--rate", text]).rate == value
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate", "-x"])  # not a number: still an option-like string, still one line
    err = capsys.readouterr().err
    assert err.startswith("t: error: ") and err.count("\n") == 1, err


def test_plan_options_override_the_default_plan_and_are_unset_by_default():
    parser = argparse.ArgumentParser(prog="t")
    add_plan_options(parser)
    assert plan_from_args(parser.parse_args([])) is None
    plan = plan_from_args(
        parser.parse_args(
            ["--compute-dtype", "bfloat16", "--no-remat", "--unroll-layers", "0", "--seed-programs", "vmapped"]
        )
    )
    assert plan == default_plan().replace(
        compute_dtype="bfloat16", remat=False, unroll_layers=0, seed_programs="vmapped"
    )
    parser = argparse.ArgumentParser(prog="t")
    add_plan_options(parser, skip=("streams",))
    assert "--streams" not in parser.format_help()


def test_a_placement_alias_is_a_valid_choice_on_the_command_line():
    # `lnscope list` shows "rezero (also: skipinit)": the command line accepts what it lists
    from analysis.options import Parser, add_model_options, dataclass_from_args
    from models import ModelConfig

    parser = Parser(prog="t")
    add_model_options(parser)
    assert dataclass_from_args(ModelConfig, parser.parse_args(["--placement", "skipinit"])).placement == "rezero"
