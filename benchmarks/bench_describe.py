"""Speed of descriptor discovery's two heavy steps (issue 14, item 10).

(1) Pooled caching (`cache --pool mean`) against a bare encoder forward pass
    over the same padded batches (all-MiniLM-L6-v2, Wikipedia leads, stopped
    after the same layer, nothing kept). Target: pooled / bare >= 0.9 in
    documents per second (the loop only; model loading and tokenizing are
    reported apart).
(2) Assignment (`describe`'s math: `--splits` stratified halves, one
    streaming top-k of the whole corpus from which every half's top documents
    are read, sparse frequencies, Jaccard per split; the paper's rule) for
    10k features x 100k documents of synthetic pooled vectors. Target: under
    a minute on this machine with 5 splits; there is no Python loop over
    features in it (the per-feature JSON records are timed apart).

Run by hand, never by CI:

    python benchmarks/bench_describe.py [--documents 512] [--features 10000] [--corpus-size 100000] [--splits 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activations.cache_writer import write_cache  # noqa: E402
from activations.corpus import resolve_corpus  # noqa: E402
from activations.hooks import StopForward, hooks_installed  # noqa: E402
from activations.models import load_model  # noqa: E402
from activations.pooled import padded_batch, tokenize_documents  # noqa: E402
from activations.settings import CacheSettings  # noqa: E402

HOOK = "blocks.5.hook_resid_post"


def bare_forward(model, ids: list[list[int]], pad: int, batch: int) -> float:
    """Seconds of the encoder alone over the same right-padded batches, stopped after HOOK, nothing kept."""
    start = time.perf_counter()
    with torch.inference_mode(), hooks_installed(model, {HOOK: lambda x: None}, stop_after=HOOK):
        for i in range(0, len(ids), batch):
            tokens, mask = padded_batch(ids[i:i + batch], pad)
            try:
                model(input_ids=tokens, attention_mask=mask, use_cache=False)
            except StopForward:
                pass
    return time.perf_counter() - start


def bench_pooling(n_docs: int, batch: int, context: int, repeats: int) -> dict:
    loaded = load_model("minilm")
    texts = []
    for doc in resolve_corpus("default").records():
        texts.append(doc.text)
        if len(texts) >= n_docs:
            break
    started = time.perf_counter()
    ids = tokenize_documents(texts, loaded.tokenizer, context)
    tokenize_s = time.perf_counter() - started
    pad = int(loaded.tokenizer.pad_token_id)
    bare, pooled = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            bare.append(bare_forward(loaded.model, ids, pad, batch))
            settings = CacheSettings(model="minilm", corpus="default", hooks=[HOOK], context_length=context,
                                     batch_size=batch, dtype="float16", pool="mean", max_documents=n_docs,
                                     out=str(Path(tmp) / f"p{r}.h5"))
            pooled.append(write_cache(settings, progress=False).seconds)
    best_bare, best_pooled = min(bare), min(pooled)
    return {"documents": n_docs, "tokens": sum(map(len, ids)), "tokenize_s": tokenize_s,
            "bare_docs_per_s": n_docs / best_bare, "pooled_docs_per_s": n_docs / best_pooled,
            "ratio": best_bare / best_pooled}


def bench_assignment(n_docs: int, n_features: int, d: int, n_descriptors: int, splits: int, seed: int = 0) -> dict:
    from explain.descriptors.assign import assign_top, base_rate, descriptor_matrix, jaccard_rows, repeated_halves
    from explain.descriptors.describe import _ENCODE_ROWS, track_top
    from sae.kinds.fitted import RandomBasis

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_docs, d)).astype(np.float32)
    w = torch.from_numpy(rng.normal(size=(n_features, d)).astype(np.float32) / np.sqrt(d))
    dictionary = RandomBasis({"W_enc": w, "b_enc": torch.full((n_features,), -1.0), "W_dec": w / w.norm(dim=1,
                              keepdim=True), "b_dec": torch.zeros(d)}, {"d_in": d, "n_features": n_features,
                                                                        "hook": HOOK})
    doc_desc = [sorted(set(rng.integers(0, n_descriptors, size=int(rng.integers(1, 4))).tolist()))
                for _ in range(n_docs)]
    cpu_started = time.process_time()
    started = time.perf_counter()
    matrix = descriptor_matrix(doc_desc, n_descriptors)
    halves = repeated_halves(doc_desc, n_descriptors, splits, seed)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    tops = track_top(dictionary, x, halves, top_percent=1.0)
    top_s = time.perf_counter() - started
    started = time.perf_counter()
    knobs = dict(threshold=0.2, frequency="occurrences")
    whole = assign_top(*tops.whole, matrix, base_rate(matrix, "occurrences"), **knobs)
    consistency = []
    for first, (a, b) in zip(halves, tops.halves):
        pair = [assign_top(*t, matrix, base_rate(matrix, "occurrences", np.flatnonzero(m)), **knobs)
                for t, m in ((a, first), (b, ~first))]
        consistency.append(jaccard_rows(pair[0].assigned, pair[1].assigned))
    assign_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    started = time.perf_counter()
    names = [f"d{v}" for v in range(n_descriptors)]
    records = [whole.ranked(j, names) for j in range(n_features)]
    records_s = time.perf_counter() - started
    jac = np.stack(consistency)
    return {"documents": n_docs, "features": n_features, "d": d, "descriptors": n_descriptors, "splits": splits,
            "encode_block_rows": _ENCODE_ROWS, "setup_s": setup_s, "encode_and_topk_s": top_s, "assign_s": assign_s,
            "total_s": setup_s + top_s + assign_s, "cpu_s": cpu_s, "threads": torch.get_num_threads(),
            "records_s": records_s, "exact_second_pass": tops.exact,
            "described": float(np.mean([bool(r) for r in records])),
            "consistency_mean": float(np.nanmean(jac)) if np.isfinite(jac).any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=512, help="documents pooled in part (1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--features", type=int, default=10_000)
    parser.add_argument("--corpus-size", type=int, default=100_000, help="documents in part (2)")
    parser.add_argument("--descriptors", type=int, default=500)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--skip-pooling", action="store_true")
    parser.add_argument("--skip-assignment", action="store_true")
    args = parser.parse_args()
    if not args.skip_pooling:
        p = bench_pooling(args.documents, args.batch_size, args.context_length, args.repeats)
        print(f"(1) pooled caching, all-MiniLM-L6-v2 mean pool at {HOOK}, {p['documents']} documents "
              f"({p['tokens']} tokens; tokenizing {p['tokenize_s']:.2f}s): bare forward {p['bare_docs_per_s']:.1f} "
              f"docs/s, cache --pool {p['pooled_docs_per_s']:.1f} docs/s, ratio {p['ratio']:.2f} (target >= 0.9)")
    if args.skip_assignment:
        return
    a = bench_assignment(args.corpus_size, args.features, 384, args.descriptors, args.splits)
    print(f"(2) assignment, {a['features']} features x {a['documents']} documents, {a['descriptors']} descriptors, "
          f"{a['splits']} splits: setup (matrix + stratified halves) {a['setup_s']:.1f}s, encode + streaming top-k "
          f"(whole, halves read from it; {a['exact_second_pass']} features needed the exact second pass) "
          f"{a['encode_and_topk_s']:.1f}s, frequencies/Jaccard {a['assign_s']:.1f}s, total {a['total_s']:.1f}s "
          f"(target < 60s; CPU time of this process {a['cpu_s']:.1f}s on {a['threads']} threads); "
          f"per-feature records {a['records_s']:.1f}s; {a['described']:.0%} described")


if __name__ == "__main__":
    main()
