"""Command-line options generated from frozen config dataclasses: one mechanism for every subcommand.

    add_dataclass_options(parser, ModelConfig, title="model", choices={"arch": ARCHS, ...})
    cfg = dataclass_from_args(ModelConfig, args)

Each field becomes `--field-name` (or the name given in `flags`), typed from its annotation, with its
default, and with the help text of its "name: text" entry in the class docstring (Google style
`Attributes:` or any indented list). bool -> --x/--no-x; `X | None` -> X (the default stays None);
`tuple[T, ...]` -> a comma-separated list. Values are validated by the dataclass itself, so the
CLI cannot drift from the API. Nested dataclass fields are skipped: give each its own group.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Sequence


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


def _option_type(hint: Any) -> tuple[Callable[[str], Any] | None, bool]:
    """(parser of one command-line string, is_bool) for a field annotation."""
    hint = _unwrap(hint)
    if hint is bool:
        return None, True
    if typing.get_origin(hint) is tuple:
        return _parse_tuple(typing.get_args(hint)[0]), False
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
        choices: valid values per field (a tuple field's choices apply to each element).
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
        text = helps.get(f.name, "").replace("%", "%%")  # argparse formats help strings with %
        parse, is_bool = _option_type(hints[f.name])
        dest = _dest(prefix, f.name)
        if is_bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        metavar = flags.get(f.name, f.name).upper()
        kwargs: dict[str, Any] = {"dest": dest, "default": default, "type": parse, "help": text, "metavar": metavar}
        if f.name in choices and typing.get_origin(_unwrap(hints[f.name])) is not tuple:
            kwargs["choices"] = tuple(choices[f.name])
            del kwargs["metavar"]
        elif f.name in choices:
            kwargs["help"] = f"{text} (from: {', '.join(choices[f.name])})".replace("%", "%%")
        if isinstance(default, tuple):
            kwargs["default"] = default
            kwargs["metavar"] = "A,B,..."
        group.add_argument(flag, **kwargs)


def dataclass_kwargs(cls: type, args: argparse.Namespace, *, prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Any]:
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


def model_choices() -> dict[str, tuple[str, ...]]:
    """Valid values of ModelConfig's name fields (the model zoo's registries)."""
    from models import ARCHS, NORMS, PLACEMENTS
    from models import config as model_config

    return {
        "arch": ARCHS, "placement": tuple(PLACEMENTS), "enc_placement": tuple(PLACEMENTS), "norm": tuple(NORMS),
        "activation": model_config.ACTIVATIONS, "init": model_config.INITS, "pos": model_config.POSITIONS,
        "dtype": model_config.DTYPES, "admin_init": model_config.ADMIN_INITS,
        "compute_dtype": model_config.COMPUTE_DTYPES,
    }  # fmt: skip


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """One option per models.ModelConfig field, for every subcommand that builds a model."""
    from models import ModelConfig

    add_dataclass_options(parser, ModelConfig, title="model (models.ModelConfig fields)", choices=model_choices())
