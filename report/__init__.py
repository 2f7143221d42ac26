"""The static HTML dashboard of a run folder (`cli.py report`); the demo that fills one lives in `pipeline/`.

Nothing heavy is imported here; see `report.build`.
"""

from __future__ import annotations


def build_report(run_dir, out_dir, descriptors=(), **options):
    """Write OUT/index.html (and OUT/features/) from a run folder; returns its path (see `report.build`)."""
    from report.build import build_report as _build

    return _build(run_dir, out_dir, descriptors, **options)


__all__ = ["build_report"]
