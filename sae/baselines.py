"""Bases the SAE is compared against: neurons, PCA, ICA, random, and top-k controls.

All of them keep only the positive part of each coefficient, as the paper
does for the default basis and random directions: a feature is something
that is *present* to some degree, and the explanation and patching stages
treat every basis alike only if every basis obeys that. The sign of each
PCA/ICA direction is therefore chosen so that the heavy tail (positive
skew) of its coefficient is the part that survives; an arbitrary sign would
throw away the informative tail and make the basis look worse than it is.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae.dictionaries import ICABasis, LinearBasis, NeuronBasis, PCABasis, RandomBasis, SignedNeuronBasis

SAMPLE_BYTES = 64 << 20  # bound on the in-memory subsample used for orientation and ICA
ICA_MAX_SAMPLES = 65_536  # FastICA is O(n d²) per iteration; more barely changes the components


class StreamingMoments:
    """Mean and covariance from a stream of batches in float64, without keeping the data."""

    def __init__(self, d: int):
        self.n = 0
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.outer = torch.zeros(d, d, dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        x64 = x.to(torch.float64)
        self.n += x64.shape[0]
        self.sum += x64.sum(0)
        self.outer += x64.T @ x64

    @property
    def mean(self) -> Tensor:
        return self.sum / self.n

    def covariance(self) -> Tensor:
        mu = self.mean
        return (self.outer - self.n * torch.outer(mu, mu)) / max(1, self.n - 1)


def collect(batches: Iterable[Tensor], d: int, max_sample: int, progress: bool = True,
            desc: str = "reading") -> tuple[StreamingMoments, Tensor]:
    """One pass: streaming moments of everything, plus the first `max_sample` rows kept as a subsample.

    The batches come from the shuffled reader, so the first rows are a fair sample.
    """
    moments = StreamingMoments(d)
    kept: list[Tensor] = []
    n_kept = 0
    for x in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        moments.update(x)
        if n_kept < max_sample:
            take = x[: max_sample - n_kept].clone()
            kept.append(take)
            n_kept += take.shape[0]
    sample = torch.cat(kept) if kept else torch.zeros(0, d)
    return moments, sample


def sample_limit(d: int, cap: int | None = None) -> int:
    rows = max(1024, SAMPLE_BYTES // (4 * d))
    return rows if cap is None else min(rows, cap)


def orient_by_skew(rows: Tensor, sample: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Flip each row so that the projections of the centred sample have non-negative skew.

    Returns (oriented rows, signs)."""
    proj = (sample.to(torch.float64) - mean.to(torch.float64)) @ rows.to(torch.float64).T
    skew = (proj ** 3).mean(0)
    signs = torch.where(skew < 0, -1.0, 1.0).to(rows.dtype)
    return rows * signs[:, None], signs


def pca_from_moments(moments: StreamingMoments, sample: Tensor, config: dict) -> PCABasis:
    """Principal directions (by descending variance), skew-oriented, as a PCABasis."""
    eigvals, eigvecs = torch.linalg.eigh(moments.covariance())
    order = torch.argsort(eigvals, descending=True)
    components = eigvecs[:, order].T.contiguous()  # [d, d] rows = directions
    mean = moments.mean
    components, _ = orient_by_skew(components, sample, mean)
    v = components.to(torch.float32)
    mu = mean.to(torch.float32)
    d = v.shape[1]
    cfg = {**config, "d_in": d, "n_features": d, "n_tokens_fitted": int(moments.n),
           "explained_variance_top10": [float(e) for e in eigvals[order][:10]]}
    return PCABasis({"W_enc": v, "b_enc": -(v @ mu), "W_dec": v, "b_dec": mu}, cfg)


def numerical_rank(sample: Tensor) -> int:
    """How many directions the centred sample spans, by float32 precision (numpy's matrix_rank rule on the SVD).

    The data are float32 activations, so a singular value below the largest times d times float32's epsilon
    is rounding, not variance.
    """
    x = sample.to(torch.float64)
    x = x - x.mean(0)
    s = torch.linalg.eigvalsh(x.T @ x).clamp_min(0).sqrt().flip(0)  # the singular values, largest first
    tol = float(s[0]) * max(x.shape[1], 1) * float(torch.finfo(torch.float32).eps)
    return max(1, int((s > tol).sum()))


def fit_ica(sample: Tensor, config: dict, seed: int = 0, max_iter: int = 400, tol: float = 1e-4) -> ICABasis:
    """FastICA on a bounded subsample, one component per direction it spans; directions: the normalised mixing columns.

    The encoder row is scaled by the mixing column's norm so that decode
    (Σ c_j f_j + mean) equals FastICA's own inverse transform.
    """
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    # float32 halves FastICA's time (it keeps the input's dtype); its convergence test (tol 1e-4) is far
    # above float32 rounding. The skew orientation below is computed in float64.
    x = sample.to(torch.float32).numpy()
    n, d = x.shape
    # one component per direction the data actually spans: unit-variance whitening divides by the square root of
    # each variance, so a direction of (numerically) zero variance, as after a LayerNorm (pooled BERT outputs
    # span d - 1 or fewer), blows rounding noise up to unit variance and every component came out dead
    # (coefficients ~1e-9 on MiniLM's pooled [CLS] vectors, issue 25)
    rank = numerical_rank(sample)
    if rank < d:
        print(f"note: the {n} samples span {rank} of {d} dimensions (the rest has no variance): ICA fits {rank} "
              "components")
    ica = FastICA(n_components=rank, whiten="unit-variance", random_state=seed, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ica.fit(x)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        print(f"warning: FastICA did not converge in {max_iter} iterations on {n} samples; "
              "the components are usable but approximate")
    mixing = torch.from_numpy(ica.mixing_).double()  # [d, F]
    unmixing = torch.from_numpy(ica.components_).double()  # [F, d]
    mean = torch.from_numpy(ica.mean_).double()
    norms = mixing.norm(dim=0).clamp_min(1e-12)
    directions = (mixing / norms).T  # [F, d]
    encoder = unmixing * norms[:, None]
    encoder, signs = orient_by_skew(encoder, torch.from_numpy(x).double(), mean)  # skew of the coefficients themselves
    directions = directions * signs[:, None]
    enc = encoder.to(torch.float32)
    mu = mean.to(torch.float32)
    cfg = {**config, "d_in": d, "n_features": rank, "n_tokens_fitted": int(n), "ica_iterations": int(ica.n_iter_),
           "ica_converged": converged}
    return ICABasis({"W_enc": enc, "b_enc": -(enc @ mu), "W_dec": directions.to(torch.float32), "b_dec": mu}, cfg)


def random_basis(d: int, config: dict, seed: int = 0) -> RandomBasis:
    """A uniformly random rotation of the default basis (Q of a Gaussian QR)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]  # Haar-uniform and deterministic
    rows = q.T.to(torch.float32).contiguous()
    return RandomBasis({"W_enc": rows, "b_enc": torch.zeros(d), "W_dec": rows, "b_dec": torch.zeros(d)},
                       {**config, "d_in": d, "n_features": d})


def neuron_basis(d: int, config: dict) -> NeuronBasis:
    return NeuronBasis({}, {**config, "d_in": d, "n_features": d})


def signed_neuron_basis(d: int, config: dict) -> SignedNeuronBasis:
    return SignedNeuronBasis({}, {**config, "d_in": d, "n_features": 2 * d})


def topk_control(base: LinearBasis, k: int, config: dict) -> LinearBasis:
    """The same basis with only the k largest coefficients kept (k = an SAE's mean L0)."""
    from sae.registry import kind_class, specs

    control = [s.name for s in specs() if s.topk_control_of == base.kind]
    if not control:
        raise KeyError(f"no top-k control kind of {base.kind!r} in sae.registry")
    cls = kind_class(control[0])
    cfg = {**base.config, **config, "k": int(k), "base_kind": base.kind}
    return cls(base.tensors(), cfg)

