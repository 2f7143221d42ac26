"""`cli.py evaluate`: metrics for many dictionaries at once, stored in each one's config.json.

Dictionaries on the same hook share one pass over the cache, and all of
them share one load of the subject model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from activations.errors import UserError
from sae.data import CacheSource, check_fits
from sae.io import load, update_metrics
from sae.metrics import mmcs, model_metrics, reconstruction_metrics
from sae.plot import plot_frontier

READ_BATCH = 4096
EVAL_SEED = 1234  # a fixed draw of evaluation tokens, so every dictionary sees the same ones


def evaluate_dictionaries(cache: str | Path, dicts: list[str], tokens: int = 200_000, mmcs_to: str | None = None,
                          model: str | None = None, no_model: bool = False, ce_contexts: int = 64,
                          plot: str | None = None, progress: bool = True, device: str = "cpu") -> list[dict]:
    if tokens < 1 or ce_contexts < 1:
        raise UserError("--tokens and --ce-contexts must be positive")
    if plot is not None and not str(plot).lower().endswith(".png"):
        raise UserError(f"--plot {plot} must name a .png file")
    loaded = [load(p) for p in dicts]
    reference = load(mmcs_to) if mmcs_to else None
    by_hook: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(loaded):
        if not d.hook:
            raise UserError(f"{dicts[i]} does not record its hook: re-create it with train-sae or baselines")
        by_hook[d.hook].append(i)
    sources = {hook: CacheSource(Path(cache), hook) for hook in by_hook}  # raises if a hook is missing
    for hook, idx in by_hook.items():
        for i in idx:
            check_fits(loaded[i], sources[hook].d_in, hook, sources[hook].model_id, f"cache {cache}")
    if reference is not None:
        for d in loaded:
            if reference.d_in != d.d_in:
                raise UserError(f"--mmcs-to {mmcs_to} has d_in={reference.d_in} but {d.name} has {d.d_in}: "
                                "compare dictionaries of the same hook")
    results: list[dict] = [{} for _ in loaded]
    for hook, idx in by_hook.items():
        source = sources[hook]
        n = min(tokens, source.n_tokens)
        batch = max(1, min(READ_BATCH, n))
        group = [loaded[i].to(device) for i in idx]
        stats = reconstruction_metrics(group, source.batches(batch, n, EVAL_SEED), device=device,
                                       progress=progress, desc=f"{hook}: {len(group)} dictionaries")
        for i, s in zip(idx, stats):
            results[i].update(s)
    if reference is not None:
        ref_dirs = reference.directions
        for i, d in enumerate(loaded):
            results[i]["mmcs"] = mmcs(d.directions.cpu(), ref_dirs.cpu())
            results[i]["mmcs_to"] = reference.name
    if not no_model:
        _model_metrics(cache, loaded, by_hook, results, model, ce_contexts, device, progress)
    rows = []
    for path, d, r in zip(dicts, loaded, results):
        update_metrics(path, {**r, "evaluated_on": str(Path(cache).resolve())})
        rows.append({"name": d.name, "kind": d.kind, "hook": d.hook, "n_features": d.n_features,
                     "ratio": d.config.get("ratio"), **r})
    print(format_table(rows))
    if plot:
        print(f"wrote {plot_frontier(rows, plot)}")
    return rows


def _model_metrics(cache, loaded, by_hook, results, model, ce_contexts, device, progress) -> None:
    from activations.models import load_model
    from activations.reader import ActivationCache

    with ActivationCache(cache) as c:
        count = min(ce_contexts, c.n_contexts)
        chosen = np.sort(np.random.default_rng(EVAL_SEED).choice(c.n_contexts, size=count, replace=False))
        ids = torch.from_numpy(c.tokens(chosen).astype(np.int64))
        keep_first = bool(c.bos_prepended)
        model_id = model or c.model_id
    lm = load_model(model_id, device=device)
    for hook, idx in by_hook.items():
        stats = model_metrics([loaded[i] for i in idx], lm.model, ids, hook, keep_first=keep_first,
                              device=device, progress=progress)
        for i, s in zip(idx, stats):
            results[i].update(s)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(rows: list[dict]) -> str:
    cols = [("name", "name", "s"), ("kind", "kind", "s"), ("F", "n_features", "d"), ("FVU", "fvu", ".4f"),
            ("L0", "l0", ".1f"), ("dead%", "dead_fraction", ".1%"), ("MMCS", "mmcs", ".3f"),
            ("KL", "kl", ".4f"), ("dCE", "ce_increase", ".4f")]
    cols = [c for c in cols if c[1] in ("name", "kind", "n_features") or any(c[1] in r for r in rows)]
    cells = [[h for h, _, _ in cols]] + [[_fmt(r.get(k), s) for _, k, s in cols] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) if j > 1 else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
