"""Entry point of `cli.py report` (it takes its settings object, see `report.settings`)."""

from __future__ import annotations

from pathlib import Path

from report.settings import ReportSettings


def report_command(settings: ReportSettings) -> Path:
    from report.build import build_report
    from report.layout import REPORT_DIR

    index = build_report(settings.run, settings.out if settings.out else Path(settings.run) / REPORT_DIR,
                         settings.descriptors, features_cache=settings.features_cache,
                         max_features=settings.max_features, allow_model_mismatch=settings.allow_model_mismatch)
    print(f"report: {index.resolve()}")
    return index
