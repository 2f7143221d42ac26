"""Per-feature numbers of the report's feature pages (`report.feature_summary`), from one pass over the cache per hook.

What is counted, and why it agrees with the explain stage: tokens are the
cache's contexts without the BOS position when the cache prepended one
(`explain.exemplars` excludes it too), encoded with the dictionary's own
`encode`, so a feature's examples here and its exemplars there come from the
same numbers. A token is active when its code is > 0; density = active
tokens / tokens counted (`DictionarySummaries.n_tokens`).

The pass (per hook, every dictionary of that hook sharing it): per batch of
contexts each dictionary encodes the batch once and keeps only its non-zero
codes, as (token, feature, value) triplets: a TopK SAE straight from its
top-k (the dense [tokens × features] code is never built), an affine-ReLU
one from only the summarised features' rows of W, any other kind from
`encode` (see `BatchCodes`). From the triplets: active counts, the maximum per (context,
feature), and, while they fit the memory budget, the triplets themselves.
Those answer everything else without a second pass: the histogram and each
example's per-token activations. A dense basis whose triplets overflow the
budget gets one more pass over the cache for the histogram and examples.

Memory bound (`SummaryConfig.memory_bytes`, default 1 GiB): half for the
per-context maxima (float32 [n_contexts × features]; more features than fit
are split into several passes), half for the stored triplets (12 bytes each).
Plus one batch of codes (batch_contexts × context length × n_features floats)
and the returned examples themselves.

Selection per feature, from its per-context maxima (only contexts where the
feature is active qualify):

* **top**: the `n_top` contexts with the largest maximum (ties by context index);
* **quantiles**: `n_quantiles` equal-width bins of the activation value over
  (0, max] (as sae_vis does, not equal-mass: the bins show what the feature
  does at low, middle and high strength, however rare), each with up to
  `per_quantile` contexts whose maximum lies in (lo, hi], drawn without
  replacement by a generator seeded with (seed, feature) alone, shown by
  maximum descending; contexts already among the top are not drawn again;
* **histogram**: `hist_bins` equal-width bins of (0, max] over every non-zero
  token activation (a bin holds (lo, hi]); counts sum to the active tokens.
  A never-active feature has no bins and no examples.

Logit effects (`sae.logit_effects`) are computed for dictionaries on a
d_model hook (resid_pre / resid_post / mlp_out) when the model has an LM
head; other dictionaries get empty lists. Neighbours: the other features
with the largest decoder cosine, kept only above 1e-4: orthogonal and
opposite directions are no neighbours, so an orthonormal basis (neuron,
PCA, random) shows none rather than arbitrary features tied at cosine 0.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.errors import UserError
from report.feature_codes import BatchCodes
from report.feature_select import example_pairs, example_rows, histograms, n_shown, select
from report.feature_summary import DictionarySummaries, Example, FeatureSummary, Quantile

D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out")
MIN_NEIGHBOUR_COSINE = 1e-4  # float32 round-off of orthogonal unit rows is ~1e-7
_TRIPLET_BYTES = 12  # int32 token, int32 feature, float32 value


@dataclass
class SummaryConfig:
    """What a feature page shows of each feature, and the resources spent finding it (serialisable: `asdict`)."""

    n_top: int = 10  # top examples
    n_quantiles: int = 5  # activation quantile bins of (0, max]
    per_quantile: int = 3  # examples per bin
    n_logits: int = 10  # promoted / suppressed tokens
    n_neighbours: int = 5  # by decoder cosine
    hist_bins: int = 24
    seed: int = 0
    batch_contexts: int = 32  # contexts encoded at once
    memory_bytes: int = 1 << 30  # bound on the maxima + stored codes (see the module docstring)
    digits: int = 3  # decimals the example activations are rounded to (pages and files stay small)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 1 if f.name in ("batch_contexts", "memory_bytes", "hist_bins") else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"summary setting {f.name}={value!r} must be an integer >= {low}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Chunk:
    """Features [lo, hi) of one dictionary, summarised in one pass, and what the pass gathered for them."""

    member: int  # index into the hook's dictionaries
    lo: int
    hi: int
    counts: np.ndarray | None = None  # [n] active tokens
    maxima: np.ndarray | None = None  # [n_contexts, n] max activation per context
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None  # stored triplets; None once over budget
    maxima_t: np.ndarray | None = None  # maxima transposed: [n, n_contexts]
    selection: list[Any] | None = None  # per feature, its feature_select.Selection

    @property
    def n(self) -> int:
        return self.hi - self.lo


def summarize_dictionaries(cache: str | Path, dictionaries: Sequence[str | Path], *, features: int | None = None,
                           config: SummaryConfig = SummaryConfig(), progress: bool = True,
                           timings: dict[str, float] | None = None, allow_model_mismatch: bool = False,
                           pairings: list[dict] | None = None
                           ) -> tuple[list[DictionarySummaries], list[tuple[str, str]]]:
    """Per dictionary folder, the summaries of its first `features` features (None: all), from one pass over the
    cache per hook; the second list names dictionaries that could not be summarised from this cache and why
    (e.g. (name, "hook blocks.5.hook_resid_post is not in cache_frags.h5")). Bad input (unreadable cache,
    a dictionary of another model than the cache's) -> UserError, one line.

    `timings`, when given, receives the seconds spent per stage (encode, examples, logits, ...).
    `pairings`, when given, receives each usable dictionary's pairing with the cache's model
    (`activations.provenance.check_pairing`; a mismatch is refused unless `allow_model_mismatch`).
    """
    import sae
    from activations.provenance import record_of
    from activations.reader import ActivationCache
    from sae.data import check_fits

    config.validate()
    if features is not None and (isinstance(features, bool) or not isinstance(features, int) or features < 1):
        raise UserError(f"features={features!r} must be a positive number of features, or None for all")
    clock = _Clock(timings)
    path = Path(cache)
    with ActivationCache(path) as c:
        loaded = [sae.load(p) for p in dictionaries]
        usable, skipped = [], []
        for d in loaded:
            if d.hook not in c.hooks:
                skipped.append((d.name, f"hook {d.hook} is not in {path.name} (it has {', '.join(c.hooks)})"))
                continue
            entry = check_fits(d, c.width(d.hook), d.hook, record_of(c.attrs), f"cache {path.name}",
                               allow=allow_model_mismatch)
            if pairings is not None:
                pairings.append(entry)
            usable.append(d)
        if not usable:
            return [], skipped
        decoder, unembed = _model_parts(c, usable, clock)
        summaries: dict[int, DictionarySummaries] = {}
        for hook in dict.fromkeys(d.hook for d in usable):
            members = [d for d in usable if d.hook == hook]
            for d, summary in zip(members, _summarize_hook(c, hook, members, features, config, decoder, progress,
                                                          clock)):
                summaries[id(d)] = summary
        for d in usable:
            _add_directions(d, summaries[id(d)], unembed, decoder, config, clock)
    return [summaries[id(d)] for d in usable], skipped


class _Clock:
    """Adds elapsed seconds per stage into the caller's dict (or nowhere)."""

    def __init__(self, into: dict[str, float] | None):
        self.into = into
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[stage] = self.into.get(stage, 0.0) + now - self.t
        self.t = now


def _model_parts(cache: Any, dictionaries: list[Any], clock: _Clock) -> tuple[Any, torch.Tensor | None]:
    """The token decoder, and the folded unembedding when some dictionary is on a d_model hook (else None)."""
    from activations.hooknames import parse_hook
    from explain.exemplars import TokenDecoder

    if not any(parse_hook(d.hook).kind in D_MODEL_HOOKS for d in dictionaries):
        decoder = TokenDecoder.for_cache(cache)
        clock.lap("model")
        return decoder, None
    from activations.models import load_model
    from sae.logit_effects import unembedding

    stored = str(cache.attrs.get("model_source", "") or "")
    loaded = load_model(stored if stored and Path(stored).exists() else cache.model_id)
    unembed = unembedding(loaded.model)  # a copy: the model itself is freed on return
    clock.lap("model")
    return TokenDecoder(loaded.tokenizer), unembed


# -- the pass over the cache -----------------------------------------------------------------------

def _plan_chunks(members: list[Any], features: int | None, n_contexts: int, config: SummaryConfig
                 ) -> list[list[_Chunk]]:
    """Passes of chunks whose maxima fit half the memory budget (most often: one pass, one chunk per dictionary)."""
    cap = max(1, (config.memory_bytes // 2) // (4 * n_contexts))
    chunks = []
    for m, d in enumerate(members):
        n = d.n_features if features is None else min(features, d.n_features)
        chunks += [_Chunk(m, lo, min(n, lo + cap)) for lo in range(0, n, cap)]
    passes: list[list[_Chunk]] = [[]]
    for ch in chunks:
        if passes[-1] and sum(x.n for x in passes[-1]) + ch.n > cap:
            passes.append([])
        passes[-1].append(ch)
    return passes


def _summarize_hook(cache: Any, hook: str, members: list[Any], features: int | None, config: SummaryConfig,
                    decoder: Any, progress: bool, clock: _Clock) -> list[DictionarySummaries]:
    first = 1 if cache.bos_prepended else 0
    length = cache.context_length - first
    n_tokens = cache.n_contexts * length
    out = [DictionarySummaries(name=d.name, kind=d.kind, hook=hook, n_tokens=n_tokens) for d in members]
    for chunks in _plan_chunks(members, features, cache.n_contexts, config):
        _first_pass(cache, hook, members, chunks, first, config, progress)
        clock.lap("encode")
        for ch in chunks:
            ch.maxima_t = np.ascontiguousarray(ch.maxima.T)  # [n, n_contexts]: one feature's column is a row
            ch.selection = [select(ch.maxima_t[j], ch.lo + j, config) for j in range(ch.n)]
        clock.lap("select")
        fallback = [ch for ch in chunks if ch.parts is None]
        results = {id(ch): _from_store(ch, length, config) for ch in chunks if ch.parts is not None}
        if fallback:
            results.update(_second_pass(cache, hook, members, fallback, first, config, progress))
        clock.lap("examples")
        for ch in chunks:
            hists, acts = results[id(ch)]
            rows = np.round(acts, config.digits).tolist()  # one conversion for all examples of the chunk
            starts = np.cumsum([0] + [n_shown(sel) for sel in ch.selection])
            out[ch.member].features.extend(_feature(ch, j, n_tokens, hists[j], rows, int(starts[j]))
                                           for j in range(ch.n))
            ch.maxima = ch.maxima_t = ch.parts = None
        clock.lap("assemble")
    for summary in out:
        used = sorted({e.fragment for f in summary.features for e in f.top + [x for q in f.quantiles
                                                                             for x in q.examples]})
        for i, toks in zip(used, cache.tokens(used) if used else []):
            summary.fragments[i] = decoder(toks[first:])
    clock.lap("decode")
    return out


def _first_pass(cache: Any, hook: str, members: list[Any], chunks: list[_Chunk], first: int, config: SummaryConfig,
                progress: bool) -> None:
    """Counts, per-context maxima and (within budget) the non-zero triplets of every chunk, in one read."""
    store_cap = (config.memory_bytes // 2) // _TRIPLET_BYTES
    stored = 0
    for ch in chunks:
        ch.counts = np.zeros(ch.n, dtype=np.int64)
        ch.maxima = np.zeros((cache.n_contexts, ch.n), dtype=np.float32)
        ch.parts = []
    used = sorted({ch.member for ch in chunks})
    bar = tqdm(total=cache.n_contexts, desc=f"summaries {hook}", unit="frag", leave=False, disable=not progress)
    with torch.no_grad():
        for idx, _tokens, acts in cache.iter_contexts(hook, batch_contexts=config.batch_contexts):
            x = acts[:, first:]
            b, t = x.shape[0], x.shape[1]
            x = x.reshape(b * t, -1)
            codes = {m: BatchCodes(members[m], x) for m in used}
            for ch in chunks:
                rows, cols, vals = codes[ch.member].triplets(ch.lo, ch.hi)
                ch.counts += np.bincount(cols.numpy(), minlength=ch.n)
                flat = torch.zeros(b * ch.n, dtype=torch.float32)
                flat.scatter_reduce_(0, (rows // t) * ch.n + cols, vals.to(torch.float32), "amax")
                ch.maxima[idx[0]:idx[-1] + 1] = flat.view(b, ch.n).numpy()
                if ch.parts is not None:
                    stored += rows.numel()
                    if stored > store_cap:
                        ch.parts = None  # this chunk's histogram and examples come from a second pass
                    else:
                        ch.parts.append(((rows + int(idx[0]) * t).to(torch.int32).numpy(),
                                         cols.to(torch.int32).numpy(), vals.to(torch.float32).numpy()))
            bar.update(len(idx))
    bar.close()


# -- examples and histograms from what the pass gathered ----------------------------------------------

def _from_store(ch: _Chunk, length: int, config: SummaryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Histograms [n, bins] and example activations [pairs, length] from the stored triplets (no second read)."""
    parts = ch.parts or [(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))]
    toks, cols, vals = (np.concatenate([p[k] for p in parts]) for k in range(3))
    ch.parts = []
    hists = histograms(cols, vals, ch.maxima_t.max(axis=1, initial=0.0).astype(np.float64), config.hist_bins)
    ctx, feat = example_pairs(ch.selection)
    return hists, example_rows(toks, cols, vals, ctx, feat, ch.maxima_t.shape[1], length)


def _second_pass(cache: Any, hook: str, members: list[Any], chunks: list[_Chunk], first: int,
                 config: SummaryConfig, progress: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Histograms and examples of chunks whose triplets did not fit: one more read and encode of the cache."""
    length = cache.context_length - first
    hists = {id(ch): np.zeros((ch.n, config.hist_bins), np.int64) for ch in chunks}
    tops = {id(ch): ch.maxima_t.max(axis=1, initial=0.0).astype(np.float64) for ch in chunks}
    pairs = {id(ch): example_pairs(ch.selection) for ch in chunks}
    acts = {id(ch): np.zeros((pairs[id(ch)][0].size, length), np.float32) for ch in chunks}
    bar = tqdm(total=cache.n_contexts, desc=f"histograms {hook}", unit="frag", leave=False, disable=not progress)
    with torch.no_grad():
        for idx, _tokens, batch in cache.iter_contexts(hook, batch_contexts=config.batch_contexts):
            x = batch[:, first:]
            b, t = x.shape[0], x.shape[1]
            codes = {m: BatchCodes(members[m], x.reshape(b * t, -1)) for m in {ch.member for ch in chunks}}
            for ch in chunks:
                c = codes[ch.member].dense(ch.lo, ch.hi).view(b, t, ch.n)
                cols = (c > 0).nonzero(as_tuple=True)[2]
                hists[id(ch)] += histograms(cols.numpy(), c[c > 0].numpy(), tops[id(ch)], config.hist_bins)
                ctx, feat = pairs[id(ch)]
                here = np.flatnonzero((ctx >= idx[0]) & (ctx <= idx[-1]))
                if here.size:
                    rows = torch.from_numpy(ctx[here] - idx[0])
                    acts[id(ch)][here] = c[rows, :, torch.from_numpy(feat[here])].numpy()
            bar.update(len(idx))
    bar.close()
    return {key: (hists[key], acts[key]) for key in hists}


def _feature(ch: _Chunk, j: int, n_tokens: int, hist: np.ndarray, rows: list[list[float]], start: int
             ) -> FeatureSummary:
    """Feature j of the chunk; its examples are rows[start:], top then quantiles (the order of `example_pairs`)."""
    sel = ch.selection[j]
    shown = iter(rows[start:start + n_shown(sel)])

    def examples(contexts: np.ndarray) -> list[Example]:
        return [Example(int(i), next(shown)) for i in contexts]

    return FeatureSummary(
        index=ch.lo + j, density=float(ch.counts[j]) / max(1, n_tokens),
        max_act=float(ch.maxima_t[j].max(initial=0.0)),
        hist_edges=[float(e) for e in sel.edges], hist_counts=[int(c) for c in hist] if sel.edges.size else [],
        top=examples(sel.top),
        quantiles=[Quantile(lo, hi, examples(chosen)) for lo, hi, chosen in sel.quantiles])


# -- what the directions do ------------------------------------------------------------------------

def _add_directions(d: Any, summary: DictionarySummaries, unembed: torch.Tensor | None, decoder: Any,
                    config: SummaryConfig, clock: _Clock) -> None:
    """Logit effects (d_model hooks with an unembedding) and decoder neighbours of the summarised features."""
    from activations.hooknames import parse_hook
    from sae.logit_effects import decoder_neighbours, logit_effects

    n = len(summary.features)
    if not n:
        return
    directions = d.directions.detach().to("cpu", torch.float32)
    if unembed is not None and parse_hook(d.hook).kind in D_MODEL_HOOKS and d.d_in == unembed.shape[1] \
            and config.n_logits:
        found = logit_effects(directions[:n], unembed, config.n_logits)
        names = _token_names(decoder, torch.cat([found.top_ids.flatten(), found.bottom_ids.flatten()]))
        for f, tv, ti, bv, bi in zip(summary.features, found.top_values.tolist(), found.top_ids.tolist(),
                                     found.bottom_values.tolist(), found.bottom_ids.tolist()):
            f.promoted = [(names[i], float(v)) for i, v in zip(ti, tv)]
            f.suppressed = [(names[i], float(v)) for i, v in zip(bi, bv)]
        clock.lap("logits")
    if config.n_neighbours:
        cosines, ids = decoder_neighbours(directions, n, config.n_neighbours)
        for f, cs, js in zip(summary.features, cosines.tolist(), ids.tolist()):
            f.neighbours = [(int(i), float(cos)) for i, cos in zip(js, cs) if cos > MIN_NEIGHBOUR_COSINE]
        clock.lap("neighbours")


def _token_names(decoder: Any, ids: torch.Tensor) -> dict[int, str]:
    """Each distinct token id decoded alone (a page shows the raw string; making spaces visible is its job)."""
    return {int(i): decoder([int(i)])[0] for i in torch.unique(ids).tolist()}
