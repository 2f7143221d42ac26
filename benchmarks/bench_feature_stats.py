"""How long the feature-page numbers of ~10k features take (`report.feature_stats.summarize_dictionaries`), and their size.

Issue 16's target: 10,000 features of one dictionary summarised and written
as a report in under 60 s on the 2-core machine (this half: summarising,
aimed at <= ~35 s). The dictionary is a TopK SAE (k = 32) that is *not
trained*: its decoder rows are unit vectors of randomly chosen cache tokens
minus the mean (the encoder is the same matrix, b_dec the mean), so each
feature fires on tokens like its seed token, as trained features fire on
related tokens, and the encode cost is a trained SAE's: the full
[tokens × d_in] @ [d_in × n_features] product plus top-k. Training a 10k SAE
on 2 cores takes far longer than the thing measured.

    python benchmarks/bench_feature_stats.py --cache /tmp/frags_L3.h5 --hook blocks.3.hook_resid_post

makes the cache first when it does not exist (the default model, Wikipedia
fragments: `cli.py cache --model default --corpus default --hooks HOOK
--context-length 64 --max-tokens 96000 --batch-size 64 --dtype float16 --fragments`),
then prints wall time, time per stage, peak RSS and the summaries' JSON size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_cache(path: Path, hook: str, max_tokens: int) -> None:
    from activations.cache_writer import cache_activations

    cache_activations(model="default", corpus="default", hooks=[hook], context_length=64, max_tokens=max_tokens,
                      batch_size=64, dtype="float16", fragments=True, out=path, progress=True)


def make_dictionary(cache_path: Path, hook: str, n_features: int, k: int, folder: Path, seed: int = 0) -> Path:
    """An untrained TopK SAE whose rows are unit (token - mean) vectors of random cache tokens (see the docstring)."""
    import numpy as np
    import torch

    from activations.reader import ActivationCache
    from sae.kinds.topk import TopKSAE

    with ActivationCache(cache_path) as cache:
        rng = np.random.default_rng(seed)
        contexts = np.sort(rng.choice(cache.n_contexts, size=min(cache.n_contexts, 512), replace=False))
        x = torch.from_numpy(cache.acts(hook, contexts)).reshape(-1, cache.width(hook))
        model_id = cache.model_id
    mean = x.mean(dim=0)
    rows = x[torch.from_numpy(rng.choice(x.shape[0], size=n_features, replace=x.shape[0] < n_features))] - mean
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-6)
    tensors = {"W_e": rows, "b_e": torch.zeros(n_features), "W_d": rows.clone(), "b_d": mean}
    config = {"hook": hook, "model_id": model_id, "d_in": int(x.shape[1]), "n_features": n_features, "k": k,
              "note": "benchmark dictionary: untrained, rows are random cache tokens minus the mean"}
    return TopKSAE(tensors, config).save(folder)


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The cache and dictionary options `bench_report.py` shares, so both benchmarks measure the same thing."""
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_feature_stats_L3.h5")
    parser.add_argument("--hook", default="blocks.3.hook_resid_post")
    parser.add_argument("--max-tokens", type=int, default=96_000, help="tokens of the cache made when it is missing")
    parser.add_argument("--n-features", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)


def prepare(args: argparse.Namespace) -> None:
    """Set the thread count and make the cache when it is missing (shared with bench_report.py)."""
    import torch

    torch.set_num_threads(args.threads)
    if not args.cache.exists():
        t = time.perf_counter()
        make_cache(args.cache, args.hook, args.max_tokens)
        print(f"made {args.cache} in {time.perf_counter() - t:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_arguments(parser)
    parser.add_argument("--batch-contexts", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="also write the summaries' JSON here")
    args = parser.parse_args()
    prepare(args)
    from report.feature_stats import SummaryConfig, summarize_dictionaries

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = make_dictionary(args.cache, args.hook, args.n_features, args.k, Path(tmp) / "topk_bench")
        print(f"dictionary: {args.n_features} features, k={args.k}, made in {time.perf_counter() - t:.1f}s")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        summaries, skipped = summarize_dictionaries(args.cache, [folder], progress=False, timings=timings,
                                                    config=SummaryConfig(batch_contexts=args.batch_contexts))
        wall = time.perf_counter() - t
    s = summaries[0]
    t = time.perf_counter()
    text = json.dumps(s.to_json(), separators=(",", ":"))
    dump = time.perf_counter() - t
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_examples = sum(len(f.top) + sum(len(q.examples) for q in f.quantiles) for f in s.features)
    alive = sum(f.density > 0 for f in s.features)
    print(f"cache: {args.cache.name}, {s.n_tokens} tokens counted, {len(s.fragments)} fragments used")
    print(f"features: {len(s.features)} ({alive} ever active), examples: {n_examples}, skipped: {skipped}")
    print(f"summarise wall: {wall:.1f}s with {args.threads} thread(s)")
    print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print(f"peak RSS: {peak:.0f} MiB; summaries JSON {len(text) / 1e6:.1f} MB (json.dumps {dump:.1f}s)")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")


if __name__ == "__main__":
    main()
