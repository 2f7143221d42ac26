"""Reading what a failed CLI command printed."""

from __future__ import annotations


def error_line(err: str) -> str:
    """The one `error: ...` line of a failed command (progress bars may share stderr; tracebacks may not)."""
    lines = [line[line.index("error: "):] for line in err.replace("\r", "\n").splitlines() if "error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
