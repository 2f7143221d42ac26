"""Throughput of the cache command against the two obvious alternatives.

(a) the bare forward pass, stopped after the same layer, nothing kept;
(b) the cache command's own path (hooks, early stop, fp16 conversion, HDF5 writes, flushes);
(c) `output_hidden_states=True` over the whole model plus writing the same arrays.

Targets: b/a >= 0.9 (caching costs little over the forward pass) and b/c >= 1.5
(stopping early and hooking beats the naive way). Run:

    python benchmarks/bench_cache.py [--tokens 32768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activations.cache_writer import write_cache  # noqa: E402
from activations.corpus import build_contexts, resolve_corpus  # noqa: E402
from activations.hooks import StopForward, hook_name, hooks_installed  # noqa: E402
from activations.models import load_model  # noqa: E402
from activations.settings import CacheSettings  # noqa: E402

LAYER = 2
HOOKS = [hook_name(LAYER, "hook_resid_pre"), hook_name(LAYER, "hook_resid_post")]


def bare_forward(model, tokens: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode(), hooks_installed(model, {HOOKS[-1]: lambda x: None}, stop_after=HOOKS[-1]):
        for i in range(0, len(tokens), batch):
            try:
                model(input_ids=torch.from_numpy(tokens[i:i + batch]).long(), use_cache=False)
            except StopForward:
                pass
    return time.perf_counter() - start


def hidden_states_and_write(model, tokens: np.ndarray, batch: int, path: Path) -> float:
    start = time.perf_counter()
    n, ctx = tokens.shape
    d = model.config.hidden_size
    with h5py.File(path, "w") as f, torch.inference_mode():
        sets = [f.create_dataset(h, shape=(n, ctx, d), dtype=np.float16, chunks=(8, ctx, d)) for h in HOOKS]
        f.create_dataset("tokens", data=tokens)
        for i in range(0, n, batch):
            out = model(input_ids=torch.from_numpy(tokens[i:i + batch]).long(), output_hidden_states=True, use_cache=False)
            for ds, index in zip(sets, (LAYER, LAYER + 1)):
                ds[i:i + batch] = out.hidden_states[index].numpy().astype(np.float16)
            f.flush()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)

    loaded = load_model("default")
    tokens, _ = build_contexts(resolve_corpus("default").documents(), loaded.tokenizer, args.context_length,
                               args.tokens // args.context_length)
    n_tok = tokens.size
    rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved, so background load hits all three alike
            rates["a"].append(n_tok / bare_forward(loaded.model, tokens, args.batch_size))
            settings = CacheSettings(model="default", corpus="default", hooks=HOOKS, context_length=args.context_length,
                                     max_tokens=args.tokens, batch_size=args.batch_size, dtype="float16",
                                     out=str(Path(tmp) / f"b{r}.h5"))
            result = write_cache(settings, progress=False)  # what `cli.py cache` runs
            rates["b"].append(result.tokens_written / result.seconds)
            rates["c"].append(n_tok / hidden_states_and_write(loaded.model, tokens, args.batch_size, Path(tmp) / f"c{r}.h5"))
    best = {k: max(v) for k, v in rates.items()}
    print(f"model default (SmolLM2-135M, 30 layers), hooks {','.join(HOOKS)}, fp16, {n_tok} tokens, "
          f"context {args.context_length}, batch {args.batch_size}, torch threads 2, best of {args.repeats}")
    print(f"(a) bare forward stopped at layer {LAYER}: {best['a']:9.0f} tokens/s")
    print(f"(b) cache command path:                {best['b']:9.0f} tokens/s")
    print(f"(c) output_hidden_states + write:      {best['c']:9.0f} tokens/s")
    print(f"b/a = {best['b'] / best['a']:.2f} (target >= 0.9)   b/c = {best['b'] / best['c']:.2f} (target >= 1.5)")


if __name__ == "__main__":
    main()
