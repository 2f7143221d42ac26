"""Settings dataclasses as the single source of every subcommand's options.

A subcommand's settings are one dataclass; each field that is a command-line
option is declared with `option(...)`, which holds its default, help text
and flag. `cli.py` builds argparse from these fields, and Python callers
(`demo`, tests, notebooks) construct the same dataclass, so a default is
written exactly once and a field can have a plain name (`prompt_format`,
`dictionary`) while its flag keeps the name users know (`--format`,
`--dict`). In the spirit of EleutherAI/sparsify's `config.py`.

Fields marked `identity=False` decide where or how fast a run goes (output
folder, device, concurrency), not what it computes; a rerun may change them
and they are left out of the settings record that resumes are checked
against (see `identity_fields`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Callable, Union

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, flag: str | None = None,  # noqa: A002 (argparse's own word)
           default_factory: Callable[[], Any] | None = None,
           choices: typing.Sequence[Any] | Callable[[], typing.Sequence[Any]] | None = None,
           csv: bool = False, identity: bool = True, required: bool = False, negate: str | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    `csv`: a list given as one comma-separated value (`--hooks a,b`) instead
    of several (`--l1 1e-3 1e-2`). `negate`: for a bool that defaults to True,
    the flag that turns it off (`--untied` for `tied`). `required`: the CLI
    demands it even though Python callers may leave the default. `choices`
    may be a function, called when the parser is built, for choices read
    from a table that can grow after import (the registry of kinds).
    """
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    meta = {"help": help, "flag": flag, "choices": choices, "csv": csv,
            "identity": identity, "required": required, "negate": negate, "metavar": metavar}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={"option": meta})
    return dataclasses.field(default=default, metadata={"option": meta})


def is_option(f: dataclasses.Field) -> bool:
    return "option" in f.metadata


def identity_fields(obj: Any) -> dict[str, Any]:
    """The fields of a settings object that decide its results (JSON-ready via dataclasses.asdict)."""
    data = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if is_option(f) and not f.metadata["option"]["identity"]:
            data.pop(f.name, None)
    return data


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")


def _csv(value: str) -> list[str]:
    return [v for v in (s.strip() for s in value.split(",")) if v]


class _CsvList(argparse.Action):
    """A list option given comma-separated (`--hooks a,b`), space-separated (`--hooks a b`, as users type it), or
    both: each value is split at commas and the pieces joined in order."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 (argparse's signature)
        setattr(namespace, self.dest, [piece for value in values for piece in value])


# argparse (before 3.13) takes "-1e-3" for an option, so `--l1 -1e-3` failed with "expected at least one argument"
# instead of reaching the option's own check ("must be non-negative"); this also accepts exponents.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argparse option per `option()` field of the dataclass `cls`, defaults and help from the field."""
    hints = typing.get_type_hints(cls)
    parser._negative_number_matcher = _NEGATIVE_NUMBER  # see _NEGATIVE_NUMBER
    for f in dataclasses.fields(cls):
        if not is_option(f):
            continue
        meta = f.metadata["option"]
        tp, _ = _unwrap(hints[f.name])
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        required = meta["required"] or (f.default is _MISSING and f.default_factory is _MISSING)
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(meta["help"], default, required)}
        flag = flag_of(f)
        if tp is not bool:
            kwargs["metavar"] = meta["metavar"] or flag.lstrip("-").upper().replace("-", "_")
        if tp is bool:
            if meta["negate"]:
                group = parser.add_mutually_exclusive_group()
                group.add_argument(flag, dest=f.name, action="store_true", default=default, help=kwargs["help"])
                group.add_argument(meta["negate"], dest=f.name, action="store_false", help=f"the opposite of {flag}")
            else:
                parser.add_argument(flag, action="store_true", default=bool(default), dest=f.name,
                                    help=kwargs["help"])
            continue
        if typing.get_origin(tp) in (list, tuple):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            if meta["csv"]:
                kwargs.update(type=_csv, nargs="+", action=_CsvList)
            else:
                kwargs.update(type=inner, nargs="+")
        else:
            kwargs["type"] = tp
        if meta["choices"] is not None:
            choices = meta["choices"]
            kwargs["choices"] = list(choices() if callable(choices) else choices)
        kwargs.update(default=default, required=required)
        parser.add_argument(flag, **kwargs)


def _help(text: str, default: Any, required: bool) -> str:
    """Help text with its default; a plain "%" is escaped here, because argparse %-formats help strings."""
    if not (required or default is None or default is False or default == []):
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f"{text} (default: {shown})"
    return text.replace("%", "%%")


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The settings object for parsed arguments (fields that are not options keep their defaults)."""
    values = vars(namespace)
    kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if is_option(f) and f.name in values}
    for f in dataclasses.fields(cls):  # numpy's generators take no negative seed: said here, not as a traceback
        if f.name.endswith("seed") and isinstance(kwargs.get(f.name), int) and kwargs[f.name] < 0:
            from common.errors import UserError

            raise UserError(f"{flag_of(f)} {kwargs[f.name]} is negative: pass a seed of 0 or more")
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list) and typing.get_origin(
                _unwrap(typing.get_type_hints(cls)[f.name])[0]) is tuple:
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)
