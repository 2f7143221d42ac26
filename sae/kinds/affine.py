"""The affine-ReLU family every dictionary kind belongs to, and its shared behaviour.

All kinds share one shape: c = ReLU(x Wᵀ + b) (optionally top-k), and
x̂ = c D + b_dec with D's rows the unit feature directions. Keeping decode
exactly linear in c plus a constant is what makes the causal patching
formula x' = x + Σ_j (c̄_j − c_j) f_j, with f_j = `directions[j]`, the same
edit as swapping codes and decoding; it also makes SAELens export one code
path for all kinds.

Each kind lives in its own module under `sae/kinds/` and is listed in
`sae.registry`. Each kind stores the tensors it was *trained or fitted* as (the tied SAE
keeps its raw, un-normalised M so a reloaded SAE is bit-identical to the one
in training) and derives the effective W, b, D, b_dec from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from sae.errors import DictionaryError



def unit_rows(m: Tensor) -> Tensor:
    """Rows scaled to unit length; the tiny floor keeps an all-zero row finite instead of NaN."""
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def top_k(c: Tensor, k: int) -> Tensor:
    """Keep the k largest coefficients per vector, zero the rest."""
    if k >= c.shape[-1]:
        return c
    values, index = c.topk(k, dim=-1)
    return torch.zeros_like(c).scatter_(-1, index, values)


def folded_bias(w_e: Tensor, b_e: Tensor, b_d: Tensor) -> Tensor:
    """b_e − W_e·b_d: the encoder bias once the input centring by b_d is folded in.

    Computed in float64 and rounded once, so the result does not depend on
    how the tensors happen to be aligned in memory (BLAS picks kernels by
    alignment, and a reloaded dictionary must encode bit-identically).
    """
    return (b_e.double() - w_e.double() @ b_d.double()).to(b_e.dtype)


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
        from sae.store import save_dictionary  # a leaf: writing needs no loader

        return save_dictionary(self, folder)

    def _check_width(self, t: Tensor, want: int, what: str) -> None:
        if t.shape[-1] != want:
            raise DictionaryError(f"{self.name}: {what} got vectors of width {t.shape[-1]} but the dictionary "
                                  f"expects {want}: use a dictionary trained on this hook and model")

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        return f"{type(self).__name__}(name={self.name!r}, hook={self.hook!r}, d_in={self.d_in}, n_features={self.n_features}{extra})"


def encodes_as_affine_relu(dictionary: object) -> bool:
    """Is `encode` exactly ReLU(x Wᵀ + b) (then top-k when k is set) with `effective()`'s W and b?

    What lets a caller multiply by only some rows of W, or keep top-k values without a dense code tensor;
    kinds that override `encode` (thresholds, neurons, fitted bases) are not, whatever their weights.
    """
    return isinstance(dictionary, AffineDictionary) and type(dictionary).encode is AffineDictionary.encode

