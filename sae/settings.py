"""Settings of the dictionary stage's subcommands: the one place their options and defaults are written.

`cli.py` builds `train-sae`, `baselines`, `evaluate` and `export` from these
dataclasses (see `activations.options`), and `demo` constructs the same
objects. Imports nothing heavy, so `cli.py --help` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from activations.errors import UserError
from activations.options import option

EXPORT_FORMATS = ("saelens",)
_EXPORT_HELP = "also write <dictionary folder>/saelens/ (cfg.json + sae_weights.safetensors)"


@dataclass
class TrainSettings:
    """A sweep of SAEs trained in one pass over the cache; what decides the weights is `public()`."""

    hook: str = option(help="hook to train on, e.g. blocks.3.hook_resid_post")
    ratios: list[float] = option(flag="--ratio", default_factory=lambda: [2.0], help="dictionary size / d_in")
    l1s: list[float] = option(flag="--l1", default_factory=lambda: [1e-3], help="L1 coefficients alpha")
    batch_size: int = option(256, help="activation vectors per step")
    lr: float = option(1e-3, help="Adam learning rate")
    tokens: int = option(1_000_000, help="activation vectors to train on")
    tied: bool = option(True, negate="--untied", help="tied encoder/decoder (Cunningham et al.); --untied for MLP activations")
    seed: int = option(0, help="seed of initialisation and batch order")
    checkpoint_every: int = option(500, identity=False, help="steps between checkpoints")
    betas: tuple[float, float] = field(default=(0.9, 0.999))
    cache: str = option("", required=True, identity=False, help="activation cache (HDF5) written by `cli.py cache`")
    out: str = option("dictionaries", required=True, identity=False, help="folder for the dictionary folders")
    device: str = option("cpu", identity=False, help="cpu or cuda")
    export: str | None = option(None, identity=False, choices=EXPORT_FORMATS, help=_EXPORT_HELP)

    def validate(self) -> None:
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise UserError(f"--ratio {self.ratios} must be positive numbers, e.g. --ratio 2")
        if not self.l1s or any(a < 0 for a in self.l1s):
            raise UserError(f"--l1 {self.l1s} must be non-negative numbers, e.g. --l1 1e-3")
        if len(set(map(float, self.ratios))) != len(self.ratios) or len(set(map(float, self.l1s))) != len(self.l1s):
            raise UserError("--ratio and --l1 values must each be listed once: remove the duplicates")
        if self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 1:
            raise UserError("--batch-size, --lr and --checkpoint-every must be positive")
        if self.tokens < self.batch_size:
            raise UserError(f"--tokens {self.tokens} is less than one batch of {self.batch_size}: raise --tokens")

    @property
    def kind(self) -> str:
        return "tied_sae" if self.tied else "untied_sae"

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def public(self) -> dict:
        """What decides the trained weights (stored in each dictionary's config as `training`)."""
        data = {k: v for k, v in asdict(self).items()
                if k not in ("checkpoint_every", "cache", "out", "device", "export")}
        data.update(kind=self.kind, steps=self.steps, optimizer="adam", betas=list(self.betas))
        return data


@dataclass
class BaselinesSettings:
    """Fitted bases (neuron, PCA, ICA, random) and the sparsity-matched top-k controls."""

    cache: str = option(help="activation cache (HDF5) written by `cli.py cache`")
    hook: str = option(help="hook to fit on")
    out: str = option(help="folder for the dictionary folders")
    kinds: list[str] = option(csv=True, default_factory=lambda: ["neuron", "pca", "ica", "random"],
                              help="comma-separated kinds: neuron, signed_neuron, pca, ica, random, pca_topk, ica_topk")
    tokens: int = option(1_000_000, help="activation vectors to fit on")
    topk_from: list[str] | None = option(None, help="SAE folder(s) whose mean L0 sets k for pca_topk / ica_topk "
                                                    "(one control per folder)")
    k: list[int] | None = option(None, help="k value(s) for the top-k controls (instead of --topk-from)")
    ica_samples: int | None = option(None, help="tokens FastICA fits on (default 65536, bounded by a 64 MiB sample; "
                                                "time grows linearly)")
    seed: int = option(0, help="seed of the random basis and of FastICA")
    export: str | None = option(None, identity=False, choices=EXPORT_FORMATS, help=_EXPORT_HELP)


@dataclass
class EvaluateSettings:
    """Reconstruction metrics of saved dictionaries, and the model's loss with the reconstruction spliced in."""

    cache: str = option(help="activation cache (HDF5) of the dictionaries' hook")
    dicts: list[str] = option(flag="--dict", help="dictionary folder(s)")
    tokens: int = option(200_000, help="activation vectors to measure on")
    mmcs_to: str | None = option(None, help="a dictionary folder to measure mean max cosine similarity against")
    model: str | None = option(None, help="subject model for KL/CE (default: the cache's model)")
    no_model: bool = option(False, help="skip the KL/CE metrics")
    ce_contexts: int = option(64, help="contexts for the KL/CE metrics")
    plot: str | None = option(None, identity=False, help="PNG of the FVU-vs-L0 frontier")


@dataclass
class ExportSettings:
    """A dictionary written in another library's layout."""

    dictionary: str = option(flag="--dict", help="dictionary folder")
    out: str = option(help="output folder")
    export_format: str = option("saelens", flag="--format", choices=EXPORT_FORMATS, help="layout to write")
