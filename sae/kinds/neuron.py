"""The default (neuron) basis and its signed variant: no weights stored."""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary, top_k, unit_rows


class NeuronBasis(AffineDictionary):
    """The default basis: each coordinate is a feature, negative part set to 0 (no weights stored)."""

    kind = "neuron"
    tensor_shapes = {}

    def _compute_effective(self):
        eye = torch.eye(self.d_in)
        return eye, torch.zeros(self.d_in), eye, torch.zeros(self.d_in)

    # The identity needs no matmul; this also keeps huge MLP widths cheap.
    def encode(self, x: Tensor) -> Tensor:
        self._check_width(x, self.d_in, "encode")
        c = torch.relu(x.to(torch.float32))
        return top_k(c, self.k) if self.k is not None else c

    def decode(self, c: Tensor) -> Tensor:
        self._check_width(c, self.n_features, "decode")
        return c.to(torch.float32)

    def to(self, device):
        self._effective_cache = None
        self._device = torch.device(device)
        return self

    @property
    def device(self) -> torch.device:
        return getattr(self, "_device", torch.device("cpu"))

    def effective(self):
        if self._effective_cache is None:
            self._effective_cache = tuple(t.to(self.device) for t in self._compute_effective())
        return self._effective_cache


class SignedNeuronBasis(NeuronBasis):
    """Each coordinate as two features, +e_i and −e_i: codes [ReLU(x), ReLU(−x)], decode c[:d] − c[d:].

    The paper's neuron basis drops the negative part, so patching every one of
    its features cannot turn a clean run into the counterfactual one. This
    basis keeps codes non-negative yet reconstructs x exactly, so "every
    feature patched gives KL ≈ 0" holds for it: the sanity check of IOI
    patching (issue 5), and an exact-reconstruction reference for metrics.
    """

    kind = "signed_neuron"
    tensor_shapes = {}

    def __init__(self, tensors: dict[str, Tensor], config: dict, name: str = ""):
        super().__init__(tensors, config, name)
        if self.n_features != 2 * self.d_in:
            raise DictionaryError(f"{self.name}: a signed_neuron basis has n_features = 2·d_in = {2 * self.d_in}, "
                                  f"config says {self.n_features}: re-create it with `cli.py baselines --kinds signed_neuron`")

    def _compute_effective(self):
        eye = torch.eye(self.d_in)
        both = torch.cat([eye, -eye])
        return both, torch.zeros(2 * self.d_in), both, torch.zeros(self.d_in)

    def encode(self, x: Tensor) -> Tensor:
        self._check_width(x, self.d_in, "encode")
        x = x.to(torch.float32)
        c = torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)
        return top_k(c, self.k) if self.k is not None else c

    def decode(self, c: Tensor) -> Tensor:
        self._check_width(c, self.n_features, "decode")
        c = c.to(torch.float32)
        return c[..., : self.d_in] - c[..., self.d_in:]
