"""What a `transformers` forward pass returns, read the same way across the versions `setup.cfg` allows.

Shared by the local backend's simulation readout (`explain.llm.local`) and its
scored answers (`explain.llm.local_scored`), so neither imports the other for it.
"""

from __future__ import annotations

from typing import Any


def returned_cache(out: Any) -> Any:
    """The key/value cache a forward returned: `out.cache` from transformers 5.2x on, `out.past_key_values` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
