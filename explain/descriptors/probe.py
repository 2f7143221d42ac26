"""`cli.py probe`: a `probe` dictionary, one logistic-regression direction per gold label (issue 14, item 6b).

Why: precision@K of descriptor assignment needs features whose true
descriptor is known. A one-vs-rest logistic regression for label L on the
pooled document vectors is such a feature: it fires on documents of label L,
so its descriptor should map to L. Inputs are standardised for the fit (the
pooled widths differ by orders of magnitude between hooks) and the scaling is
folded back into the weights, so the dictionary encodes raw pooled vectors,
like every other kind. Classes are balanced, so rare labels still get
probes that fire. Fitted on every joined document (in-sample): the probe is
the ground truth of the measurement, not the thing measured.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, require_at_least
from activations.pooled_reader import PooledCache
from common.runstate import check_output_folder, claim_output
from explain.descriptors.build import read_descriptors
from explain.descriptors.describe import joined
from explain.descriptors.settings import ProbeSettings


def fit_probes(x: np.ndarray, labels: list[str], l2: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(W [L, d], b [L], classes) of one-vs-rest logistic regressions on raw `x` [n, d]: logit = x W^T + b."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(labels))
    mu = x.mean(0)
    sigma = x.std(0)
    sigma[sigma < 1e-8] = 1.0
    z = (x - mu) / sigma
    y = np.asarray(labels)
    weights, biases = [], []
    for label in classes:
        clf = LogisticRegression(C=l2, class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit(z, (y == label).astype(np.int64))
        w = clf.coef_[0] / sigma
        weights.append(w)
        biases.append(float(clf.intercept_[0]) - float(w @ mu))
    return np.stack(weights).astype(np.float32), np.asarray(biases, dtype=np.float32), classes


def probe_command(settings: ProbeSettings) -> Path:
    """Fit and save the probe dictionary (see the module docstring); returns its folder."""
    from sae.kinds.probe import ProbeBasis

    require_at_least({"--min-documents": settings.min_documents}, 1)
    if not settings.l2 > 0:
        raise UserError(f"--l2 {settings.l2} must be positive: it is the inverse regularisation strength C")
    out = check_output_folder(settings.out)
    documents, _ = read_descriptors(settings.descriptors)
    with PooledCache(settings.cache) as cache:
        rows, docs = joined(cache, documents)
        x = cache.pooled(settings.hook)[rows]
        model_id = cache.model_id
    raw = [d.get("fields", {}).get(settings.field) for d in docs]
    counts = Counter(str(v) for v in raw if v not in (None, ""))
    if not counts:
        raise UserError(f"no document has the field {settings.field!r}: pass --field with an annotation field of "
                        "the corpus (see documents.jsonl)")
    if len(counts) < 2:
        raise UserError(f"field {settings.field!r} has one label ({next(iter(counts))!r}): a probe needs two; pass "
                        "--field with an annotation field of two or more values")
    kept = {label for label, c in counts.items() if c >= settings.min_documents}
    if len(kept) < 2:
        raise UserError(f"field {settings.field!r} has {len(kept)} labels with >= {settings.min_documents} documents: "
                        "a probe needs two; lower --min-documents or use a larger corpus")
    if len(kept) < len(counts):  # config.json records the labels kept and min_documents
        dropped = sorted(set(counts) - kept)
        print(f"note: {len(dropped)} of the {len(counts)} labels of {settings.field!r} have fewer than "
              f"--min-documents {settings.min_documents} documents and get no probe: {', '.join(dropped[:5])}"
              + (", ..." if len(dropped) > 5 else ""))
    use = np.asarray([v is not None and str(v) in kept for v in raw])
    w, b, classes = fit_probes(x[use], [str(v) for v, u in zip(raw, use) if u], settings.l2)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12)
    config = {"d_in": int(x.shape[1]), "n_features": len(classes), "hook": settings.hook, "model": model_id,
              "labels": classes, "label_field": settings.field, "cache": str(Path(settings.cache).resolve()),
              "training": {"l2": settings.l2, "documents": int(use.sum()), "min_documents": settings.min_documents}}
    tensors = {"W_enc": torch.from_numpy(w), "b_enc": torch.from_numpy(b), "W_dec": torch.from_numpy(unit),
               "b_dec": torch.zeros(x.shape[1])}
    with claim_output(out, None, None, record=None):  # a dictionary folder: its config.json says what made it
        folder = ProbeBasis(tensors, config, name=out.name).save(out)
    print(f"probe dictionary of {len(classes)} labels of {settings.field!r} at {settings.hook} -> {folder}")
    return folder
