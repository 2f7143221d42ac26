"""The one list of dictionary kinds: `kind` (as in config.json) → class, in the order reports show them.

`sae.load`, the trainer, the baselines, the report's ordering and export all
read this table, so a new kind is one new module under `sae/kinds/` plus one
line here. Classes are imported on first use, so importing the registry is
cheap (no torch) and the report can sort kinds without loading a model.
"""

from __future__ import annotations

import importlib

from sae.errors import DictionaryError

# Report order: learned dictionaries first (the papers' subject), then the baselines they are compared to.
_KINDS: dict[str, str] = {
    "tied_sae": "sae.kinds.tied:TiedSAE",
    "untied_sae": "sae.kinds.untied:UntiedSAE",
    "topk": "sae.kinds.topk:TopKSAE",
    "batchtopk": "sae.kinds.threshold:BatchTopKSAE",
    "jumprelu": "sae.kinds.threshold:JumpReLUSAE",
    "neuron": "sae.kinds.neuron:NeuronBasis",
    "signed_neuron": "sae.kinds.neuron:SignedNeuronBasis",
    "pca": "sae.kinds.fitted:PCABasis",
    "ica": "sae.kinds.fitted:ICABasis",
    "random": "sae.kinds.fitted:RandomBasis",
    "pca_topk": "sae.kinds.fitted:PCATopK",
    "ica_topk": "sae.kinds.fitted:ICATopK",
    "probe": "sae.kinds.probe:ProbeBasis",
}

# Kinds the trainer learns (`cli.py train-sae --kind`): kind -> its training objective, beside its inference class.
_OBJECTIVES: dict[str, str] = {
    "tied_sae": "sae.kinds.tied:TiedStack",
    "untied_sae": "sae.kinds.untied:UntiedStack",
    "topk": "sae.kinds.topk:TopKStack",
    "batchtopk": "sae.kinds.threshold:BatchTopKStack",
}
LEARNED_KINDS: tuple[str, ...] = tuple(_OBJECTIVES)
# Kinds `cli.py baselines` fits.
FITTED_KINDS: tuple[str, ...] = ("neuron", "signed_neuron", "pca", "ica", "random", "pca_topk", "ica_topk")


def kind_names() -> tuple[str, ...]:
    """Every kind, in report order."""
    return tuple(_KINDS)


def kind_order(kind: str) -> int:
    """Position of a kind in report order; unknown kinds sort last."""
    names = kind_names()
    return names.index(kind) if kind in names else len(names)


def kind_class(kind: str) -> type:
    target = _KINDS.get(kind)
    if target is None:
        raise DictionaryError(f"kind {kind!r} is not one of {', '.join(sorted(_KINDS))}: "
                              "re-create the dictionary with this version of the tool")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def objective_class(kind: str) -> type:
    """The `SweepStack` subclass that trains `kind`."""
    target = _OBJECTIVES.get(kind)
    if target is None:
        raise DictionaryError(f"kind {kind!r} is not trained by train-sae: choose from {', '.join(LEARNED_KINDS)}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def all_classes() -> dict[str, type]:
    return {k: kind_class(k) for k in _KINDS}
