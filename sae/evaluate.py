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

from common.errors import UserError
from common.notes import clipped_line
from sae.data import check_fits, split_cache
from sae.ground_truth import ground_truth_metrics
from sae.io import load, update_metrics
from sae.metrics import density_histogram, mmcs, model_metrics, quality_warnings, reconstruction_metrics
from sae.plot import plot_density, plot_frontier
from sae.settings import EvaluateSettings

READ_BATCH = 4096
EVAL_SEED = 1234  # a fixed draw of evaluation tokens, so every dictionary sees the same ones


def evaluate_dictionaries(cache: str | Path, dicts: list[str], tokens: int = 200_000, mmcs_to: str | None = None,
                          model: str | None = None, no_model: bool = False, ce_contexts: int = 64,
                          plot: str | None = None, progress: bool = True, device: str = "cpu",
                          eval_fraction: float | None = None, keep_first_position: bool = False,
                          density_plot: str | None = None,
                          sink_factor: float = EvaluateSettings.sink_factor,
                          allow_model_mismatch: bool = False) -> list[dict]:
    """Measure every dictionary on the cache's held-out contexts and store the metrics in its config.json.

    `eval_fraction` None takes the split the dictionaries were trained with
    (so the held-out tokens are the ones training never saw); a dictionary
    whose training contexts overlap the measured ones gets a warning, in the
    console and in its metrics. Each dictionary is checked against the cache's
    model and the KL/CE model before any metric (`activations.provenance`);
    the outcome is stored as its metrics' "pairing".
    """
    for flag, value in (("--tokens", tokens), ("--ce-contexts", ce_contexts)):
        if value < 1:  # each named alone: an error names only the flag that is wrong
            raise UserError(f"{flag} {value} must be positive")
    for flag, path in (("--plot", plot), ("--density-plot", density_plot)):
        if path is not None and not str(path).lower().endswith(".png"):
            raise UserError(f"{flag} {path} must name a .png file")
    loaded = [load(p) for p in dicts]
    reference = load(mmcs_to) if mmcs_to else None
    fraction = _eval_fraction(loaded, eval_fraction)
    skip_first = not keep_first_position
    by_hook: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(loaded):
        if not d.hook:
            raise UserError(f"{dicts[i]} does not record its hook: re-create it with train-sae or baselines")
        by_hook[d.hook].append(i)
    sources = {}
    for hook in by_hook:  # raises if a hook is missing
        train_part, held_out = split_cache(cache, hook, fraction, skip_first=skip_first, sink_factor=sink_factor)
        sources[hook] = held_out if held_out is not None else train_part
    pairings: list[list[dict]] = [[] for _ in loaded]
    for hook, idx in by_hook.items():
        for i in idx:
            pairings[i].append(check_fits(loaded[i], sources[hook].d_in, hook, sources[hook].model, f"cache {cache}",
                                          allow=allow_model_mismatch))
    lm = None if no_model else _subject_model(cache, model, device)
    if lm is not None:
        from activations.provenance import check_pairing, loaded_record

        used_on = loaded_record(lm)
        for i, d in enumerate(loaded):
            pairings[i].append(check_pairing(d, used_on, f"--model {lm.model_id}", allow=allow_model_mismatch))
    if reference is not None:
        for d in loaded:
            if reference.d_in != d.d_in:
                raise UserError(f"--mmcs-to {mmcs_to} has d_in={reference.d_in} but {d.name} has {d.d_in}: "
                                "compare dictionaries of the same hook")
    results: list[dict] = [{"pairing": p} for p in pairings]
    for hook, idx in by_hook.items():
        source = sources[hook]
        n = min(tokens, source.n_tokens)
        if tokens > source.n_tokens:
            print(clipped_line("--tokens", tokens, source.n_tokens, f"measured tokens of {hook} in the cache"))
        batch = max(1, min(READ_BATCH, n))
        group = [loaded[i].to(device) for i in idx]
        stats = reconstruction_metrics(group, source.batches(batch, n, EVAL_SEED), device=device,
                                       progress=progress, desc=f"{hook}: {len(group)} dictionaries")
        measured = {"split": "held-out" if fraction > 0 else "all (no held-out split)",
                    "contexts": source.info["contexts"], "position_0": source.info["position_0"],
                    "sink_norm_limit": source.max_norm}
        for i, st in zip(idx, stats):
            st["density"] = density_histogram(st.pop("firing_rates"))
            results[i].update(st, measured_on={**measured, "n_tokens": st["eval_tokens"]})
            overlap = _trained_on(loaded[i], cache, source.info["contexts"])
            results[i]["warnings"] = quality_warnings(st) + ([overlap] if overlap else [])
            for warning in results[i]["warnings"]:
                print(f"warning: {loaded[i].name}: {warning}")
        recovery = ground_truth_metrics(group, cache, hook, tuple(source.info["contexts"]), n, skip_first,
                                        max_norm=source.max_norm, device=device)
        for i, st in zip(idx, recovery or []):  # a planted or synthetic cache: how well the true features are found
            results[i].update(st)
    if reference is not None:
        ref_dirs = reference.directions
        for i, d in enumerate(loaded):
            results[i]["mmcs"] = mmcs(d.directions.cpu(), ref_dirs.cpu())
            results[i]["mmcs_to"] = reference.name
    if not no_model:
        contexts = {hook: sources[hook].info["contexts"] for hook in by_hook}
        limits = {hook: sources[hook].max_norm for hook in by_hook}
        _model_metrics(cache, loaded, by_hook, results, lm, ce_contexts, device, progress, contexts, skip_first,
                       limits)
    rows = []
    for path, d, r in zip(dicts, loaded, results):
        if d.config.get("source"):  # a SAELens / sparsify folder: read-only here (see sae.foreign)
            print(f"note: {path} is a {d.config['source'].get('library', 'foreign')} folder; its metrics are printed, "
                  "not stored (save a copy of ours with sae.load(folder).save(new_folder) to keep them)")
        else:
            update_metrics(path, {**r, "evaluated_on": str(Path(cache).resolve())})
        rows.append({"name": d.name, "kind": d.kind, "hook": d.hook, "n_features": d.n_features,
                     "ratio": d.config.get("ratio"), **r})
    print(format_table(rows))
    if plot:
        print(f"wrote {plot_frontier(rows, plot)}")
    if density_plot:
        print(f"wrote {plot_density(rows, density_plot)}")
    return rows


def _eval_fraction(loaded: list, eval_fraction: float | None) -> float:
    if eval_fraction is not None:
        if not 0 <= eval_fraction < 1:
            raise UserError(f"--eval-fraction {eval_fraction} must be in [0, 1)")
        return float(eval_fraction)
    recorded = [(d.config.get("training") or d.config.get("fit") or {}).get("eval_fraction") for d in loaded]
    known = [float(f) for f in recorded if f is not None]
    # the smallest recorded split: its contexts were held out from every dictionary that records one
    return min(known) if known else 0.1


def _trained_on(d, cache: str | Path, measured: list[int]) -> str | None:
    """Why the measured contexts are not held out for `d` (same cache, overlapping training contexts), or None."""
    data = d.config.get("data") or {}
    if not data.get("cache") or Path(data["cache"]) != Path(cache).resolve():
        return None
    trained = data.get("contexts") or [0, 1 << 62]  # made before splits were recorded: trained on all of it
    if int(trained[0]) < int(measured[1]) and int(measured[0]) < int(trained[1]):
        return (f"it was trained or fitted on contexts {trained[0]}..{trained[1] - 1} of this cache, which overlap the "
                f"measured {measured[0]}..{measured[1] - 1}: these metrics include training tokens")
    return None


def _subject_model(cache, model: str | None, device: str):
    """The KL/CE model (--model, else the cache's), loaded before any metric so its pairing is checked first."""
    from activations.models import load_model
    from activations.reader import ActivationCache

    with ActivationCache(cache) as c:
        model_id = model or c.model_id
    return load_model(model_id, device=device)


def _model_metrics(cache, loaded, by_hook, results, lm, ce_contexts, device, progress, contexts,
                   skip_first: bool, limits: dict[str, float | None]) -> None:
    from activations.reader import ActivationCache

    per_hook_ids = {}
    with ActivationCache(cache) as c:
        keep_first = bool(c.bos_prepended) or skip_first
        for hook, (lo, hi) in contexts.items():
            count = min(ce_contexts, hi - lo)
            if ce_contexts > hi - lo:
                print(clipped_line("--ce-contexts", ce_contexts, hi - lo, "measured contexts of the cache"))
            chosen = lo + np.sort(np.random.default_rng(EVAL_SEED).choice(hi - lo, size=count, replace=False))
            per_hook_ids[hook] = torch.from_numpy(c.tokens(chosen).astype(np.int64))
    for hook, idx in by_hook.items():
        stats = model_metrics([loaded[i] for i in idx], lm.model, per_hook_ids[hook], hook, keep_first=keep_first,
                              device=device, progress=progress, max_norm=limits.get(hook))
        for i, st in zip(idx, stats):
            results[i].update(st)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(rows: list[dict]) -> str:
    cols = [("name", "name", "s"), ("kind", "kind", "s"), ("F", "n_features", "d"), ("FVU", "fvu", ".4f"),
            ("EV", "explained_variance", ".4f"), ("L0", "l0", ".1f"), ("dead%", "dead_fraction", ".1%"),
            ("twin L0%", "twin_l0_share", ".1%"),
            ("MMCS", "mmcs", ".3f"), ("true MMCS", "truth_mmcs", ".3f"), ("F1", "truth_f1", ".3f"),
            ("MCC", "truth_mcc", ".3f"), ("KL", "kl", ".4f"), ("dCE", "ce_increase", ".4f"),
            ("CE rec", "ce_loss_recovered", ".3f"), ("KL rec", "kl_recovered", ".3f")]
    cols = [c for c in cols if c[1] in ("name", "kind", "n_features") or any(c[1] in r for r in rows)]
    cells = [[h for h, _, _ in cols]] + [[_fmt(r.get(k), s) for _, k, s in cols] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) if j > 1 else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
