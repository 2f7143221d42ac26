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
