"""Exemplar fragments of dictionary features, and the papers' train / valid / test splits.

Selection (Cunningham et al., whose protocol follows Bills et al.): the
cache holds one fragment per document (`cli.py cache --fragments`). For every
chosen feature, one sequential pass over the cache records the feature's
*maximum* activation in each fragment (BOS position excluded when the cache
prepended one). Then, per feature:

* **top**: the `n_top` = 20 fragments with the largest maximum, ranked
  (ties broken by fragment index); only fragments where the feature is
  active (max > 0) qualify.
* **random**: `n_random` = 20 fragments drawn without replacement, seeded by
  (seed, feature) so a feature's draw never depends on which other features
  run with it. ``--random nonzero`` (the reference code) draws among the
  fragments where the feature is non-zero, ``any`` among all fragments.
  Fragments already among the top are excluded, so no fragment is scored
  twice; when the pool is small, fewer random fragments are kept.
* **skipped** when the feature is active in fewer than `min_active` = 10
  fragments (never-active features included), or when its activation is the
  same at every token of the selected fragments (nothing to correlate with).

Only the selected fragments are then re-read and re-encoded to get per-token
activations, so memory is bounded by [n_fragments × n_features] maxima (a
memory budget splits the features into several passes when needed).

Splits (the exact protocol; `Splits` implements it):

* top, by rank: ``0::4`` → **train** (the explainer sees these, 5 of 20),
  ``1::4`` → calibration (unused, kept to match Bills et al.'s layout),
  ``2::4`` → **valid**, ``3::4`` → **test**.
* random, in draw order: ``0::2`` → valid half, ``1::2`` → test half; each
  split scores the first `random_scored` = 5 of its half (the papers' 5 top
  + 5 random = 640 tokens at 64-token fragments). The rest are kept in the
  record only so the report can show 20 random examples.
* With best-of-k (Choi et al.) each candidate is scored on valid, the best is
  kept, and the reported scores are on test. With k = 1 nothing is selected
  and the single explanation is scored on test only, so k = 1 and k > 1
  report on the same held-out fragments (Cunningham et al. score 2::4; we
  use 3::4 for every k so that valid stays free for selection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activations.errors import UserError
from explain.records import ActivationRecord, Examples, compact
from explain.settings import ExemplarConfig


@dataclass
class Fragment:
    """One fragment of one feature: cache index, token strings and the feature's activation per token."""

    index: int
    tokens: list[str]
    activations: list[float]

    def record(self) -> ActivationRecord:
        return ActivationRecord(tokens=list(self.tokens), activations=list(self.activations))

    def to_json(self, digits: int = 3) -> dict[str, Any]:
        return {"index": int(self.index), "tokens": list(self.tokens),
                "acts": [compact(a, digits) for a in self.activations]}


@dataclass
class Splits:
    """Records per split (see the module docstring for the exact protocol)."""

    train: list[ActivationRecord]
    valid_top: list[ActivationRecord]
    valid_random: list[ActivationRecord]
    test_top: list[ActivationRecord]
    test_random: list[ActivationRecord]

    def scored(self, split: str) -> tuple[list[ActivationRecord], list[ActivationRecord]]:
        if split == "valid":
            return self.valid_top, self.valid_random
        if split == "test":
            return self.test_top, self.test_random
        raise ValueError(f"unknown split {split!r}")

    def examples(self, split: str) -> Examples:
        """The scored records of `split` ("valid" or "test") as a scorer takes them."""
        top, random = self.scored(split)
        return Examples(split=split, top=top, random=random)


def top_split(rank: int) -> str:
    return ("train", "calibration", "valid", "test")[rank % 4]


def random_split(rank: int, random_scored: int) -> str:
    half, pos = ("valid", "test")[rank % 2], rank // 2
    return half if pos < random_scored else "shown-only"


@dataclass
class FeatureExemplars:
    feature: int
    n_fragments: int
    n_active: int
    max_activation: float
    top: list[Fragment] = field(default_factory=list)
    random: list[Fragment] = field(default_factory=list)
    skipped: str | None = None

    def splits(self, random_scored: int) -> Splits:
        recs = [f.record() for f in self.top]
        rnd = [f.record() for f in self.random]
        return Splits(train=recs[0::4], valid_top=recs[2::4], test_top=recs[3::4],
                      valid_random=rnd[0::2][:random_scored], test_random=rnd[1::2][:random_scored])

    def to_json(self, random_scored: int, digits: int = 3) -> dict[str, Any]:
        return {
            "n_fragments": self.n_fragments, "n_active": self.n_active,
            "max_activation": compact(self.max_activation, digits),
            "top": [{**f.to_json(digits), "split": top_split(i)} for i, f in enumerate(self.top)],
            "random": [{**f.to_json(digits), "split": random_split(i, random_scored)}
                       for i, f in enumerate(self.random)],
        }


@dataclass
class Selection:
    top: np.ndarray  # fragment indices, ranked
    random: np.ndarray  # fragment indices, in draw order
    n_active: int
    skipped: str | None


def select_fragments(maxima: np.ndarray, feature: int, config: ExemplarConfig) -> Selection:
    """Top and random fragment indices of one feature from its per-fragment maxima."""
    maxima = np.asarray(maxima, dtype=np.float64)
    n = maxima.shape[0]
    active = np.flatnonzero(maxima > 0)
    if active.size == 0:
        return Selection(np.empty(0, np.int64), np.empty(0, np.int64), 0,
                         f"never active on any of the {n} fragments")
    if active.size < config.min_active:
        return Selection(np.empty(0, np.int64), np.empty(0, np.int64), int(active.size),
                         f"active in only {active.size} of {n} fragments (fewer than min_active={config.min_active})")
    order = np.lexsort((np.arange(n), -maxima))  # by max descending, then index
    top = order[: min(config.n_top, active.size)]
    pool = active if config.random == "nonzero" else np.arange(n)
    pool = np.setdiff1d(pool, top, assume_unique=True)
    rng = np.random.default_rng([int(config.seed), int(feature)])
    size = min(config.n_random, pool.size)
    random = rng.choice(pool, size=size, replace=False) if size else np.empty(0, np.int64)
    return Selection(top.astype(np.int64), np.asarray(random, dtype=np.int64), int(active.size), None)


# -- encoding --------------------------------------------------------------------------------------

def encode_features(dictionary: Any, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Activations of the features `ids` only: [..., d_in] -> [..., len(ids)].

    Dictionaries of the sae package expose `effective()` = (W, b, ...) with
    encode = ReLU(x Wᵀ + b); slicing W saves the full [.., F] product. Top-k
    dictionaries need every coefficient to know which survive, so they (and
    any other Dictionary) go through `encode` and are sliced afterwards.
    """
    effective = getattr(dictionary, "effective", None)
    if callable(effective) and getattr(dictionary, "k", None) is None:
        w, b = effective()[:2]
        return torch.relu(x.to(w.dtype) @ w[ids].T + b[ids])
    return dictionary.encode(x)[..., ids]


@dataclass
class FeatureJob:
    """Features of one dictionary whose exemplars are wanted."""

    dictionary: Any
    features: list[int]


def feature_maxima(cache: Any, hook: str, jobs: Sequence[FeatureJob], batch_contexts: int = 64,
                   progress: bool = True) -> list[np.ndarray]:
    """One sequential pass: per job, the [n_fragments, len(features)] max activation per fragment."""
    first = 1 if cache.bos_prepended else 0
    out = [np.zeros((cache.n_contexts, len(j.features)), dtype=np.float32) for j in jobs]
    ids = [torch.as_tensor(j.features, dtype=torch.long) for j in jobs]
    bar = tqdm(total=cache.n_contexts, desc=f"maxima {hook}", unit="frag", leave=False, disable=not progress)
    with torch.no_grad():
        for idx, _tokens, acts in cache.iter_contexts(hook, batch_contexts=batch_contexts):
            x = acts[:, first:]
            for job, feats, arr in zip(jobs, ids, out):
                if len(job.features):
                    arr[idx] = encode_features(job.dictionary, x, feats).amax(dim=1).cpu().numpy()
            bar.update(len(idx))
    bar.close()
    return out


class TokenDecoder:
    """Token ids -> one display string per token (memoised); a character split across tokens (emoji, Hebrew,
    CJK) shows as itself on the token that completes it, not as one U+FFFD per token (`activations.tokens`)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._memo: dict[int, str] = {}

    def __call__(self, ids: Iterable[int]) -> list[str]:
        from activations.tokens import decode_each

        return decode_each(self.tokenizer, ids, self._memo)

    @classmethod
    def for_cache(cls, cache: Any) -> "TokenDecoder":
        """The tokenizer of the model that made the cache (only the tokenizer is loaded)."""
        from transformers import AutoTokenizer

        from activations.models import resolve_source

        stored = str(cache.attrs.get("model_source", "") or "")
        source = stored if stored and Path(stored).exists() else resolve_source(cache.model_id)
        try:
            return cls(AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the tokenizer of {cache.model_id!r} (from {source}) to decode exemplars: "
                            f"{str(err).splitlines()[0]}; make the model available offline") from err


def collect_exemplars(cache: Any, hook: str, jobs: Sequence[FeatureJob], config: ExemplarConfig,
                      decoder: TokenDecoder, progress: bool = True) -> list[list[FeatureExemplars]]:
    """Exemplars of every (dictionary, feature) of `jobs`, all on `hook`; per job, in feature order."""
    per_col = max(1, cache.n_contexts * 4)
    max_cols = max(1, config.memory_bytes // per_col)
    results: list[list[FeatureExemplars]] = [[] for _ in jobs]
    # Split the columns into passes whose maxima fit the memory budget.
    flat = [(j, f) for j, job in enumerate(jobs) for f in job.features]
    for start in range(0, len(flat), max_cols):
        chunk = flat[start:start + max_cols]
        sub = [FeatureJob(job.dictionary, [f for jj, f in chunk if jj == j]) for j, job in enumerate(jobs)]
        maxima = feature_maxima(cache, hook, sub, config.batch_contexts, progress)
        for j, (job, arr) in enumerate(zip(sub, maxima)):
            selections = [select_fragments(arr[:, c], f, config) for c, f in enumerate(job.features)]
            results[j].extend(_materialise(cache, hook, job, arr, selections, config, decoder))
    return results


def _materialise(cache: Any, hook: str, job: FeatureJob, maxima: np.ndarray, selections: list[Selection],
                 config: ExemplarConfig, decoder: TokenDecoder) -> list[FeatureExemplars]:
    """Re-read and re-encode only the selected fragments; build `FeatureExemplars`."""
    first = 1 if cache.bos_prepended else 0
    wanted: dict[int, list[int]] = {}  # fragment -> columns that need it
    for c, sel in enumerate(selections):
        for i in np.concatenate([sel.top, sel.random]):
            wanted.setdefault(int(i), []).append(c)
    per_token: dict[tuple[int, int], np.ndarray] = {}
    strings: dict[int, list[str]] = {}
    order = sorted(wanted)
    with torch.no_grad():
        for s in range(0, len(order), config.batch_contexts):
            idx = order[s:s + config.batch_contexts]
            cols = sorted({c for i in idx for c in wanted[i]})
            feats = torch.as_tensor([job.features[c] for c in cols], dtype=torch.long)
            x = torch.from_numpy(cache.acts(hook, idx))[:, first:]
            enc = encode_features(job.dictionary, x, feats).cpu().numpy()  # [b, ctx, len(cols)]
            pos = {c: k for k, c in enumerate(cols)}
            for r, (i, toks) in enumerate(zip(idx, cache.tokens(idx))):
                strings[i] = decoder(toks[first:])
                for c in wanted[i]:
                    per_token[(i, c)] = enc[r, :, pos[c]].copy()  # not a view: free the batch
    out = []
    for c, (f, sel) in enumerate(zip(job.features, selections)):
        ex = FeatureExemplars(feature=int(f), n_fragments=int(maxima.shape[0]), n_active=sel.n_active,
                              max_activation=float(maxima[:, c].max(initial=0.0)), skipped=sel.skipped)
        if sel.skipped is None:
            ex.top = [Fragment(int(i), strings[int(i)], per_token[(int(i), c)].tolist()) for i in sel.top]
            ex.random = [Fragment(int(i), strings[int(i)], per_token[(int(i), c)].tolist()) for i in sel.random]
            values = np.concatenate([np.asarray(fr.activations) for fr in ex.top + ex.random])
            if values.size == 0 or float(values.max()) == float(values.min()):
                ex.skipped = "activation is the same at every token of the selected fragments (nothing to score)"
        out.append(ex)
    return out
