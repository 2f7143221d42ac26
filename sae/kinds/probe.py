"""Probe dictionaries: one logistic-regression direction per gold label of an annotated corpus (issue 14).

Why a dictionary kind: descriptor assignment (`explain.descriptors`) can only
be *measured* (precision@K / recall@K without a judge) where each feature's
true descriptor is known. A probe feature j is the one-vs-rest logistic
regression for label j on pooled document vectors, stored in effective form
(encode = ReLU(logit): positive exactly where the probe says "label j" with
p > 0.5), so it goes through the same `encode` / `describe` path as every
other basis. `config["labels"][j]` is feature j's label (its ground truth).
"""

from __future__ import annotations

from sae.kinds.fitted import LinearBasis


class ProbeBasis(LinearBasis):
    """Logistic-regression probes, one feature per label; the labels are in `config["labels"]`."""

    kind = "probe"

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.config.get("labels", [])]
