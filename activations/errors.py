"""One exception type for every mistake a user can fix.

The CLI prints these as a single `error: ...` line without a traceback; the
message must name the problem and the fix. Anything else is a bug and keeps
its traceback.
"""


class UserError(ValueError):
    """Bad input or environment that the user can fix; the message says how."""
