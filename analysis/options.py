"""Command-line options generated from frozen config dataclasses: one mechanism for every subcommand.

    add_dataclass_options(parser, ModelConfig, title="model", choices={"arch": ARCHS, ...})
    cfg = dataclass_from_args(ModelConfig, args)

Each field becomes `--field-name` (or the name given in `flags`), typed from its annotation, with its
default, and with a one-line help: the first clause of its "name: text" entry in the class docstring
(Google style `Attributes:` or any indented list). bool -> --x/--no-x; `X | None` -> X (the default
stays None); `tuple[T, ...]` -> a comma-separated list; a `Literal[...]` type -> its values as the
choices. Values are validated by the dataclass itself, so the CLI cannot drift from the API. Nested
dataclass fields are skipped: give each its own group. `HelpFormatter` keeps every help line within
HELP_WIDTH characters and shows each default once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.execution import ExecutionPlan, default_plan
from models import ModelConfig
from models.config import field_choices, placement_aliases, unknown_choice

HELP_WIDTH = 100  # `--help` lines at most this wide, whatever the terminal
SHORT_CHOICES = 48  # longer choice lists show as NAME (the error message and `lnscope list` name them)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter at most HELP_WIDTH wide, appending "(default: X)" to an option's help
    unless the help already speaks of its default, or X is empty (None, "", False, an empty tuple)
    or a long list."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", min(HELP_WIDTH, shutil.get_terminal_size().columns - 2))
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        empty = (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (str, tuple)) and not default)
        )
        if "default" in text or empty or not action.option_strings:
            return text
        if default is True:
            return f"{text} (default: on)"
        if isinstance(default, tuple):
            shown = ",".join(map(str, default))
            return text if len(shown) > SHORT_CHOICES else f"{text} (default: {shown})"  # a long list: see the docs
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse's parser with errors as one line, "lnscope: error: ...", not the whole usage before it
    (`--help` shows that): a bad choice names the valid ones and the closest ("did you mean"), as the
    configs' own validation does (models.config.unknown_choice). Negative numbers in any notation
    (`--lr -1e-3`) are values, so they reach the config's check instead of "expected one argument"."""

    # argparse's own pattern knows -1 and -.5 but not -1e-3 or -inf, and takes those for options
    NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE_NUMBER

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            field = action.option_strings[-1].lstrip("-") if action.option_strings else action.dest  # as typed
            raise argparse.ArgumentError(None, unknown_choice(field, value, action.choices))

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: {message}\n")


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter that keeps the description's and epilog's own line breaks."""


def short_help(text: str) -> str:
    """The first clause of `text`: up to its first "; " or ". " outside parentheses, for a one-line
    option help."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char in ".;" and text[i + 1 : i + 2] == " ":
            return text[:i]
    return text.rstrip(".")


def _metavar(parse: Any) -> str:
    """N, X, PATH or TEXT by the option's type."""
    return {int: "N", float: "X"}.get(parse, "PATH" if getattr(parse, "__name__", "") == "Path" else "TEXT")


def field_help(cls: type) -> dict[str, str]:
    """One line per field from the class docstring's "name: text" entries (continuation lines joined)."""
    helps: dict[str, str] = {}
    fields = {f.name for f in dataclasses.fields(cls)}
    current: list[str] | None = None
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        head, sep, text = stripped.partition(":")
        names = [n.strip().strip("`") for n in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and any(n in fields for n in names):
            current = names
            for n in names:
                helps[n] = text.strip()
        elif current and stripped:
            for n in current:
                helps[n] += " " + stripped
        else:
            current = None
    return helps


def _parse_tuple(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(item(x.strip()) for x in text.split(",") if x.strip())

    parse.__name__ = f"comma-separated {getattr(item, '__name__', 'value')}s"  # argparse's error message
    return parse


def _unwrap(hint: Any) -> Any:
    """X for `X | None`, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _literal(hint: Any) -> tuple | None:
    """The values of a `Literal[...]` annotation (also inside `X | None`), else None."""
    hint = _unwrap(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def _option_type(hint: Any) -> tuple[Callable[[str], Any] | None, bool]:
    """(parser of one command-line string, is_bool) for a field annotation."""
    hint = _unwrap(hint)
    if hint is bool:
        return None, True
    if typing.get_origin(hint) is tuple:
        return _parse_tuple(typing.get_args(hint)[0]), False
    if _literal(hint) is not None:
        return type(_literal(hint)[0]), False
    return hint, False


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}{name}"


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    title: str,
    choices: Mapping[str, Sequence[str]] | None = None,
    flags: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
    prefix: str = "",
) -> None:
    """Add one option per field of dataclass `cls` to an argument group named `title`.

    Args:
        choices: valid values per field (a tuple field's choices apply to each element); a field
            typed `Literal[...]` has its values without being listed here.
        flags: flag names for fields whose `--field-name` would be unclear or clash (e.g. a task's
            `name` -> "task").
        skip: fields set by hand (and nested dataclasses, always skipped).
        prefix: namespace prefix of the destinations, so two dataclasses may share a field name.
    """
    choices, flags, skip = dict(choices or {}), dict(flags or {}), set(skip)
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        flag = "--" + flags.get(f.name, f.name).replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = short_help(helps.get(f.name, "")).replace("%", "%%")  # argparse formats help strings with %
        parse, is_bool = _option_type(hints[f.name])
        dest = _dest(prefix, f.name)
        if is_bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        valid = choices.get(f.name, _literal(hints[f.name]))
        kwargs: dict[str, Any] = {
            "dest": dest,
            "default": default,
            "type": parse,
            "help": text,
            "metavar": _metavar(parse),
        }
        if valid is not None and typing.get_origin(_unwrap(hints[f.name])) is not tuple:
            kwargs["choices"] = tuple(valid)
            if len(",".join(map(str, valid))) <= SHORT_CHOICES:
                del kwargs["metavar"]
            else:
                kwargs["metavar"] = "NAME"
        elif valid is not None:
            listed = ", ".join(valid) if len(", ".join(valid)) <= SHORT_CHOICES else "see lnscope list"
            kwargs["help"] = f"{text} (from: {listed})".replace("%", "%%")
        if isinstance(default, tuple):
            kwargs["metavar"] = "A,B,..."
        group.add_argument(flag, **kwargs)


def dataclass_kwargs(
    cls: type, args: argparse.Namespace, *, prefix: str = "", skip: Iterable[str] = ()
) -> dict[str, Any]:
    """{field: value} of the options `add_dataclass_options` added for `cls` (nested and skipped aside)."""
    skip = set(skip)
    hints = typing.get_type_hints(cls)
    return {
        f.name: getattr(args, _dest(prefix, f.name))
        for f in dataclasses.fields(cls)
        if f.name not in skip and not dataclasses.is_dataclass(hints[f.name])
    }


def dataclass_from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", **extra: Any) -> Any:
    """cls(**options, **extra): `extra` holds the nested dataclasses and the fields set by hand."""
    return cls(**{**dataclass_kwargs(cls, args, prefix=prefix, skip=extra), **extra})


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """One option per models.ModelConfig field, for every subcommand that builds a model."""
    choices = field_choices()
    aliases = tuple(placement_aliases())  # other names of a registered rule (skipinit): ModelConfig maps them
    choices.update({name: choices[name] + aliases for name in ("placement", "enc_placement")})
    add_dataclass_options(parser, ModelConfig, title="model (models.ModelConfig fields)", choices=choices)


def add_plan_options(parser: argparse.ArgumentParser, *, skip: Iterable[str] = ()) -> None:
    """Options of the execution plan's fields (analysis.execution.ExecutionPlan), each unset by
    default: an unset one keeps this backend's default. `skip`: fields a command sets otherwise."""
    helps, hints = field_help(ExecutionPlan), typing.get_type_hints(ExecutionPlan)
    group = parser.add_argument_group("execution (analysis.execution.ExecutionPlan; unset: this backend's default)")
    for name in [f.name for f in dataclasses.fields(ExecutionPlan) if f.name not in set(skip)]:
        parse, is_bool = _option_type(hints[name])
        dest, flag, text = f"plan.{name}", "--" + name.replace("_", "-"), short_help(helps[name]).replace("%", "%%")
        if is_bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif _literal(hints[name]) is not None:
            group.add_argument(flag, dest=dest, default=None, choices=_literal(hints[name]), help=text)
        else:
            group.add_argument(flag, dest=dest, default=None, type=parse, metavar=_metavar(parse), help=text)


def plan_from_args(args: argparse.Namespace) -> ExecutionPlan | None:
    """This backend's default plan with the given plan options applied; None when none was given."""
    given = {
        name: value
        for name in ExecutionPlan.__dataclass_fields__
        if (value := getattr(args, f"plan.{name}", None)) is not None
    }
    return default_plan().replace(**given) if given else None


# ---------------------------------------------------------------------------------------------
# The store every command shares: computed once, read back by probe, train, sweep, check and report.
# ---------------------------------------------------------------------------------------------
STORE_VAR = "LNSCOPE_STORE"
DEFAULT_STORE = "lnscope-store"  # relative to the working directory, like a build folder


def default_store() -> Path:
    """The folder `lnscope` keeps results in when no --store is given: $LNSCOPE_STORE if set (and not
    empty), else ./lnscope-store. Inside it: jobs/ (the experiments' and the atlas' probe and
    training jobs, by config hash), runs/ (`lnscope train` / `sweep` runs) and probes/ (`lnscope probe`
    outputs), so a result computed by one command is read back by every other one."""
    return Path(os.environ.get(STORE_VAR) or DEFAULT_STORE)


def add_store_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--store PATH` (default: `default_store()`, read when the command runs)."""
    parser.add_argument(
        "--store",
        default=None,
        metavar="PATH",
        help=f"{what} (default: ${STORE_VAR}, else ./{DEFAULT_STORE}; shared by every lnscope command)",
    )


def store_from_args(args: argparse.Namespace) -> Path:
    """The --store given, else `default_store()`."""
    return Path(args.store) if getattr(args, "store", None) else default_store()
