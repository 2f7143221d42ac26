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

A field declared with `option_group(...)` holds one of several settings
dataclasses, chosen by the other fields' values (`train-sae`: the kind's own
hyperparameters, picked by `--kind`, as SAELens has one config class per
architecture). Every option of every such class is a flag; a flag of a class
that the run does not use is refused by `from_namespace`, not ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Callable, Union

from common.errors import UserError

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


def option_group(*, classes: Callable[[], typing.Sequence[tuple[str, type]]],
                 choose: Callable[[dict[str, Any]], type | None], help: str) -> Any:  # noqa: A002
    """A field holding an instance of one of `classes()`' dataclasses (or None), whose options are flags too.

    `classes()` gives (who uses it, class) pairs, e.g. ("--kind topk", AuxKSettings), read when the parser
    is built (the registry of kinds can grow after import); `choose(values)` picks the class from the other
    fields' parsed values (None: no class applies). Python callers pass the instance, or leave None.
    An option that several classes share (same name) must have the same default and type in each.
    """
    meta = {"help": help, "classes": classes, "choose": choose}
    return dataclasses.field(default=None, metadata={"option_group": meta})


def is_option(f: dataclasses.Field) -> bool:
    return "option" in f.metadata


def is_option_group(f: dataclasses.Field) -> bool:
    return "option_group" in f.metadata


def group_options(f: dataclasses.Field) -> dict[str, tuple[dataclasses.Field, list[str], type]]:
    """Every option of an `option_group` field's classes: name -> (field, who uses it, the first class)."""
    found: dict[str, tuple[dataclasses.Field, list[str], type]] = {}
    for user, cls in f.metadata["option_group"]["classes"]():
        for g in dataclasses.fields(cls):
            if not is_option(g):
                continue
            if g.name in found:
                first, users, first_cls = found[g.name]
                if _field_default(first) != _field_default(g) or flag_of(first) != flag_of(g):
                    raise ValueError(f"{first_cls.__name__} and {cls.__name__} both define option {g.name!r} with "
                                     "different defaults or flags: one option, one default")
                users.append(user)
            else:
                found[g.name] = (g, [user], cls)
    return found


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not _MISSING else None


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
    """One argparse option per `option()` field of the dataclass `cls`, defaults and help from the field;
    an `option_group` field adds the options of each of its classes, in a group of their own."""
    parser._negative_number_matcher = _NEGATIVE_NUMBER  # see _NEGATIVE_NUMBER
    own = {f.name for f in dataclasses.fields(cls)}
    _add_fields(parser, cls, [f for f in dataclasses.fields(cls) if is_option(f)])
    for f in dataclasses.fields(cls):
        if not is_option_group(f):
            continue
        group = parser.add_argument_group(f.metadata["option_group"]["help"])
        for name, (g, users, owner) in group_options(f).items():
            if name in own:
                raise ValueError(f"{owner.__name__}.{name} would shadow {cls.__name__}.{name}: rename it")
            # no default in the namespace: only the flags a user gave arrive, so `from_namespace` can refuse the
            # flags of a class this run does not use
            _add_fields(group, owner, [g], suffix=f" ({', '.join(users)})", suppress=True)


def _add_fields(parser: Any, cls: type, chosen: list[dataclasses.Field], suffix: str = "",
                suppress: bool = False) -> None:
    hints = typing.get_type_hints(cls)
    for f in chosen:
        meta = f.metadata["option"]
        tp, _ = _unwrap(hints[f.name])
        default = _field_default(f)
        required = meta["required"] or (f.default is _MISSING and f.default_factory is _MISSING)
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(meta["help"] + suffix, default, required)}
        flag = flag_of(f)
        if tp is not bool:
            kwargs["metavar"] = meta["metavar"] or flag.lstrip("-").upper().replace("-", "_")
        if tp is bool:
            shown = argparse.SUPPRESS if suppress else default
            if meta["negate"]:
                group = parser.add_mutually_exclusive_group()
                group.add_argument(flag, dest=f.name, action="store_true", default=shown, help=kwargs["help"])
                # the same default: a suppressed group option must not land in the namespace unless given
                group.add_argument(meta["negate"], dest=f.name, action="store_false", default=shown,
                                   help=f"the opposite of {flag}")
            else:
                parser.add_argument(flag, action="store_true", default=shown if suppress else bool(default),
                                    dest=f.name, help=kwargs["help"])
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
        kwargs.update(default=argparse.SUPPRESS if suppress else default, required=required)
        parser.add_argument(flag, **kwargs)


def _help(text: str, default: Any, required: bool) -> str:
    """Help text with its default; a plain "%" is escaped here, because argparse %-formats help strings."""
    if not (required or default is None or default is False or default == []):
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f"{text} (default: {shown})"
    return text.replace("%", "%%")


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The settings object for parsed arguments (fields that are not options keep their defaults).

    An `option_group` field gets an instance of the class its `choose` picks, from the flags given for it;
    a flag given for a class it did not pick is a `UserError` naming who uses that flag.
    """
    values = vars(namespace)
    kwargs = _typed(cls, {f.name: values[f.name] for f in dataclasses.fields(cls) if is_option(f) and f.name in values})
    for f in dataclasses.fields(cls):  # numpy's generators take no negative seed: said here, not as a traceback
        if f.name.endswith("seed") and isinstance(kwargs.get(f.name), int) and kwargs[f.name] < 0:
            raise UserError(f"{flag_of(f)} {kwargs[f.name]} is negative: pass a seed of 0 or more")
    for f in dataclasses.fields(cls):
        if not is_option_group(f):
            continue
        chosen = f.metadata["option_group"]["choose"](kwargs)
        mine = {g.name for g in dataclasses.fields(chosen) if is_option(g)} if chosen is not None else set()
        for name, (g, users, _) in group_options(f).items():
            if name in values and name not in mine:
                raise UserError(f"{flag_of(g)} is an option of {', '.join(users)} only: drop it, or choose one of "
                                "those")
        if chosen is not None:
            kwargs[f.name] = chosen(**_typed(chosen, {n: values[n] for n in mine if n in values}))
    return cls(**kwargs)


def _typed(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Lists parsed for tuple fields become tuples."""
    hints = typing.get_type_hints(cls)
    for name, value in kwargs.items():
        if isinstance(value, list) and typing.get_origin(_unwrap(hints[name])[0]) is tuple:
            kwargs[name] = tuple(value)
    return kwargs
