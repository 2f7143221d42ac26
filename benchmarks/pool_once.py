"""Pooled caches for several poolings from one forward pass (issue 25, item 6): run by hand, never by CI.

`cache --pool P` runs the model once per pooling; at the paper's scale
(10k leads, 38k tweets) on two shared CPU cores that doubles the hour the
encoder takes. This writes one file per pooling, in the format and with the
settings record `cache --pool P --dtype float32` writes (so `probe` and
`describe` read them, and `cache` with the same settings reports them
complete), from one pass over documents batched by length (less padding;
each row lands at its document's place, so the files keep corpus order).

    python benchmarks/pool_once.py --model minilm --corpus C.jsonl --hook blocks.5.hook_resid_post \
        --pools cls,mean --out-prefix runs/wiki_minilm        # -> runs/wiki_minilm_cls.h5, runs/wiki_minilm_mean.h5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activations.corpus import resolve_corpus  # noqa: E402
from activations.hooks import hook_width, run_with_cache, validate_hooks  # noqa: E402
from activations.models import load_model  # noqa: E402
from activations.pooled import _create, _pad_id, padded_batch, pool_hidden, tokenize_documents  # noqa: E402
from activations.settings import CacheSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--hook", required=True)
    parser.add_argument("--pools", default="cls,mean")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out-prefix", required=True)
    args = parser.parse_args()
    pools = args.pools.split(",")
    outs = {p: Path(f"{args.out_prefix}_{p}.h5") for p in pools}
    if all(o.exists() for o in outs.values()):
        print(f"{', '.join(map(str, outs.values()))} exist; nothing to do")
        return
    corpus = resolve_corpus(args.corpus, None)
    documents = list(corpus.records())
    loaded = load_model(args.model)
    point = next(p for p in validate_hooks(loaded.model, [args.hook]) if p.name == args.hook)
    widths = {args.hook: hook_width(loaded.model, point)}
    ids = tokenize_documents([d.text for d in documents], loaded.tokenizer, args.context_length)
    n = len(ids)
    order = np.argsort([len(r) for r in ids], kind="stable")
    pad = _pad_id(loaded.tokenizer)
    result = {p: np.zeros((n, widths[args.hook]), dtype=np.float32) for p in pools}
    started = time.perf_counter()
    with torch.inference_mode():
        for b, start in enumerate(range(0, n, args.batch_size)):
            rows = order[start:start + args.batch_size]
            tokens, mask = padded_batch([ids[i] for i in rows], pad)
            acts = run_with_cache(loaded.model, tokens, [args.hook], attention_mask=mask)[args.hook]
            for p in pools:
                result[p][rows] = pool_hidden(acts, mask, p).numpy()
            if b % 20 == 0:
                print(f"{start + len(rows)}/{n} documents, {time.perf_counter() - started:.0f}s", flush=True)
    for p, out in outs.items():
        settings = CacheSettings(model=args.model, corpus=args.corpus, hooks=[args.hook],
                                 context_length=args.context_length, batch_size=args.batch_size, dtype="float32",
                                 pool=p, out=str(out))
        _create(out, settings, settings.record(corpus.describe()), loaded, [d.id for d in documents], ids, widths)
        with h5py.File(out, "r+") as f:
            f["pooled"][args.hook][:] = result[p]
            f.attrs["n_contexts_done"] = n
    print(f"wrote {n} documents pooled by {', '.join(pools)} at {args.hook} in {time.perf_counter() - started:.1f}s "
          f"to {', '.join(map(str, outs.values()))}")


if __name__ == "__main__":
    main()
