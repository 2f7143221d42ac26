"""Entry points of `cli.py explain` and `cli.py compare`: each takes its settings object.

Keyword arguments (the names these functions took before they took
settings: `format=`, `k=`, ...) are still accepted instead of a settings
object, so existing callers such as `report/demo.py` keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from explain.settings import CompareSettings, ExplainSettings


def explain_command(settings: ExplainSettings | None = None, /, **keywords: Any) -> Path:
    """Run (or resume) an explanation run; this process holds --out until it ends (see `claim_output`)."""
    from explain.pipeline import run_explain

    return run_explain(_settings(ExplainSettings, settings, keywords, ExplainSettings.from_keywords))


def compare_command(settings: CompareSettings | list[str] | None = None, /, **keywords: Any) -> list[dict]:
    """`settings` may also be the list of explanation folders, as the old first argument was."""
    from explain.compare import compare

    if isinstance(settings, (list, tuple)):
        settings, keywords = None, {"explanations": list(settings), **keywords}
    s = _settings(CompareSettings, settings, keywords, CompareSettings)
    return compare(s.explanations, plot_path=s.plot, json_path=s.json_path, scorers_plot=s.scorers_plot)


def _settings(cls: type, settings: Any, keywords: dict[str, Any], build: Any) -> Any:
    if settings is None:
        return build(**keywords)
    if keywords:
        raise TypeError(f"pass a {cls.__name__} or keyword arguments, not both")
    if not isinstance(settings, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(settings).__name__}")
    return settings
