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
batched: all features' explanations embedded in one call), with the vector
store on disk as in a run. Wall time on a shared machine includes waiting
for a core, so CPU time (this process's own) is printed beside it, and the
load average. A last section times the bare encoder forward on the same
texts: the features/s that the hardware bounds each mode to. `--control`
instead checks that the embedding scorer reads the explanation: AUROC with
each feature's own explanation vs with another feature's.

    python benchmarks/bench_scorers.py --cache runs/i15/frags.h5 --dict runs/i15/L3/sae/untied_R2_l1_0.003 \
        --features 10 --scorers simulation,detection,fuzzing,intruder,embedding
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
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


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


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
    ap.add_argument("--control", action="store_true",
                    help="instead of costs: embedding AUROC of each feature's own explanation vs another feature's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = _load()
    config = ScoringConfig(seed=args.seed)
    features = sample(args.cache, args.dict, args.features, args.seed, config)
    n = len(features)
    explainer = TokenListExplainer()
    jobs = [(explainer.candidates(ex.splits(5).train)[0].explanation, ex.splits(5).examples("test")) for ex in features]
    if args.control:
        control(args.embedder, jobs, config)
        return
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
        start, cpu = time.perf_counter(), time.process_time()
        results = [scorer.score(e, ex) for e, ex in jobs]
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append({"scorer": name, "prompts": sum(r.cost.n_prompts for r in results) / n,
                     "tokens": sum(r.cost.n_tokens or 0 for r in results) / n,
                     "all": (backend.tokens_processed - before) / n, "billed": rec.billed / n, "wall": wall / n,
                     "cpu": cpu / n})
    print_table(rows)
    if "embedding" in args.scorers:
        raw_encoder(args.embedder, jobs)
    print(f"load average (1, 5, 15 min) at the start: {load0}, at the end: {_load()}; "
          f"{os.cpu_count()} CPUs; wall time includes waiting for them, CPU time is this process's own")


def bench_embedding(spec: str, jobs: list[Any], config: ScoringConfig) -> list[dict[str, Any]]:
    """The embedding scorer as the pipeline runs it: a vector store on disk, a fresh embedder per mode.

    Cold: nothing embedded yet. Warm: every example window already in the store (written by an earlier
    embedder, as for a rerun, or a second explainer over the same fragments), each explanation embedded
    afresh; per feature (`score`, as the pipeline calls it) or every feature in one call (`score_many`)."""
    from explain.llm.embedder import Embedder, VectorStore

    base = Embedder.from_spec(spec, None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def fresh(label: str) -> Embedder:
            return Embedder(base.model, base.tokenizer, name=base.name, pooling=base.pooling,
                            max_length=base.max_length, store=VectorStore(Path(tmp) / f"{label}.sqlite"))

        for label in ("embedding (cold)", "embedding (warm)", "embedding (warm, batched)"):
            if "warm" in label:
                earlier = fresh(label)
                earlier.embed([e.text.strip() for _, ex in jobs for e in ex.scoring.examples])
                earlier.close()
            embedder = fresh(label)
            scorer = make_scorer("embedding", embedder, spec, config)
            start, cpu, before = time.perf_counter(), time.process_time(), embedder.tokens_processed
            results = scorer.score_many(jobs) if "batched" in label else [scorer.score(e, ex) for e, ex in jobs]
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            embedder.close()
            n = len(jobs)
            rows.append({"scorer": label, "prompts": 0.0, "tokens": sum(r.cost.n_tokens or 0 for r in results) / n,
                         "all": (embedder.tokens_processed - before) / n, "billed": None, "wall": wall / n,
                         "cpu": cpu / n})
    return rows


def control(spec: str, jobs: list[Any], config: ScoringConfig) -> None:
    """Does the embedding scorer read the explanation? Each feature scored with its own token-list explanation and
    with the next feature's (a cyclic shift: every explanation used once, never on its own feature)."""
    from explain.llm.embedder import Embedder

    scorer = make_scorer("embedding", Embedder.from_spec(spec, None), spec, config)
    shifted = [(jobs[(i + 1) % len(jobs)][0], ex) for i, (_, ex) in enumerate(jobs)]
    for label, batch in (("own explanation", jobs), ("another feature's", shifted)):
        values = np.array([r.metrics["auroc"] for r in scorer.score_many(batch) if r.metrics["auroc"] is not None])
        print(f"{label}: embedding AUROC {values.mean():.3f} ± {1.96 * values.std(ddof=1) / np.sqrt(len(values)):.3f} "
              f"(n = {len(values)})")


def raw_encoder(spec: str, jobs: list[Any]) -> None:
    """What the hardware allows: bare forwards of the encoder (no tokenising, no store, no AUROC) on the batches
    cold scoring runs, and on each explanation alone; prints the features/s these bound scoring to."""
    from explain.llm.embedder import SMALL_BATCH_TOKENS, Embedder, _threads
    from explain.scorers.embedding import query_text

    e = Embedder.from_spec(spec, None)
    windows = list(dict.fromkeys(x.text.strip() for _, ex in jobs for x in ex.scoring.examples))
    queries = [q for q in (query_text(expl) for expl, _ in jobs) if q]
    weights = sum(m.weight.numel() * m.weight.element_size() for m in e.model.modules()
                  if isinstance(m, torch.nn.Linear))

    def timed(texts: list[str]) -> tuple[int, int, float, float]:
        lengths = e._lengths(texts)
        encs = [e.tokenizer([texts[i] for i in b], padding=True, truncation=True, max_length=e.max_length,
                            return_tensors="pt") for b in e._batches(lengths)]
        with torch.inference_mode():
            e.model(**encs[0])  # warm-up
            start, cpu = time.perf_counter(), time.process_time()
            for enc in encs:  # the embedder's thread policy: a short batch on one thread
                with _threads(1 if enc["input_ids"].numel() <= SMALL_BATCH_TOKENS else None):
                    e.model(**enc)
            return sum(lengths), len(encs), time.perf_counter() - start, time.process_time() - cpu

    tok, nb, wall, cpu = timed(windows + queries)
    per_feature = (tok / len(jobs))
    print(f"\nMiniLM bare forward, the cold batches ({len(windows) + len(queries)} texts, {tok:,} tokens, {nb} batches, "
          f"{torch.get_num_threads()} threads): {tok / wall:,.0f} tokens/s wall, {tok / cpu:,.0f} tokens/s per CPU-second")
    print(f"  cold scoring runs {per_feature:,.0f} tokens/feature -> at most {tok / wall / per_feature:.1f} features/s "
          f"at this wall rate, {tok / cpu / per_feature:.1f} per CPU-second; 100 features/s cold would need "
          f"{100 * per_feature:,.0f} tokens/s")
    times = [timed([q]) for q in queries]
    w1 = sum(t[2] for t in times) / len(times)
    c1 = sum(t[3] for t in times) / len(times)
    qtok = sum(t[0] for t in times) / len(times)
    print(f"  one explanation alone ({qtok:.1f} tokens): {1e3 * w1:.1f} ms wall, {1e3 * c1:.1f} ms CPU per forward "
          f"(it reads the {weights / 2**20:.0f} MiB of linear weights: {weights / c1 / 2**30:.1f} GiB/s) -> "
          f"per-feature scoring at most {1 / w1:.0f} features/s wall, {1 / c1:.0f} per CPU-second")
    qt, qb, qw, qc = timed(queries)
    print(f"  all {len(queries)} explanations batched ({qt} tokens, {qb} batches): {1e3 * qw:.0f} ms wall, "
          f"{1e3 * qc:.0f} ms CPU -> batched warm scoring at most {len(queries) / qw:.0f} features/s wall, "
          f"{len(queries) / qc:.0f} per CPU-second")


def print_table(rows: list[dict[str, Any]]) -> None:
    sim = next((r["tokens"] for r in rows if r["scorer"] == "simulation"), None)
    print("| scorer | prompts/feat | tokens/feat | + prefixes | billed/feat | × simulation tokens | s/feat | features/s "
          "| CPU s/feat | features/CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['tokens'] / sim:.2f}" if sim else "–"
        billed = "–" if r["billed"] is None else f"{r['billed']:,.0f}"
        print(f"| {r['scorer']} | {r['prompts']:.1f} | {r['tokens']:,.0f} | {r['all']:,.0f} | {billed} | {ratio} | "
              f"{r['wall']:.3f} | {1 / r['wall']:.1f} | {r['cpu']:.3f} | {1 / r['cpu']:.1f} |")


if __name__ == "__main__":
    main()
