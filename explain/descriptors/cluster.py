"""Raw descriptors -> a concise vocabulary (Mondal et al.'s clustering step).

LLMs (and human annotators) say the same thing many ways ("bird", "birds",
"bird species"); assigning raw strings would split one concept's frequency
among its spellings and no feature would reach the threshold. So every
distinct raw descriptor is embedded with a sentence-embedding model
(all-MiniLM-L6-v2 by default) and grouped.

`community` (the paper's method, the default): fast community detection as
sentence-transformers' `util.community_detection` does it (every descriptor
whose neighbours within the similarity threshold are numerous enough is a
candidate centre; candidates are taken largest first, without overlap),
with size counted in documents (a descriptor carried by 30 documents weighs
30), so that a label set such as the tweets' three sentiments is not
pruned for being three strings. Descriptors in no community of at least
`min_size` documents are rare and pruned; each community is named by its
most central member (the largest document-weighted sum of cosine
similarities to the other members). The module reimplements the
algorithm: sentence-transformers is not a dependency of the toolkit.

`agglomerative` (an option, the earlier default): average-linkage
clustering with a cosine distance threshold; nothing is pruned; each
cluster is named by its most frequent member (ties: the member nearest the
cluster's mean direction). Names are always real descriptors, never invented.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


#: Agglomerative clustering keeps an n x n distance matrix: beyond this many distinct descriptors it would need
#: gigabytes; the most frequent ones are clustered and the rest join their nearest cluster.
MAX_CLUSTERED = 6000


@dataclass(frozen=True)
class Vocabulary:
    """Clusters of raw descriptors: `names[c]`, `members[c]` (raw -> count), and raw -> cluster index."""

    names: list[str]
    members: list[dict[str, int]]
    cluster_of: dict[str, int]
    pruned: dict[str, int] = field(default_factory=dict)  # raw -> count: rare descriptors in no cluster

    def to_json(self, doc_counts: Sequence[int]) -> list[dict]:
        return [{"name": n, "documents": int(c), "members": m} for n, m, c in zip(self.names, self.members, doc_counts)]


METHODS = ("community", "agglomerative")


def communities(vectors: np.ndarray, weights: np.ndarray, min_similarity: float, min_size: float,
                block: int = 1024) -> list[list[int]]:
    """Fast community detection over unit `vectors` [n, d], a member weighing `weights[i]` (documents).

    sentence-transformers' `util.community_detection`: each vector whose
    neighbours (cosine >= `min_similarity`, itself included) weigh at least
    `min_size` proposes them as a community, most similar first (itself
    first); proposals are taken heaviest first (ties: lower index), each
    without the members already taken, and kept if what is left still
    weighs `min_size`. With unit weights this is the library's algorithm.
    """
    n = len(vectors)
    proposals = []
    for start in range(0, n, block):
        sims = vectors[start:start + block] @ vectors.T
        for r in range(sims.shape[0]):
            near = np.flatnonzero(sims[r] >= min_similarity)
            weight = float(weights[near].sum())
            if weight >= min_size:
                proposals.append((weight, start + r, near[np.argsort(-sims[r, near], kind="stable")]))
    proposals.sort(key=lambda p: (-p[0], p[1]))
    taken = np.zeros(n, dtype=bool)
    found = []
    for _, _, members in proposals:
        free = members[~taken[members]]
        if free.size and float(weights[free].sum()) >= min_size:
            found.append(free.tolist())
            taken[free] = True
    return found


def cluster_descriptors(counts: Counter, embed: Callable[[list[str]], np.ndarray], threshold: float,
                        method: str = "community", min_size: int = 1) -> Vocabulary:
    """Cluster the distinct raw descriptors in `counts` (raw -> number of documents) by embedding similarity.

    `embed` returns unit vectors [n, dim]; `threshold` is a cosine distance
    (community: members within similarity 1 - threshold of the centre;
    agglomerative: the average-linkage cut). Threshold 0 keeps identical
    strings only. `min_size` (community only): documents a community must
    cover, or its descriptors are pruned.
    """
    if method not in METHODS:
        raise ValueError(f"clustering {method!r} is not one of {METHODS}")
    if not counts:
        return Vocabulary([], [], {})  # nothing to cluster; the caller says so and keeps documents.jsonl
    if method == "community":
        return _community_vocabulary(counts, embed, threshold, min_size)
    from sklearn.cluster import AgglomerativeClustering

    raw = sorted(counts, key=lambda r: (-counts[r], r))
    head = raw[:MAX_CLUSTERED]
    vectors = np.asarray(embed(raw), dtype=np.float32)
    if len(head) == 1:
        labels = np.zeros(1, dtype=np.int64)
    else:
        model = AgglomerativeClustering(n_clusters=None, distance_threshold=max(threshold, 1e-9), metric="cosine",
                                        linkage="average")
        labels = model.fit_predict(vectors[: len(head)])
    if len(raw) > len(head):
        labels = np.concatenate([labels, _nearest(vectors[: len(head)], labels, vectors[len(head):])])
    groups: dict[int, list[str]] = {}
    for r, label in zip(raw, labels.tolist()):
        groups.setdefault(label, []).append(r)
    # clusters ordered by total count, then by name, so the output does not depend on sklearn's label numbering
    ordered = sorted(groups.values(), key=lambda ms: (-sum(counts[m] for m in ms), min(ms, key=lambda m: (-counts[m], m))))
    row_of = {r: i for i, r in enumerate(raw)}
    names, members, cluster_of = [], [], {}
    for index, ms in enumerate(ordered):
        ms = sorted(ms, key=lambda m: (-counts[m], m))
        names.append(_name(ms, counts, vectors, row_of))
        members.append({m: int(counts[m]) for m in ms})
        cluster_of.update({m: index for m in ms})
    return Vocabulary(names, members, cluster_of)


def _community_vocabulary(counts: Counter, embed: Callable[[list[str]], np.ndarray], threshold: float,
                          min_size: int) -> Vocabulary:
    raw = sorted(counts, key=lambda r: (-counts[r], r))
    vectors = np.asarray(embed(raw), dtype=np.float32)
    weights = np.asarray([counts[r] for r in raw], dtype=np.float64)
    # identical strings sit at similarity 1 up to float error: the 1e-5 keeps threshold 0 from splitting them
    groups = communities(vectors, weights, 1.0 - threshold - 1e-5, min_size)
    groups.sort(key=lambda g: (-weights[g].sum(), min(g)))
    names, members, cluster_of = [], [], {}
    for index, g in enumerate(groups):
        sims = vectors[g] @ vectors[g].T @ weights[g]
        names.append(raw[g[int(np.argmax(sims))]])  # ties: the first in `g`, i.e. the nearest the centre
        ms = sorted((raw[i] for i in g), key=lambda m: (-counts[m], m))
        members.append({m: int(counts[m]) for m in ms})
        cluster_of.update({m: index for m in ms})
    pruned = {r: int(counts[r]) for r in raw if r not in cluster_of}
    return Vocabulary(names, members, cluster_of, pruned)


def _name(members: list[str], counts: Counter, vectors: np.ndarray, row_of: dict[str, int]) -> str:
    """The most frequent member; among equally frequent ones, the one nearest the cluster's mean direction.

    With human annotations every description is often unique (all counts 1),
    and an alphabetical tie-break would name a cluster of "American actor
    (1899-1957)", "American singer", ... by whichever sorts first; the
    member most similar to the cluster as a whole is its most typical one.
    """
    top = [m for m in members if counts[m] == counts[members[0]]]
    if len(top) == 1:
        return top[0]
    centre = vectors[[row_of[m] for m in members]].mean(0)
    scores = vectors[[row_of[m] for m in top]] @ centre
    return top[int(np.argmax(scores))]  # argmax takes the first of equal scores: `top` is sorted by name


def _nearest(head: np.ndarray, labels: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The cluster of each `rest` vector's most similar clustered vector."""
    out = np.empty(len(rest), dtype=labels.dtype)
    for i in range(0, len(rest), 1024):
        out[i:i + 1024] = labels[np.argmax(rest[i:i + 1024] @ head.T, axis=1)]
    return out
