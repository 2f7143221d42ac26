"""Sparse dictionaries (SAEs and baselines) behind one `Dictionary` interface.

Nothing heavy is imported here; `sae.load` imports torch on first use.
"""

from __future__ import annotations


def load(path, device: str = "cpu"):
    """Load a dictionary folder (config.json + weights.safetensors) as the right kind."""
    from sae.io import load as _load

    return _load(path, device=device)


__all__ = ["load"]
