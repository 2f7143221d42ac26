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

The detection, fuzzing, embedding and intruder scorers get their own test
examples (activation deciles, non-activating and hard contexts, intruders),
sampled in the same pass by `explain.sampling`, never from the train split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.errors import UserError
from explain.records import ActivationRecord, Examples, ScoringSet, compact
from explain.sampling import N_DONORS
from explain.settings import ExemplarConfig, ScoringConfig


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
    scoring: ScoringSet | None = None  # test only: the sampled examples are held out like test

    def scored(self, split: str) -> tuple[list[ActivationRecord], list[ActivationRecord]]:
        if split == "valid":
            return self.valid_top, self.valid_random
        if split == "test":
            return self.test_top, self.test_random
        raise ValueError(f"unknown split {split!r}")

    def examples(self, split: str) -> Examples:
        """The scored records of `split` ("valid" or "test") as a scorer takes them."""
        top, random = self.scored(split)
        return Examples(split=split, top=top, random=random, scoring=self.scoring if split == "test" else None)


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
    scoring: ScoringSet | None = None  # sampled test examples of the classification scorers (explain.sampling)

    def splits(self, random_scored: int) -> Splits:
        recs = [f.record() for f in self.top]
        rnd = [f.record() for f in self.random]
        return Splits(train=recs[0::4], valid_top=recs[2::4], test_top=recs[3::4],
                      valid_random=rnd[0::2][:random_scored], test_random=rnd[1::2][:random_scored],
                      scoring=self.scoring)

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

    Dictionaries of the sae package expose `effective()` = (W, b, ...); where
    encode is exactly ReLU(x Wᵀ + b) (the affine kinds without k), slicing W
    saves the full [.., F] product. Top-k dictionaries need every coefficient
    to know which survive, and threshold kinds (BatchTopK, JumpReLU) zero
    codes below a per-feature threshold, so they (and any other Dictionary)
    go through their own `encode` and are sliced afterwards.
    """
    from sae.kinds.affine import encodes_as_affine_relu

    if encodes_as_affine_relu(dictionary) and dictionary.k is None:
        w, b = dictionary.effective()[:2]
        return torch.relu(x.to(w.dtype) @ w[ids].T + b[ids])
    return dictionary.encode(x)[..., ids]


@dataclass
class FeatureJob:
    """Features of one dictionary whose exemplars are wanted (`donor_pool`: where intruders may come from)."""

    dictionary: Any
    features: list[int]
    donor_pool: list[int] | None = None


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
                      decoder: TokenDecoder, progress: bool = True, scoring: ScoringConfig | None = None,
                      intruders: bool = False) -> list[list[FeatureExemplars]]:
    """Exemplars of every (dictionary, feature) of `jobs`, all on `hook`; per job, in feature order.

    With `scoring`, each feature also gets its sampled test examples
    (`explain.sampling`); with `intruders`, its donor features (from the
    job's `donor_pool`) are read in the same pass to find intruder fragments.
    """
    per_col = max(1, cache.n_contexts * 4)
    max_cols = max(1, config.memory_bytes // per_col)
    similarity = None
    if scoring is not None and scoring.n_hard:
        from explain.sampling import ContextSimilarity

        similarity = ContextSimilarity(cache.tokens()[:, 1 if cache.bos_prepended else 0:])
    results: list[list[FeatureExemplars]] = [[] for _ in jobs]
    # Split the features into passes whose maxima (with their donors' columns) fit the memory budget.
    flat = [(j, f) for j, job in enumerate(jobs) for f in job.features]
    step = max(1, max_cols // (1 + (N_DONORS if intruders else 0)))
    for start in range(0, len(flat), step):
        chunk = flat[start:start + step]
        for j, job in enumerate(jobs):
            feats = [f for jj, f in chunk if jj == j]
            if feats:
                results[j].extend(_collect_job(cache, hook, job, feats, config, decoder, progress, scoring,
                                               intruders, similarity))
    return results


def _collect_job(cache: Any, hook: str, job: FeatureJob, feats: list[int], config: ExemplarConfig,
                 decoder: TokenDecoder, progress: bool, scoring: ScoringConfig | None, intruders: bool,
                 similarity: Any) -> list[FeatureExemplars]:
    """One maxima pass over the features `feats` of one dictionary (plus donors), then their exemplars."""
    from explain.sampling import build_scoring_set, donor_candidates, plan_scoring

    donors = {f: donor_candidates(f, job.donor_pool or [], config.seed) if intruders else [] for f in feats}
    columns = list(dict.fromkeys(feats + [g for f in feats for g in donors[f]]))
    (maxima,) = feature_maxima(cache, hook, [FeatureJob(job.dictionary, columns)], config.batch_contexts, progress)
    col = {f: c for c, f in enumerate(columns)}
    selections = [select_fragments(maxima[:, col[f]], f, config) for f in feats]
    plans: dict[int, Any] = {}
    if scoring is not None:
        for f, sel in zip(feats, selections):
            if sel.skipped is None:
                train = sel.top[0::4]
                plans[f] = plan_scoring(maxima[:, col[f]], f, train, scoring, donors[f],
                                        lambda g: maxima[:, col[g]] if g in col else None,
                                        None if similarity is None else similarity.scores(train), intruders)
    needs: dict[int, set[int]] = {}
    for f, sel in zip(feats, selections):
        for i in np.concatenate([sel.top, sel.random]):
            needs.setdefault(int(i), set()).add(f)
    for plan in plans.values():
        for i, g in plan.needs():
            needs.setdefault(int(i), set()).add(g)
    strings, per_token = _read_activations(cache, hook, job.dictionary, needs, config.batch_contexts, decoder)
    out = []
    for f, sel in zip(feats, selections):
        ex = FeatureExemplars(feature=int(f), n_fragments=int(maxima.shape[0]), n_active=sel.n_active,
                              max_activation=float(maxima[:, col[f]].max(initial=0.0)), skipped=sel.skipped)
        if sel.skipped is None:
            ex.top = [Fragment(int(i), strings[int(i)], per_token[(int(i), f)].tolist()) for i in sel.top]
            ex.random = [Fragment(int(i), strings[int(i)], per_token[(int(i), f)].tolist()) for i in sel.random]
            values = np.concatenate([np.asarray(fr.activations) for fr in ex.top + ex.random])
            if values.size == 0 or float(values.max()) == float(values.min()):
                ex.skipped = "activation is the same at every token of the selected fragments (nothing to score)"
            elif f in plans:
                ex.scoring = build_scoring_set(plans[f], lambda i, g: (strings[i], per_token[(i, g)]), scoring)
        out.append(ex)
    return out


def _read_activations(cache: Any, hook: str, dictionary: Any, needs: dict[int, set[int]], batch_contexts: int,
                      decoder: TokenDecoder) -> tuple[dict[int, list[str]], dict[tuple[int, int], np.ndarray]]:
    """Re-read and re-encode only the fragments in `needs` (fragment -> features): token strings and activations."""
    first = 1 if cache.bos_prepended else 0
    per_token: dict[tuple[int, int], np.ndarray] = {}
    strings: dict[int, list[str]] = {}
    order = sorted(needs)
    with torch.no_grad():
        for s in range(0, len(order), batch_contexts):
            idx = order[s:s + batch_contexts]
            feats = sorted({f for i in idx for f in needs[i]})
            x = torch.from_numpy(cache.acts(hook, idx))[:, first:]
            enc = encode_features(dictionary, x, torch.as_tensor(feats, dtype=torch.long)).cpu().numpy()
            pos = {f: k for k, f in enumerate(feats)}
            for r, (i, toks) in enumerate(zip(idx, cache.tokens(idx))):
                strings[i] = decoder(toks[first:])
                for f in needs[i]:
                    per_token[(i, f)] = enc[r, :, pos[f]].copy()  # not a view: free the batch
    return strings, per_token
