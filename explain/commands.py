"""Entry points of `cli.py explain` and `cli.py compare` (keyword names = the parsers' dest names)."""

from __future__ import annotations

from pathlib import Path


def explain_command(cache: str, dicts: list[str], features: int = 50, feature_ids: list[int] | None = None,
                    explainer: str = "tokens", simulator: str = "tokens", format: str = "highlight", k: int = 1,
                    random: str = "nonzero", base_url: str | None = None, concurrency: int = 4, seed: int = 0,
                    out: str = "explanations") -> Path:
    from explain.exemplars import ExemplarConfig
    from explain.pipeline import ExplainSettings, run_explain

    settings = ExplainSettings(cache=cache, dicts=list(dicts), features=None if feature_ids else features,
                               feature_ids=list(feature_ids) if feature_ids else None, explainer=explainer,
                               simulator=simulator, format=format, k=k, base_url=base_url, seed=seed,
                               exemplars=ExemplarConfig(random=random, seed=seed))
    return run_explain(settings, out, concurrency=concurrency)


def compare_command(explanations: list[str], plot: str | None = None, json_path: str | None = None) -> list[dict]:
    from explain.compare import compare

    return compare(explanations, plot_path=plot, json_path=json_path)
