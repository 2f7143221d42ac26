"""The explainer, the scorer(s) and the LLM backends of one run, built from its settings.

Validate (specs parse, scorers' needs are met) -> plan (one backend per
distinct spec, all sharing one SQLite cache in OUT) -> build. Explainer and
scorer objects given by a caller replace the ones the settings name (the
settings' names still label the records), and no backend is opened for them.

Scorers: `--scorers` (see `ExplainSettings.resolved_scorers`). The one
`--simulator` names (tokens or simulation) is the *main* scorer: it chooses
among best-of-k candidates and its metrics are the record's top-level
`scores`, as before there were others. Every other scorer is an extra one,
run on test for the chosen explanation: those whose `ScorerSpec` needs an
LLM on the `--simulator` backend, those that need embeddings on `--embedder`
(opened once); their specs also say whether test examples and intruders are
sampled (`explain.scorers.spec`). Every scorer reads answers as
`--score-mode` says. With `--rescore SRC` the explainer is SRC's, answered
from SRC's call cache (`explain.rescore`), and no explainer backend is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explain.explainer import Explainer
from explain.feature_pool import parallel_safe
from explain.run_folder import EMBEDDINGS_FILE, LLM_CACHE_FILE
from explain.scorers import Scorer, make_scorer, scorer_class, scorer_spec
from explain.settings import TOKENS, ExplainSettings, ScoringConfig


@dataclass
class Components:
    explainer: Explainer
    scorer: Scorer | None  # selects among best-of-k candidates on valid and reports on test: the record's `scores`
    extra_scorers: list[Scorer] = field(default_factory=list)  # reported on test under scores[<name>]
    backends: list[Any] = field(default_factory=list)  # LLM backends (and the embedder) to close when the run ends
    scoring: ScoringConfig | None = None  # the sampled test examples' protocol, when a scorer reads them
    intruders: bool = False  # whether intruder fragments are sampled
    workers: int = 1  # features in flight at once (`explain.feature_pool`): --concurrency where all is thread-safe

    @property
    def scorers(self) -> list[Scorer]:
        return ([self.scorer] if self.scorer is not None else []) + list(self.extra_scorers)

    def close(self) -> None:
        for b in self.backends:
            b.close()


def scorer_name(settings: ExplainSettings) -> str:
    """The registry name of the scorer behind `--simulator`: the token lookup, or LLM simulation."""
    return settings.main_scorer()


def check_specs(settings: ExplainSettings) -> None:
    """Every LLM spec parses and offers what its user needs; no model is loaded, nothing is contacted."""
    from explain.llm.backends import parse_spec

    for spec in settings.llm_specs():  # first: an unknown backend is named as such, not as a misfit
        parse_spec(spec)
    settings.validate()
    for name in settings.resolved_scorers():
        scorer_class(name)  # an unknown scorer fails here, before the cache is read


def build_components(settings: ExplainSettings, out: Path, concurrency: int, explainer: Explainer | None = None,
                     scorer: Scorer | None = None) -> Components:
    """(explainer, scorers, backends) for the run; LLM backends share one cache in OUT and are built once per spec."""
    injected = explainer is not None or scorer is not None
    names = settings.resolved_scorers()
    main = scorer_name(settings)
    extras = [n for n in names if n != main]
    specs = set()
    opened: list[Any] = []
    if explainer is None and settings.rescore:
        from explain.rescore import source_explainer, source_folder

        explainer, replay = source_explainer(settings, source_folder(settings, out))
        opened += [replay] if replay is not None else []
    if explainer is None and settings.explainer != TOKENS:
        specs.add(settings.explainer)
    llm_scorers = [n for n in ([main] if scorer is None and main in names else []) + extras
                   if scorer_spec(n).needs_llm]
    if llm_scorers and settings.simulator != TOKENS:
        specs.add(settings.simulator)
    backends = _open_backends(sorted(specs), settings, out, concurrency)
    opened += list(backends.values())
    config = settings.scoring_config
    try:
        if explainer is None:
            explainer = _make_explainer(settings, backends.get(settings.explainer))
        if scorer is None and main in names:  # otherwise the caller's scorer, or none (top-level scores null)
            scorer = make_scorer(main, backends.get(settings.simulator), settings.simulator)
        extra_scorers = []
        embedder = None
        for name in extras:
            if scorer_spec(name).needs_embedder:
                if embedder is None:
                    from explain.llm.embedder import Embedder

                    embedder = Embedder.from_spec(settings.embedder, out / EMBEDDINGS_FILE)
                    opened.append(embedder)
                extra_scorers.append(make_scorer(name, embedder, f"--embedder {settings.embedder}", config))
            else:
                extra_scorers.append(make_scorer(name, backends.get(settings.simulator), settings.simulator, config))
    except BaseException:
        for b in opened:
            b.close()
        raise
    for s in ([scorer] if scorer is not None and main in names else []) + extra_scorers:
        s.score_mode = settings.score_mode
    extra_specs = [scorer_spec(n) for n in extras]
    workers = concurrency if parallel_safe(opened, injected) else 1
    return Components(explainer=explainer, scorer=scorer, extra_scorers=extra_scorers, backends=opened,
                      scoring=config if any(s.sampled for s in extra_specs) else None,
                      intruders=any(s.intruders for s in extra_specs), workers=workers)


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
