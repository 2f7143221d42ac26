"""Cost of each scorer per scored feature, on the same features and the same local model (issue 15, item 6).

Like Paulo et al.'s cost comparison: for every scorer, model tokens and wall
time per feature, with nothing answered from a cache. Three token counts:

* `tokens/feat`: what the pipeline records as the scorer's cost
  (`scores.<name>.n_tokens`): the tokens each prompt runs through the
  model; a local backend computes the instructions + few-shot prefix
  shared by all prompts of a scorer once per run, so it is not in here;
* `+ prefixes`: everything the model ran, shared prefixes included
  (amortised over the features of this benchmark);
* `billed/feat`: what an API without prompt caching would bill: every
  prompt in full (prefix included) plus the answer tokens.

Targets: detection and fuzzing each at most 1/3 of simulation's tokens per
feature; the embedding scorer at least 100 features/s on this CPU (cold:
every example window embedded for the first time; warm: windows already in
the store, as for a second explainer or basis over the same fragments;
batched: all features' explanations embedded in one call).

    python benchmarks/bench_scorers.py --cache runs/i15/frags.h5 --dict runs/i15/L3/sae/untied_R2_l1_0.003 \
        --features 10 --scorers simulation,detection,fuzzing,intruder,embedding
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sae  # noqa: E402
from activations.reader import ActivationCache  # noqa: E402
from explain.exemplars import FeatureJob, TokenDecoder, collect_exemplars  # noqa: E402
from explain.run_folder import choose_features  # noqa: E402
from explain.scorers import make_scorer  # noqa: E402
from explain.settings import ExemplarConfig, ScoringConfig  # noqa: E402
from explain.token_list import TokenListExplainer  # noqa: E402


class Recorder:
    """Wraps a local backend: counts the full (billed) tokens of every prompt it is sent."""

    def __init__(self, backend: Any):
        self.backend, self.billed = backend, 0
        self.name, self.capabilities = backend.name, backend.capabilities

    def digit_distributions(self, prompts: Any) -> Any:
        out = self.backend.digit_distributions(prompts)
        tok = self.backend.tokenizer
        self.billed += sum(len(tok(p.text, add_special_tokens=False)["input_ids"]) + p.n_slots for p in prompts)
        return out

    def generate_scored(self, requests: Any) -> Any:
        out = self.backend.generate_scored(requests)
        self.billed += sum(len(self.backend.render(r.as_messages())) + len(g.tokens) for r, g in zip(requests, out))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def sample(cache_path: str, dict_path: str, n: int, seed: int, scoring: ScoringConfig) -> list[Any]:
    d = sae.load(dict_path)
    with ActivationCache(cache_path) as cache:
        pool = choose_features(d.n_features, d.name, min(d.n_features, 4 * n), None, seed)
        exs = collect_exemplars(cache, d.hook, [FeatureJob(d, pool, donor_pool=pool)], ExemplarConfig(seed=seed),
                                TokenDecoder.for_cache(cache), progress=False, scoring=scoring, intruders=True)[0]
    return [e for e in exs if not e.skipped and e.scoring is not None][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="fragment cache (cache --fragments)")
    ap.add_argument("--dict", required=True, help="dictionary folder")
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--scorers", default="simulation,detection,fuzzing,intruder,embedding")
    ap.add_argument("--simulator", default="local:default", help="the local model every LLM scorer runs on")
    ap.add_argument("--embedder", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = ScoringConfig(seed=args.seed)
    features = sample(args.cache, args.dict, args.features, args.seed, config)
    n = len(features)
    explainer = TokenListExplainer()
    jobs = [(explainer.candidates(ex.splits(5).train)[0].explanation, ex.splits(5).examples("test")) for ex in features]
    print(f"{n} features of {args.dict}, explanations from the token-list explainer, {args.simulator}, "
          f"{torch.get_num_threads()} threads, no cache")
    rows = []
    backend = None
    for name in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        if name == "embedding":
            rows += bench_embedding(args.embedder, jobs, config)
            continue
        if backend is None:
            from explain.llm.backends import make_backend

            backend = make_backend(args.simulator, cache=None)
        rec = Recorder(backend)
        scorer = make_scorer(name, rec, args.simulator, config)
        before = backend.tokens_processed
        start = time.perf_counter()
        results = [scorer.score(e, ex) for e, ex in jobs]
        wall = time.perf_counter() - start
        rows.append({"scorer": name, "prompts": sum(r.cost.n_prompts for r in results) / n,
                     "tokens": sum(r.cost.n_tokens or 0 for r in results) / n,
                     "all": (backend.tokens_processed - before) / n, "billed": rec.billed / n, "wall": wall / n})
    print_table(rows)


def bench_embedding(spec: str, jobs: list[Any], config: ScoringConfig) -> list[dict[str, Any]]:
    """Cold: nothing embedded yet. Warm: every example window already in the store (as for a second explainer
    or basis over the same fragments), each explanation embedded afresh."""
    from explain.llm.embedder import Embedder, VectorStore

    embedder = Embedder.from_spec(spec, None)
    rows = []
    for label in ("embedding (cold)", "embedding (warm)", "embedding (warm, batched)"):
        embedder.store = VectorStore(None)
        if "warm" in label:
            embedder.embed([e.text.strip() for _, ex in jobs for e in ex.scoring.examples])
        scorer = make_scorer("embedding", embedder, spec, config)
        start, before = time.perf_counter(), embedder.tokens_processed
        # per feature as the pipeline calls it, or every feature in one call (`score_many`)
        results = scorer.score_many(jobs) if "batched" in label else [scorer.score(e, ex) for e, ex in jobs]
        wall = time.perf_counter() - start
        n = len(jobs)
        rows.append({"scorer": label, "prompts": 0.0, "tokens": sum(r.cost.n_tokens or 0 for r in results) / n,
                     "all": (embedder.tokens_processed - before) / n, "billed": None, "wall": wall / n})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    sim = next((r["tokens"] for r in rows if r["scorer"] == "simulation"), None)
    print("| scorer | prompts/feat | tokens/feat | + prefixes | billed/feat | × simulation tokens | s/feat | features/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['tokens'] / sim:.2f}" if sim else "–"
        billed = "–" if r["billed"] is None else f"{r['billed']:,.0f}"
        print(f"| {r['scorer']} | {r['prompts']:.1f} | {r['tokens']:,.0f} | {r['all']:,.0f} | {billed} | {ratio} | "
              f"{r['wall']:.3f} | {1 / r['wall']:.1f} |")


if __name__ == "__main__":
    main()
