"""Raw descriptors -> a concise vocabulary (Mondal et al.'s clustering step).

LLMs (and human annotators) say the same thing many ways ("bird", "birds",
"bird species"); assigning raw strings would split one concept's frequency
among its spellings and no feature would reach the threshold. So every
distinct raw descriptor is embedded with a sentence-embedding model and the
embeddings are clustered agglomeratively (cosine distance, average linkage,
a distance threshold instead of a cluster count: the vocabulary's size
follows the data). Each cluster is named by its most frequent member (ties:
the member nearest the cluster's mean direction), so names are real
descriptors, never invented.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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

    def to_json(self, doc_counts: Sequence[int]) -> list[dict]:
        return [{"name": n, "documents": int(c), "members": m} for n, m, c in zip(self.names, self.members, doc_counts)]


def cluster_descriptors(counts: Counter, embed: Callable[[list[str]], np.ndarray], threshold: float) -> Vocabulary:
    """Cluster the distinct raw descriptors in `counts` (raw -> number of documents) by embedding similarity.

    `embed` returns unit vectors [n, dim]. Threshold 0 keeps identical
    strings only (no model call is needed then, but it is made for one code path).
    """
    from sklearn.cluster import AgglomerativeClustering

    if not counts:
        return Vocabulary([], [], {})  # nothing to cluster; the caller says so and keeps documents.jsonl
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
