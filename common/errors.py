"""One exception type for every mistake a user can fix.

The CLI prints these as a single `error: ...` line without a traceback; the
message must name the problem and the fix. Anything else is a bug and keeps
its traceback.
"""


class UserError(ValueError):
    """Bad input or environment that the user can fix; the message says how."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, for quoting inside a UserError.

    Library exceptions often carry several lines (a server's body, a traceback
    excerpt); quoting all of it would break the one-line error the CLI prints
    and push the fix out of sight. Falls back to the exception's type name.
    """
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def require_at_least(values: dict[str, float], minimum: float, word: str | None = None) -> None:
    """Refuse the flags of `values` ({flag: value}) below `minimum`, naming only those, each with its value.

    One message listing every flag of a group ("--a, --b and --c must be positive") names flags the user did not
    pass and leaves them to find which one was wrong; this names the ones that are.
    """
    bad = [f"{flag} {value}" for flag, value in values.items() if value < minimum]
    if bad:
        raise UserError(f"{', '.join(bad)} {'each ' if len(bad) > 1 else ''}must be {word or f'at least {minimum}'}")


def refuse_file(path: object, flag: str, what: str, fix: str) -> None:
    """A file given where a folder is expected is called a file (not "does not exist" or "holds no X")."""
    from pathlib import Path

    if Path(str(path)).is_file():
        raise UserError(f"{flag} {str(path)!r} is a file, not {what}: {fix}")
