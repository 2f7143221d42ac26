"""Every kind of dictionary, learned or not, as one affine-ReLU family.

All kinds share one shape: c = ReLU(x Wᵀ + b) (optionally top-k), and
x̂ = c D + b_dec with D's rows the unit feature directions. Keeping decode
exactly linear in c plus a constant is what makes the causal patching
formula x' = x + Σ_j (c̄_j − c_j) f_j, with f_j = `directions[j]`, the same
edit as swapping codes and decoding; it also makes SAELens export one code
path for all kinds.

Each kind stores the tensors it was *trained or fitted* as (the tied SAE
keeps its raw, un-normalised M so a reloaded SAE is bit-identical to the one
in training) and derives the effective W, b, D, b_dec from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from sae.errors import DictionaryError

FORMAT_VERSION = 1


def unit_rows(m: Tensor) -> Tensor:
    """Rows scaled to unit length; the tiny floor keeps an all-zero row finite instead of NaN."""
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def top_k(c: Tensor, k: int) -> Tensor:
    """Keep the k largest coefficients per vector, zero the rest."""
    if k >= c.shape[-1]:
        return c
    values, index = c.topk(k, dim=-1)
    return torch.zeros_like(c).scatter_(-1, index, values)


class AffineDictionary:
    """Shared behaviour: metadata, device moves, encode/decode from the effective tensors."""

    kind: ClassVar[str] = ""
    # name -> shape spec over {"F": n_features, "d": d_in}; checked on construction
    tensor_shapes: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, tensors: dict[str, Tensor], config: dict, name: str = ""):
        try:
            self.d_in = int(config["d_in"])
            self.n_features = int(config["n_features"])
        except (KeyError, TypeError, ValueError) as err:
            raise DictionaryError(f"dictionary config for {name or self.kind!r} lacks d_in / n_features: "
                                  "re-create it with `cli.py train-sae` or `cli.py baselines`") from err
        self.config = {**config, "kind": self.kind, "d_in": self.d_in, "n_features": self.n_features}
        self.hook: str = str(config.get("hook", ""))
        self.name: str = name or str(config.get("name", self.kind))
        self.k: int | None = int(config["k"]) if config.get("k") is not None else None
        sizes = {"F": self.n_features, "d": self.d_in}
        missing = set(self.tensor_shapes) - set(tensors)
        if missing:
            raise DictionaryError(f"{self.name}: weights lack {sorted(missing)} for kind {self.kind!r}: the folder is "
                                  "damaged or from another tool; re-create it")
        self._tensors: dict[str, Tensor] = {}
        for key, spec in self.tensor_shapes.items():
            t = tensors[key]
            want = tuple(sizes[s] for s in spec)
            if tuple(t.shape) != want:
                raise DictionaryError(f"{self.name}: tensor {key} has shape {tuple(t.shape)}, config says {want}: "
                                      "the weights and config.json do not belong together; re-create the folder")
            self._tensors[key] = t.detach().to(torch.float32).contiguous()
        self._effective_cache: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    # -- the protocol -------------------------------------------------------
    def effective(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W [F,d], b [F], D [F,d] unit rows, b_dec [d]) with encode = ReLU(xWᵀ+b), decode = cD + b_dec."""
        if self._effective_cache is None:
            self._effective_cache = self._compute_effective()
        return self._effective_cache

    def _compute_effective(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(iter(self._tensors.values())).device if self._tensors else torch.device("cpu")

    def encode(self, x: Tensor) -> Tensor:
        self._check_width(x, self.d_in, "encode")
        w, b, _, _ = self.effective()
        c = torch.relu(x.to(w.dtype) @ w.T + b)
        return top_k(c, self.k) if self.k is not None else c

    def decode(self, c: Tensor) -> Tensor:
        self._check_width(c, self.n_features, "decode")
        _, _, d, b_dec = self.effective()
        return c.to(d.dtype) @ d + b_dec

    @property
    def directions(self) -> Tensor:
        return self.effective()[2]

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # -- housekeeping -------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """The stored tensors (what `weights.safetensors` holds)."""
        return dict(self._tensors)

    def to(self, device: str | torch.device) -> "AffineDictionary":
        self._tensors = {k: v.to(device) for k, v in self._tensors.items()}
        self._effective_cache = None
        return self

    def save(self, folder: str | Path) -> Path:
        from sae.io import save_dictionary

        return save_dictionary(self, folder)

    def _check_width(self, t: Tensor, want: int, what: str) -> None:
        if t.shape[-1] != want:
            raise DictionaryError(f"{self.name}: {what} got vectors of width {t.shape[-1]} but the dictionary "
                                  f"expects {want}: use a dictionary trained on this hook and model")

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        return f"{type(self).__name__}(name={self.name!r}, hook={self.hook!r}, d_in={self.d_in}, n_features={self.n_features}{extra})"


class TiedSAE(AffineDictionary):
    """Cunningham et al.: c = ReLU(M̂x + b), x̂ = M̂ᵀc, M̂ = M with unit rows (normalised in forward)."""

    kind = "tied_sae"
    tensor_shapes = {"M": ("F", "d"), "b": ("F",)}

    def _compute_effective(self):
        m = unit_rows(self._tensors["M"])
        return m, self._tensors["b"], m, torch.zeros(self.d_in, device=m.device)


class UntiedSAE(AffineDictionary):
    """c = ReLU(W_e(x − b_d) + b_e), x̂ = Ŵ_d c + b_d with Ŵ_d's rows normalised in forward.

    Normalising the decoder makes ‖c‖₁ the L1 of the *reconstruction's*
    components, so an α means the same as for the tied SAE.
    """

    kind = "untied_sae"
    tensor_shapes = {"W_e": ("F", "d"), "b_e": ("F",), "W_d": ("F", "d"), "b_d": ("d",)}

    def _compute_effective(self):
        t = self._tensors
        return t["W_e"], t["b_e"] - t["W_e"] @ t["b_d"], unit_rows(t["W_d"]), t["b_d"]


class LinearBasis(AffineDictionary):
    """A fitted basis (PCA, ICA, random) stored directly in effective form."""

    tensor_shapes = {"W_enc": ("F", "d"), "b_enc": ("F",), "W_dec": ("F", "d"), "b_dec": ("d",)}

    def _compute_effective(self):
        t = self._tensors
        return t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]


class PCABasis(LinearBasis):
    """Principal components of the centred data; negative part of each projection set to 0."""

    kind = "pca"


class ICABasis(LinearBasis):
    """FastICA components, each oriented so its heavy tail is positive; negative part 0."""

    kind = "ica"


class RandomBasis(LinearBasis):
    """A random orthonormal basis (so it is a rotated default basis); negative part 0."""

    kind = "random"


class PCATopK(LinearBasis):
    """PCA with only the k largest (positive) coefficients kept: the sparsity-matched control."""

    kind = "pca_topk"


class ICATopK(LinearBasis):
    """ICA with only the k largest (positive) coefficients kept: the sparsity-matched control."""

    kind = "ica_topk"


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


KINDS: dict[str, type[AffineDictionary]] = {
    cls.kind: cls
    for cls in (TiedSAE, UntiedSAE, PCABasis, ICABasis, RandomBasis, PCATopK, ICATopK, NeuronBasis,
                SignedNeuronBasis)
}
