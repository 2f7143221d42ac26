"""The `explain` run: exemplars -> k explanations -> scores, one JSONL record per feature.

Resumability: `OUT/explanations.jsonl` is append-only, one record per
(dictionary, feature), fsynced as soon as the feature is done (see
`explain.records_file`). A rerun keeps `ok` and `skipped` records and does
only the rest, so a killed run resumes where it stopped; `failed` records
are retried (their LLM requests were never cached, since only successes
are). Every LLM request/response is in `OUT/llm_cache.sqlite`, so redoing a
feature costs no calls. `OUT/config.json` must match the settings of a rerun
(see `explain.run_folder`).

`run_explain` goes validate (settings, output path: nothing loaded yet) ->
plan (cache and dictionaries checked against each other, settings record,
features) -> build (explainer, scorer, backends) -> persist (config.json,
records repaired) -> run (exemplars of all pending features on one hook
come from one pass over the cache; see `explain.exemplars`; with a served model, up to `--concurrency`
features at once, records still in feature order: `explain.feature_pool`). With `--rescore
SRC` the explanations are SRC's, replayed from its call cache (`explain.rescore`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from common.errors import UserError
from common.runstate import Claim, check_output_folder
from explain.components import Components, build_components, check_specs
from explain.exemplars import FeatureJob, TokenDecoder, collect_exemplars
from explain.explainer import Explainer
from explain.feature import explain_feature
from explain.feature_pool import ordered_map
from explain.records_file import RESULTS_FILE, ResultsWriter, read_records
from explain.run_folder import CONFIG_FILE, LLM_CACHE_FILE, check_settings, choose_features, claim_run_folder, \
    config_doc, done_features, write_config
from explain.scorers import SCORERS, Scorer
from explain.settings import ExplainSettings

# The names callers have always imported from here (pipeline/demo.py: RESULTS_FILE, read_records).
__all__ = ["CONFIG_FILE", "LLM_CACHE_FILE", "RESULTS_FILE", "ExplainSettings", "explain_feature", "read_records",
           "run_explain"]


@dataclass
class Plan:
    """What a run will do, decided before anything is written."""

    folders: list[Path]
    dictionaries: list[Any]
    doc: dict[str, Any]  # the settings record of config.json
    chosen: list[list[int]]  # per dictionary, the features of this run


def run_explain(settings: ExplainSettings, progress: bool = True, explainer: Explainer | None = None,
                scorer: Scorer | None = None) -> Path:
    """Run (or resume) an explanation run into `settings.out`; returns the path of explanations.jsonl.

    `explainer` / `scorer` objects replace the ones the settings name (for
    explainers that are not a backend string); the settings' names still
    label the records.
    """
    from activations.reader import ActivationCache

    out_path = _validate(settings, injected=explainer is not None and scorer is not None)
    concurrency = settings.concurrency
    cache_path = Path(settings.cache).resolve()
    with claim_run_folder(out_path) as claim, ActivationCache(cache_path) as cache:
        plan = _plan(settings, cache_path, cache, claim)
        components = build_components(settings, out_path, concurrency, explainer, scorer)
        try:
            results, pending, n_done = _persist_start(claim, plan, concurrency)
            total = sum(len(p) for p in pending)
            if total == 0:
                print(f"{results}: all {n_done} features already done; nothing to do")
                return results
            with ResultsWriter(results) as writer:
                _run_pending(cache, plan, pending, settings, components, writer, n_done, total, progress)
        finally:
            components.close()
    return results


def _validate(settings: ExplainSettings, injected: bool) -> Path:
    """Mistakes found without reading a file: bad settings, an output path that cannot be written."""
    if settings.out is None:
        raise UserError("no --out given: pass the folder the explanations go to")
    out_path = check_output_folder(settings.out)
    if settings.rescore:
        from explain.rescore import source_folder

        source_folder(settings, out_path)
    if injected:
        settings.validate()
    else:
        check_specs(settings)
    return out_path


def _plan(settings: ExplainSettings, cache_path: Path, cache: Any, claim: Claim) -> Plan:
    """Load and cross-check the inputs, refuse another run's folder, choose the features."""
    import sae

    if not cache.fragments:
        print(f"note: {cache_path} was not made with --fragments; its contexts are cut from packed text")
    for line in settings.unused_counts():
        print(line)
    folders = [Path(p).resolve() for p in settings.dicts]
    if len(set(folders)) != len(folders):
        raise UserError("the same --dict folder is given twice: pass each dictionary once")
    dictionaries = [sae.load(f) for f in folders]
    for f, d in zip(folders, dictionaries):
        if d.hook not in cache.hooks:
            raise UserError(f"{f} is a dictionary of {d.hook!r}, which {cache_path} does not hold "
                            f"(it has {', '.join(cache.hooks)}): pass a cache of that hook")
        if cache.width(d.hook) != d.d_in:
            raise UserError(f"{f} expects width {d.d_in} but {d.hook} in {cache_path} has {cache.width(d.hook)}: "
                            "the dictionary belongs to another model")
    doc = config_doc(settings, cache_path, cache, folders, dictionaries)
    allowed = [entry for entry in _pairing(settings, cache_path, cache, dictionaries)
               if entry["status"].startswith("mismatch")]
    if allowed:  # only then: folders made before the check existed keep resuming
        doc["model_mismatch_allowed"] = allowed
    check_settings(claim, doc)
    if settings.rescore:
        from explain.rescore import check_source, source_folder

        check_source(source_folder(settings, claim.path), doc)
    chosen = [choose_features(d.n_features, d.name, settings.features, settings.feature_ids, settings.seed)
              for d in dictionaries]
    return Plan(folders=folders, dictionaries=dictionaries, doc=doc, chosen=chosen)


def _pairing(settings: ExplainSettings, cache_path: Path, cache: Any, dictionaries: list[Any]
             ) -> list[dict[str, Any]]:
    """Every dictionary against the cache's model (`activations.provenance`): another model's dictionary of the
    same width would be explained from activations it never saw."""
    from activations.provenance import check_pairing, record_of

    used_on = record_of(cache.attrs)
    return [check_pairing(d, used_on, f"cache {cache_path}", allow=settings.allow_model_mismatch)
            for d in dictionaries]


def _persist_start(claim: Claim, plan: Plan, concurrency: int) -> tuple[Path, list[list[int]], int]:
    """Write config.json, repair the records; (results path, pending features per dictionary, features done)."""
    write_config(claim, concurrency)
    results = claim.path / RESULTS_FILE
    done = done_features(results)
    pending = [[f for f in feats if (str(folder), f) not in done] for folder, feats in zip(plan.folders, plan.chosen)]
    return results, pending, len(done)


def _run_pending(cache: Any, plan: Plan, pending: list[list[int]], settings: ExplainSettings,
                 components: Components, writer: ResultsWriter, n_done: int, total: int, progress: bool) -> None:
    decoder = TokenDecoder.for_cache(cache)
    dictionaries, exemplar_config = plan.dictionaries, settings.exemplar_config
    hooks = list(dict.fromkeys(d.hook for d in dictionaries))
    bar = tqdm(total=total, desc="explain", unit="feature", disable=not progress)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    first_error = None
    started = time.perf_counter()
    if n_done:
        bar.write(f"resuming: {n_done} feature(s) already done, {total} to go")
    for hook in hooks:
        members = [i for i, d in enumerate(dictionaries) if d.hook == hook and pending[i]]
        if not members:
            continue
        jobs = [FeatureJob(dictionaries[i], pending[i], donor_pool=plan.chosen[i]) for i in members]
        exemplars = collect_exemplars(cache, hook, jobs, exemplar_config, decoder, progress,
                                      scoring=components.scoring, intruders=components.intruders)
        for i, exs in zip(members, exemplars):
            d = dictionaries[i]
            base = {"dictionary": d.name, "dictionary_path": str(plan.folders[i]), "kind": d.kind, "hook": d.hook,
                    "explainer": settings.explainer, "simulator": settings.simulator}
            if settings.rescore:
                base["rescored_from"] = str(Path(settings.rescore).resolve())
            def one(ex: Any, base: dict[str, Any] = base) -> dict[str, Any]:
                return explain_feature(ex, components.explainer, components.scorer, exemplar_config, base,
                                       components.extra_scorers)

            for record in ordered_map(one, exs, components.workers):  # in feature order, whatever the workers
                writer.write(record)
                counts[record["status"]] += 1
                if record["status"] == "failed" and first_error is None:
                    first_error = str(record["error"]).splitlines()[0] if record["error"] else "an unknown error"
                bar.update(1)
                minutes = (time.perf_counter() - started) / 60
                bar.set_postfix(per_min=f"{bar.n / max(minutes, 1e-9):.1f}", **counts)
    bar.close()
    print(f"{writer.path}: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed "
          f"in {time.perf_counter() - started:.0f}s{_cost_line(components)}")
    if counts["failed"] and not counts["ok"]:  # a run that produced nothing must not exit 0
        raise UserError(f"no feature of this run succeeded: all {counts['failed']} failed, the first with "
                        f"{first_error}; fix that and rerun the same command (failed features are retried)")


def _cost_line(components: Components) -> str:
    """What each scorer cost, for those that ran a model (the token-list scorer runs none), its tokens in the
    unit of its spec (model tokens of an LLM, encoder tokens of the embedder; `ScorerSpec.cost_unit`)."""
    parts = []
    for s in components.scorers:
        spent = s.spent
        if not (spent.n_prompts or spent.n_tokens):
            continue
        unit = getattr(SCORERS.get(s.name), "cost_unit", None) or "model tokens"  # a caller's scorer: no spec
        tokens = f", {spent.n_tokens} {unit}" if spent.n_tokens else ""
        parts.append(f"{s.name} {spent.n_prompts} prompts ({spent.n_cached} answered from a cache{tokens})")
    return f"; scoring: {'; '.join(parts)}" if parts else ""
