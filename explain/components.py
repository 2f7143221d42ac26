"""The explainer, the scorer(s) and the LLM backends of one run, built from its settings.

Validate (specs parse, scorers' needs are met) -> plan (one backend per
distinct spec, all sharing one SQLite cache in OUT) -> build. Explainer and
scorer objects given by a caller replace the ones the settings name (the
settings' names still label the records), and no backend is opened for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explain.explainer import Explainer
from explain.run_folder import LLM_CACHE_FILE
from explain.scorers import Scorer, make_scorer, scorer_class
from explain.settings import TOKENS, ExplainSettings


@dataclass
class Components:
    explainer: Explainer
    scorer: Scorer  # selects among best-of-k candidates on valid and reports on test: the record's `scores`
    extra_scorers: list[Scorer] = field(default_factory=list)  # reported on test under scores[<name>]
    backends: list[Any] = field(default_factory=list)  # LLM backends to close when the run ends

    def close(self) -> None:
        for b in self.backends:
            b.close()


def scorer_name(settings: ExplainSettings) -> str:
    """The registry name of the scorer behind `--simulator`: the token lookup, or LLM simulation."""
    return "tokens" if settings.simulator == TOKENS else "simulation"


def check_specs(settings: ExplainSettings) -> None:
    """Every LLM spec parses and offers what its user needs; no model is loaded, nothing is contacted."""
    from explain.llm.backends import parse_spec

    for spec in settings.llm_specs():  # first: an unknown backend is named as such, not as a misfit
        parse_spec(spec)
    settings.validate()
    scorer_class(scorer_name(settings))  # an unknown scorer fails here, before the cache is read


def build_components(settings: ExplainSettings, out: Path, concurrency: int, explainer: Explainer | None = None,
                     scorer: Scorer | None = None) -> Components:
    """(explainer, scorer, backends) for the run; LLM backends share one cache in OUT and are built once per spec."""
    specs = set()
    if explainer is None and settings.explainer != TOKENS:
        specs.add(settings.explainer)
    if scorer is None and settings.simulator != TOKENS:
        specs.add(settings.simulator)
    backends = _open_backends(sorted(specs), settings, out, concurrency)
    try:
        if explainer is None:
            explainer = _make_explainer(settings, backends.get(settings.explainer))
        if scorer is None:
            scorer = make_scorer(scorer_name(settings), backends.get(settings.simulator), settings.simulator)
    except BaseException:
        for b in backends.values():
            b.close()
        raise
    return Components(explainer=explainer, scorer=scorer, backends=list(backends.values()))


def _open_backends(specs: list[str], settings: ExplainSettings, out: Path, concurrency: int) -> dict[str, Any]:
    if not specs:
        return {}
    from explain.llm.backends import make_backend
    from explain.llm.cache import LLMCache

    llm_cache = LLMCache(out / LLM_CACHE_FILE)
    return {spec: make_backend(spec, base_url=settings.base_url, concurrency=concurrency, cache=llm_cache)
            for spec in specs}


def _make_explainer(settings: ExplainSettings, backend: Any | None) -> Explainer:
    if settings.explainer == TOKENS:
        from explain.token_list import TokenListExplainer

        return TokenListExplainer()
    from explain.explainer import ExplainerConfig, LLMExplainer

    return LLMExplainer(backend, ExplainerConfig(format=settings.prompt_format, k=settings.best_of, seed=settings.seed))
