"""The one-line notes a command prints when a count it was given does not fit the data (issue 28, item 3).

A count above what exists (more tokens than a cache holds, more documents
than a corpus has) is not an error: the command uses all there is. But it
must say so, in one line naming the flag, the count asked for and what was
used, so that a result made from 412 contexts is not read as one made from
the 100,000 that were asked for.
"""

from __future__ import annotations


def clipped_line(flag: str, asked: int, available: int, what: str) -> str:
    """The one line a command prints when a count it was given exceeds what exists and it uses all there is."""
    return f"note: using all {available:,} {what}, fewer than {flag} {asked:,}"
