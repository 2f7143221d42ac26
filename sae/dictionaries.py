"""Every dictionary kind by its class name, for callers that import them directly.

The kinds themselves live one module each under `sae/kinds/`; `sae.registry`
is the table of kinds. This module only gathers them.
"""

from __future__ import annotations

from sae.kinds.affine import AffineDictionary, top_k, unit_rows
from sae.store import FORMAT_VERSION
from sae.kinds.fitted import ICABasis, ICATopK, LinearBasis, PCABasis, PCATopK, RandomBasis
from sae.kinds.matryoshka import MatryoshkaSAE
from sae.kinds.neuron import NeuronBasis, SignedNeuronBasis
from sae.kinds.threshold import BatchTopKSAE, JumpReLUSAE, ThresholdSAE
from sae.kinds.tied import TiedSAE
from sae.kinds.topk import TopKSAE
from sae.kinds.untied import UntiedSAE
from sae.registry import all_classes

KINDS: dict[str, type[AffineDictionary]] = all_classes()

__all__ = ["FORMAT_VERSION", "AffineDictionary", "top_k", "unit_rows", "ICABasis", "ICATopK", "LinearBasis",
           "PCABasis", "PCATopK", "RandomBasis", "MatryoshkaSAE", "NeuronBasis", "SignedNeuronBasis", "BatchTopKSAE", "JumpReLUSAE",
           "ThresholdSAE", "TiedSAE", "TopKSAE", "UntiedSAE", "KINDS"]
