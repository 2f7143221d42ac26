"""How `bench_frontier.py` starts the sparsify worker, and the interleaved step-loop speed comparison.

The worker runs in `--reference-python` (frontier_sparsify.py, a script); the
speed comparison alternates our step loop and the worker's so that machine
load hits both alike.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

from frontier_sparsify import SPEED_WARMUP
from frontier_tables import hook_of

REPO = Path(__file__).resolve().parents[1]


def sparsify_spec(args, cache: Path, layer: int, batch: int, tokens: int) -> dict:
    from sae.data import split_cache
    from sae.kinds.stack import n_features_for

    train, held = split_cache(cache, hook_of(layer), args.eval_fraction, skip_first=True, sink_factor=args.sink_factor)
    return {"cache": str(cache), "hook": hook_of(layer), "max_norm": train.max_norm, "ks": list(args.ks), "batch_size": batch, "tokens": tokens,
            "num_latents": n_features_for(args.ratio, train.d_in), "seed": args.seed, "lr": args.reference_lr,
            "auxk_alpha": args.reference_auxk_alpha, "dead_feature_threshold": args.reference_dead_tokens,
            "threads": args.threads, "train_contexts": list(train.contexts), "eval_contexts": list(held.contexts)}


def run_worker(args, spec: dict, capture: bool = False) -> str:
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([args.reference_python, str(Path(__file__).resolve().parent / "frontier_sparsify.py"), json.dumps(spec)],
                          check=True, cwd=REPO, env=env, capture_output=capture, text=True)
    return done.stdout if capture else ""


def ours_speed(args, cache: Path, layer: int, batch: int, steps: int) -> float:
    """Seconds of `steps` steps of our TopK sweep (all --ks in one stack) on batches already in memory.

    The same objects and calls as `sae.train._Loop.run` (build_groups, build_optimizer, Stepper, set_lr with
    the schedule), without its data reading, NaN checks every 20 steps and progress bar.
    """
    import torch

    from activations.reader import ActivationCache
    from sae.data import split_cache
    from sae.settings import TrainSettings
    from sae.step import Stepper, lr_factor, set_lr
    from sae.train import build_groups, build_optimizer

    train, _ = split_cache(cache, hook_of(layer), args.eval_fraction, skip_first=True, sink_factor=0)
    with ActivationCache(cache) as c:
        data = list(c.iter_batches(hook_of(layer), batch, n_tokens=(steps + SPEED_WARMUP) * batch, seed=args.seed,
                                   contexts=train.contexts, skip_first=True))
    settings = TrainSettings(hook=hook_of(layer), kind="topk", ks=list(args.ks), ratios=[args.ratio], batch_size=batch,
                             tokens=len(data) * batch, cache=str(cache), out="unused")
    scale = math.sqrt(train.d_in) / float(torch.cat(data).norm(dim=-1).mean())
    groups = build_groups(settings, train.d_in, "cpu", data_mean=torch.cat(data).mean(0) * scale)
    optimizer = build_optimizer(groups, settings, "cpu")
    stepper = Stepper(groups, optimizer, "cpu")
    started = 0.0
    for step, x in enumerate(data):
        if step == SPEED_WARMUP:
            started = time.perf_counter()
        set_lr(optimizer, settings.learning_rate * lr_factor(step, settings.steps, *settings.schedule))
        stepper(x * scale)
    return time.perf_counter() - started


def speed_compare(args, cache: Path, layer: int) -> str:
    """Interleaved rounds (ours, sparsify, ours, ...) of the step loop alone, so machine load hits both alike."""
    import statistics

    lines = ["### Step-loop speed, interleaved (tokens/s per model)", "",
             f"{args.speed_rounds} alternating rounds of {args.speed_steps} steps each (after {SPEED_WARMUP} untimed), "
             f"layer {layer}, k = {list(args.ks)} ({len(args.ks)} models per run), batches in memory, "
             f"{args.threads} torch threads; median over rounds (min–max in brackets).", "",
             f"| batch | ours (TopK sweep) | sparsify ({len(args.ks)} SparseCoders, one optimiser) | ours ÷ sparsify |",
             "|---:|---:|---:|---:|"]
    for batch in args.speed_batches:
        ours, ref = [], []
        for _ in range(args.speed_rounds):
            tokens = args.speed_steps * batch * len(args.ks)
            ours.append(tokens / ours_speed(args, cache, layer, batch, args.speed_steps))
            spec = {**sparsify_spec(args, cache, layer, batch, args.speed_steps * batch), "mode": "speed"}
            rec = json.loads(run_worker(args, spec, capture=True).strip().splitlines()[-1])
            ref.append(rec["steps"] * batch * len(args.ks) / rec["seconds"])
            print(f"  speed batch {batch}: ours {ours[-1]:,.0f}, sparsify {ref[-1]:,.0f} tokens/s per model", flush=True)
        mo, mr = statistics.median(ours), statistics.median(ref)
        lines.append(f"| {batch} | {mo:,.0f} ({min(ours):,.0f}–{max(ours):,.0f}) | {mr:,.0f} ({min(ref):,.0f}–"
                     f"{max(ref):,.0f}) | {mo / mr:.2f} |")
    return "\n".join(lines)
