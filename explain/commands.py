"""Entry points of `cli.py explain` and `cli.py compare`: each takes its settings object (and only that: the
keyword forms these functions had before settings existed had no caller left but tests, and are gone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from explain.settings import CompareSettings, ExplainSettings


def explain_command(settings: ExplainSettings) -> Path:
    """Run (or resume) an explanation run; this process holds --out until it ends (see `claim_output`)."""
    from explain.pipeline import run_explain

    return run_explain(_expect(ExplainSettings, settings))


def compare_command(settings: CompareSettings) -> list[dict]:
    from explain.compare import compare

    s = _expect(CompareSettings, settings)
    return compare(s.explanations, plot_path=s.plot, json_path=s.json_path, scorers_plot=s.scorers_plot)


def _expect(cls: type, settings: Any) -> Any:
    if not isinstance(settings, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(settings).__name__}")
    return settings
