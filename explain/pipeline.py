"""The `explain` run: exemplars -> k explanations -> simulate -> score, one JSONL record per feature.

Resumability: `OUT/explanations.jsonl` is append-only, one record per
(dictionary, feature), flushed and fsynced as soon as the feature is done. A
rerun reads it, keeps `ok` and `skipped` records, and does only the rest, so
a killed run resumes where it stopped. A torn last line (a kill mid-write) is
cut off; `failed` records are removed and retried (their LLM requests were
never cached, since only successes are). Every LLM request/response is in
`OUT/llm_cache.sqlite`, so redoing a feature costs no calls.

`OUT/config.json` holds every setting that decides the records (with the
cache's and each dictionary's identity); a rerun with different settings on
the same OUT is refused before anything is written. Runtime knobs
(`concurrency`) are not part of it.

Features are chosen per dictionary: `--feature-ids`, or `--features N` =
the first N of a permutation seeded with (seed, crc32 of the dictionary's
name), so a larger N only adds features. Exemplars of all pending features on one hook come from
one pass over the cache (see `explain.exemplars`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from activations.errors import UserError
from explain.exemplars import (ExemplarConfig, FeatureExemplars, FeatureJob, TokenDecoder, collect_exemplars,
                               compact)
from explain.scoring import score_simulation

RESULTS_FILE = "explanations.jsonl"
CONFIG_FILE = "config.json"
LLM_CACHE_FILE = "llm_cache.sqlite"
FORMAT_VERSION = 1


@dataclass
class ExplainSettings:
    """Everything that decides the records; saved as OUT/config.json and checked on rerun."""

    cache: str
    dicts: list[str]
    features: int | None = 50
    feature_ids: list[int] | None = None
    explainer: str = "tokens"
    simulator: str = "tokens"
    format: str = "highlight"
    k: int = 1
    base_url: str | None = None
    seed: int = 0
    exemplars: ExemplarConfig = field(default_factory=ExemplarConfig)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["exemplars"] = self.exemplars.to_json()
        return d


# -- the results file ------------------------------------------------------------------------------

def read_records(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of an explanations.jsonl.

    Every record is written as one line ending in a newline, so a last line
    without one (or that is not JSON) is a write torn by a kill: it is ignored,
    and cut off when `repair`, so the feature is simply done again. A bad line
    anywhere else means the file was edited, which is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    pos = good_end = 0
    line_no = 0
    while pos < len(data):
        line_no += 1
        nl = data.find(b"\n", pos)
        if nl == -1:
            break  # torn: the newline never made it
        line = data[pos:nl]
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if data[nl + 1:].strip():
                    raise UserError(f"line {line_no} of {path} is not JSON ({err.msg}) and is not the last line: "
                                    "the file was edited or damaged; fix or delete that line") from err
                break
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def _rewrite_records(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultsWriter:
    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# -- identity and settings ---------------------------------------------------------------------------

def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _dictionary_identity(folder: Path, d: Any) -> dict[str, Any]:
    weights = folder / "weights.safetensors"
    return {"path": str(folder), "name": d.name, "kind": d.kind, "hook": d.hook, "n_features": d.n_features,
            "weights_sha256": _file_digest(weights) if weights.exists() else None}


def _check_settings(out: Path, stored_doc: dict[str, Any]) -> None:
    path = out / CONFIG_FILE
    results = out / RESULTS_FILE
    if not path.exists():
        if results.exists():
            raise UserError(f"{results} exists without {CONFIG_FILE}: it was not made by this command; "
                            "choose another --out")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: delete {out} or choose another --out") from err
    old.pop("runtime", None)
    new = {k: v for k, v in stored_doc.items() if k != "runtime"}
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in diffs[:3])
        raise UserError(f"{out} holds a run with other settings ({shown}): rerun with the same settings "
                        "to resume, or choose another --out")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def choose_features(n_features: int, name: str, count: int | None, feature_ids: list[int] | None,
                    seed: int) -> list[int]:
    if feature_ids:
        bad = [f for f in feature_ids if not 0 <= f < n_features]
        if bad:
            raise UserError(f"--feature-ids {bad} out of range for {name} ({n_features} features): "
                            f"pass ids in 0..{n_features - 1}")
        return sorted(set(int(f) for f in feature_ids))
    if count is None or count < 1:
        raise UserError(f"--features {count}: pass at least 1, or --feature-ids")
    # A prefix of one seeded permutation: the features of --features 50 are among those of --features 100.
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    return sorted(int(f) for f in rng.permutation(n_features)[:count])


# -- one feature ------------------------------------------------------------------------------------

def explain_feature(ex: FeatureExemplars, explainer: Any, simulator: Any, exemplar_config: ExemplarConfig,
                    base: dict[str, Any]) -> dict[str, Any]:
    """The record of one feature; an LLM failure becomes a `failed` record, never a score.

    `BackendConfigError` is caught here too: it can depend on the feature
    (a prompt longer than a local model's context), and one such feature must
    not abort a run of hundreds; its message still names the fix.
    """
    from explain.llm.errors import BackendConfigError, LLMError

    rec: dict[str, Any] = {**base, "feature": ex.feature, "status": "ok", "explanation": None, "candidates": [],
                           "scores": {"top_and_random": None, "top": None, "random": None}, "score_notes": {},
                           "split": "test", "error": None}
    if ex.skipped:
        rec.update(status="skipped", error=ex.skipped)
        rec["exemplars"] = ex.to_json(exemplar_config.random_scored)
        return rec
    splits = ex.splits(exemplar_config.random_scored)
    try:
        cands = explainer.candidates(splits.train, feature_seed=ex.feature)
        best = 0
        cand_json = [{"explanation": c.explanation, "fewshot": c.fewshot, "shown": c.shown,
                      "valid_scores": None} for c in cands]
        if len(cands) > 1:
            v_top, v_rnd = splits.scored("valid")
            sims = simulator.simulate_many([(c.explanation, v_top + v_rnd) for c in cands])
            valid = [score_simulation(s.expected_values, v_top, v_rnd) for s in sims]
            for cj, sc in zip(cand_json, valid):
                cj["valid_scores"], cj["valid_notes"] = sc.values(), sc.notes
            ranked = [i for i in range(len(cands)) if valid[i].top_and_random is not None]
            if ranked:
                best = max(ranked, key=lambda i: valid[i].top_and_random)
            else:
                rec["score_notes"]["selection"] = "no candidate had a defined valid score; the first was kept"
        t_top, t_rnd = splits.scored("test")
        sim = simulator.simulate(cands[best].explanation, t_top + t_rnd)
        scores = score_simulation(sim.expected_values, t_top, t_rnd)
    except (LLMError, BackendConfigError) as err:
        rec.update(status="failed", error=f"{type(err).__name__}: {err}")
        rec["exemplars"] = ex.to_json(exemplar_config.random_scored)
        return rec
    rec.update(explanation=cands[best].explanation, candidates=cand_json, best=best, scores=scores.values())
    rec["score_notes"].update(scores.notes)
    rec["simulation"] = {"backend": sim.backend, "mode": sim.mode, "ten": sim.ten,
                         "test": [[compact(v, 2) for v in ev] for ev in sim.expected_values]}
    rec["exemplars"] = ex.to_json(exemplar_config.random_scored)
    return rec


# -- scorers ----------------------------------------------------------------------------------------

def build_scorers(settings: ExplainSettings, out: Path, concurrency: int) -> tuple[Any, Any, list[Any]]:
    """(explainer, simulator, backends to close) from the two specs; LLM backends share one SQLite cache."""
    from explain.token_scorer import TokenListExplainer, TokenListSimulator

    if settings.k < 1:
        raise UserError(f"--k {settings.k}: ask for at least 1 candidate explanation")
    if settings.simulator == "tokens" and settings.explainer != "tokens":
        raise UserError("--simulator tokens reads only token-list explanations: use --explainer tokens with it, "
                        "or an LLM --simulator (local:... / openai:...)")
    specs = {s for s in (settings.explainer, settings.simulator) if s != "tokens"}
    backends: dict[str, Any] = {}
    if specs:
        from explain.backends import make_backend
        from explain.llm_cache import LLMCache

        llm_cache = LLMCache(out / LLM_CACHE_FILE)
        for spec in sorted(specs):
            backends[spec] = make_backend(spec, base_url=settings.base_url, concurrency=concurrency, cache=llm_cache)
    if settings.explainer == "tokens":
        explainer: Any = TokenListExplainer()
    else:
        from explain.explainer import ExplainerConfig, LLMExplainer

        explainer = LLMExplainer(backends[settings.explainer],
                                 ExplainerConfig(format=settings.format, k=settings.k, seed=settings.seed))
    if settings.simulator == "tokens":
        simulator: Any = TokenListSimulator()
    else:
        from explain.simulator import AllAtOnceSimulator

        simulator = AllAtOnceSimulator(backends[settings.simulator])
    return explainer, simulator, list(backends.values())


# -- the run ----------------------------------------------------------------------------------------

def run_explain(settings: ExplainSettings, out: str | Path, concurrency: int = 4, progress: bool = True,
                scorers: tuple[Any, Any] | None = None) -> Path:
    """Run (or resume) an explanation run into `out`; returns the path of explanations.jsonl.

    `scorers` = (explainer, simulator) objects with the `candidates` /
    `simulate`, `simulate_many` methods replace the ones named by the settings
    (for explainers that are not a backend string); the settings' names still
    label the records.
    """
    import sae
    from activations.reader import ActivationCache

    out = Path(out)
    if not settings.dicts:
        raise UserError("no --dict given: pass one or more dictionary folders")
    cache_path = Path(settings.cache).resolve()
    with ActivationCache(cache_path) as cache:
        if not cache.fragments:
            print(f"note: {cache_path} was not made with --fragments; its contexts are cut from packed text")
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
        doc = {**settings.to_json(), "cache": str(cache_path), "dicts": [str(f) for f in folders],
               "format_version": FORMAT_VERSION,
               "cache_identity": {"n_contexts": cache.n_contexts, "model_id": cache.model_id,
                                  "context_length": cache.context_length,
                                  "settings": str(cache.attrs.get("settings", ""))},
               "dictionaries": [_dictionary_identity(f, d) for f, d in zip(folders, dictionaries)]}
        _check_settings(out, doc)
        chosen = [choose_features(d.n_features, d.name, settings.features, settings.feature_ids, settings.seed)
                  for d in dictionaries]
        if scorers is None:
            explainer, simulator, backends = build_scorers(settings, out, concurrency)
        else:
            (explainer, simulator), backends = scorers, []
        out.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(out / CONFIG_FILE, {**doc, "runtime": {"concurrency": concurrency}})
        results = out / RESULTS_FILE
        records = read_records(results, repair=True)
        kept = [r for r in records if r.get("status") in ("ok", "skipped")]
        if len(kept) != len(records):
            print(f"retrying {len(records) - len(kept)} failed feature(s) from the previous run")
            _rewrite_records(results, kept)
        done = {(r["dictionary_path"], int(r["feature"])) for r in kept}
        pending = [[f for f in feats if (str(folder), f) not in done] for folder, feats in zip(folders, chosen)]
        total = sum(len(p) for p in pending)
        if total == 0:
            print(f"{results}: all {len(done)} features already done; nothing to do")
            return results
        writer = ResultsWriter(results)
        try:
            _run_pending(cache, dictionaries, folders, pending, settings, explainer, simulator, writer,
                         len(done), total, progress)
        finally:
            writer.close()
            for b in backends:
                b.close()
    return results


def _run_pending(cache: Any, dictionaries: list[Any], folders: list[Path], pending: list[list[int]],
                 settings: ExplainSettings, explainer: Any, simulator: Any, writer: ResultsWriter,
                 n_done: int, total: int, progress: bool) -> None:
    decoder = TokenDecoder.for_cache(cache)
    hooks = list(dict.fromkeys(d.hook for d in dictionaries))
    bar = tqdm(total=total, desc="explain", unit="feature", disable=not progress)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    started = time.perf_counter()
    if n_done:
        bar.write(f"resuming: {n_done} feature(s) already done, {total} to go")
    for hook in hooks:
        members = [i for i, d in enumerate(dictionaries) if d.hook == hook and pending[i]]
        if not members:
            continue
        jobs = [FeatureJob(dictionaries[i], pending[i]) for i in members]
        exemplars = collect_exemplars(cache, hook, jobs, settings.exemplars, decoder, progress)
        for i, exs in zip(members, exemplars):
            d = dictionaries[i]
            base = {"dictionary": d.name, "dictionary_path": str(folders[i]), "kind": d.kind, "hook": d.hook,
                    "explainer": settings.explainer, "simulator": settings.simulator}
            for ex in exs:
                record = explain_feature(ex, explainer, simulator, settings.exemplars, base)
                writer.write(record)
                counts[record["status"]] += 1
                bar.update(1)
                minutes = (time.perf_counter() - started) / 60
                bar.set_postfix(per_min=f"{bar.n / max(minutes, 1e-9):.1f}", **counts)
    bar.close()
    print(f"{writer.path}: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed "
          f"in {time.perf_counter() - started:.0f}s")
