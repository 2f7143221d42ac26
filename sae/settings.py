"""Settings of the dictionary stage's subcommands: the one place their options and defaults are written.

`cli.py` builds `train-sae`, `baselines`, `evaluate` and `export` from these
dataclasses (see `common.options`), and `demo` constructs the same
objects. Imports nothing heavy, so `cli.py --help` stays instant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from common.errors import UserError
from common.options import option
from activations.provenance import ALLOW_HELP
from sae.registry import K_SWEEP, L1_SWEEP, Sweep, fitted_kinds, kind_spec, learned_kinds, specs

EXPORT_FORMATS = ("saelens",)
_EXPORT_HELP = "also write <dictionary folder>/saelens/ (cfg.json + sae_weights.safetensors)"


def __getattr__(name: str):
    """DEFAULT_LR, L1_KINDS, TOPK_KINDS: views of the registry's rows (`sae.registry`), for the benchmarks that
    import them; read when asked, so they cannot disagree with the table."""
    if name == "DEFAULT_LR":
        return {s.name: s.lr for s in specs() if s.learned}
    if name in ("L1_KINDS", "TOPK_KINDS"):
        return _sweeping(L1_SWEEP if name == "L1_KINDS" else K_SWEEP)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sweeping(sweep: Sweep) -> tuple[str, ...]:
    """The learned kinds that sweep `sweep`, in report order."""
    return tuple(s.name for s in specs() if s.learned and s.sweep == sweep)


def _kind_fields() -> set[str]:
    """`TrainSettings` fields that belong to some kinds only: their sweeps and their own hyperparameters."""
    return {f for s in specs() if s.learned for f in (s.sweep.field, *s.hyperparameters)}


SINK_HELP = ("leave out tokens whose norm exceeds this x the median token norm of the training split (massive "
             "activations: attention sinks beyond position 0, e.g. position 1 at SmolLM2's deep layers); 0 keeps "
             "every token")


@dataclass
class TrainSettings:
    """A sweep of SAEs trained in one pass over the cache; what decides the weights is `public()`."""

    hook: str = option(help="hook to train on, e.g. blocks.3.hook_resid_post")
    ratios: list[float] = option(flag="--ratio", default_factory=lambda: [2.0], help="dictionary size / d_in")
    # two α by default: one α cannot serve every distribution (docs/RESULTS.md, "L1 defaults under superposition")
    l1s: list[float] = option(flag="--l1", default_factory=lambda: [1e-2, 3e-2],
                              help=f"L1 coefficients alpha ({', '.join(_sweeping(L1_SWEEP))}), in normalised units")
    kind: str = option("tied_sae", choices=learned_kinds,
                       help="what to train: the paper's tied or untied L1 SAE, or TopK / BatchTopK")
    ks: list[int] = option(flag="--k", default_factory=lambda: [32],
                           help="active latents per token (topk) or per token on average over a batch (batchtopk)")
    batch_size: int = option(256, help="activation vectors per step")
    lr: float | None = option(None, help="Adam learning rate (default: per kind, " + ", ".join(
        f"{s.name} {s.lr:g}" for s in specs() if s.learned) + ")")
    lr_warmup: float = option(0.05, help="fraction of steps over which the learning rate warms up linearly")
    lr_decay: float = option(0.2, help="final fraction of steps over which it decays linearly to 0")
    tokens: int = option(1_000_000, help="activation vectors to train on")
    normalise: bool = option(True, negate="--no-normalise",
                             help="scale inputs by one constant so that E||x|| = sqrt(d) (folded into the saved "
                                  "weights), so one alpha range means the same sparsity at every layer and model")
    eval_fraction: float = option(0.1, help="last fraction of the cache's contexts held out: never trained on, "
                                            "every stored metric is measured there")
    keep_first_position: bool = option(False, help="also train and measure on position 0 of each context "
                                                   "(BOS or attention sink; excluded by default)")
    sink_factor: float = option(20.0, help=SINK_HELP + " (training and every metric)")
    auxk_alpha: float = option(1 / 32, help="weight of the AuxK loss against dead latents (topk, batchtopk)")
    dead_tokens: int = option(100_000, help="a latent that has not fired for this many tokens is dead (AuxK)")
    seed: int = option(0, help="seed of initialisation and batch order")
    checkpoint_every: int = option(500, identity=False, help="steps between checkpoints")
    betas: tuple[float, float] = field(default=(0.9, 0.999))
    cache: str = option("", required=True, identity=False, help="activation cache (HDF5) written by `cli.py cache`")
    out: str = option("dictionaries", required=True, identity=False, help="folder for the dictionary folders")
    device: str = option("cpu", identity=False, help="cpu or cuda")
    export: str | None = option(None, identity=False, choices=EXPORT_FORMATS, help=_EXPORT_HELP)
    distribute: str | None = option(None, identity=False, choices=("data", "sweep"),
                                    help="under torchrun: data = every rank steps on its rows of each batch, "
                                         "gradients averaged (default); sweep = the (ratio, l1/k) members are shared "
                                         "out, each rank trains its own on the whole batch; one process: ignored")

    def validate(self) -> None:
        if self.kind not in learned_kinds():
            raise UserError(f"--kind {self.kind!r} is not trainable: choose from {', '.join(learned_kinds())}")
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise UserError(f"--ratio {self.ratios} must be positive numbers, e.g. --ratio 2")
        values, sweep = self.sweep_values, self.sweep
        if not values or any(v < sweep.minimum for v in values):
            raise UserError(f"{sweep.flag} {getattr(self, sweep.field)} must be {sweep.rule}, "
                            f"e.g. {sweep.flag} {sweep.example}")
        if len(set(map(float, self.ratios))) != len(self.ratios) or len(set(map(float, values))) != len(values):
            raise UserError("--ratio and --l1 / --k values must each be listed once: remove the duplicates")
        numbers = {"--lr": self.learning_rate, "--auxk-alpha": self.auxk_alpha, **{f"--l1 {a}": a for a in self.l1s},
                   **{f"--ratio {r}": r for r in self.ratios}}
        bad = [flag for flag, v in numbers.items() if not math.isfinite(float(v))]
        if bad:
            raise UserError(f"{bad[0]} is not a finite number: pass a real value, e.g. --lr 5e-3")
        if self.batch_size < 1 or self.learning_rate <= 0 or self.checkpoint_every < 1 or self.dead_tokens < 1:
            raise UserError("--batch-size, --lr, --dead-tokens and --checkpoint-every must be positive")
        if not (0 <= self.lr_warmup <= 1 and 0 <= self.lr_decay <= 1 and self.lr_warmup + self.lr_decay <= 1):
            raise UserError("--lr-warmup and --lr-decay are fractions of the run: each in [0, 1], together at most 1")
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"--eval-fraction {self.eval_fraction} must be in [0, 1)")
        if self.tokens < self.batch_size:
            raise UserError(f"--tokens {self.tokens} is less than one batch of {self.batch_size}: raise --tokens")

    @property
    def sweep(self) -> Sweep:
        """What this kind sweeps (its registry row): α for the L1 kinds, k for the TopK kinds."""
        return kind_spec(self.kind).sweep

    @property
    def sweep_values(self) -> list[float]:
        """The swept values of this kind: α for the L1 kinds, k for the TopK kinds."""
        sweep = self.sweep
        return [sweep.cast(v) for v in getattr(self, sweep.field)]

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else kind_spec(self.kind).lr

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def public(self) -> dict:
        """What decides the trained weights (stored in each dictionary's config as `training`)."""
        data = {k: v for k, v in asdict(self).items()
                if k not in ("checkpoint_every", "cache", "out", "device", "export", "distribute")}
        own = kind_spec(self.kind)
        for key in _kind_fields() - {own.sweep.field, *own.hyperparameters}:  # other kinds' sweeps and knobs
            data.pop(key, None)
        data.update(kind=self.kind, lr=self.learning_rate, steps=self.steps, optimizer="adam",
                    betas=list(self.betas))
        return data


@dataclass
class BaselinesSettings:
    """Fitted bases (neuron, PCA, ICA, random) and the sparsity-matched top-k controls."""

    cache: str = option(help="activation cache (HDF5) written by `cli.py cache`")
    hook: str = option(help="hook to fit on")
    out: str = option(help="folder for the dictionary folders")
    kinds: list[str] = option(csv=True, default_factory=lambda: ["neuron", "pca", "ica", "random"],
                              help=f"comma-separated kinds: {', '.join(fitted_kinds())}")
    tokens: int = option(1_000_000, help="activation vectors to fit on")
    topk_from: list[str] | None = option(None, help="SAE folder(s) whose mean L0 sets k for pca_topk / ica_topk "
                                                    "(one control per folder)")
    k: list[int] | None = option(None, help="k value(s) for the top-k controls (instead of --topk-from)")
    ica_samples: int | None = option(None, help="tokens FastICA fits on (default 65536, bounded by a 64 MiB sample; "
                                                "time grows linearly)")
    seed: int = option(0, help="seed of the random basis and of FastICA")
    eval_fraction: float = option(0.1, help="last fraction of the cache's contexts held out (never fitted on)")
    keep_first_position: bool = option(False, help="also fit on position 0 of each context (BOS or attention sink; "
                                                   "excluded by default)")
    sink_factor: float = option(20.0, help=SINK_HELP + " (fitting)")
    export: str | None = option(None, identity=False, choices=EXPORT_FORMATS, help=_EXPORT_HELP)
    allow_model_mismatch: bool = option(False, identity=False, help=ALLOW_HELP)


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
    density_plot: str | None = option(None, identity=False, help="PNG of the feature-density histograms "
                                                                  "(log10 firing rate)")
    eval_fraction: float | None = option(None, help="last fraction of the cache's contexts to measure on (default: "
                                                    "the smallest split the dictionaries record, else 0.1)")
    keep_first_position: bool = option(False, help="also measure on position 0 of each context (BOS or attention "
                                                   "sink; excluded by default)")
    sink_factor: float = option(20.0, help=SINK_HELP + " (metrics; the KL/CE splice leaves them untouched)")
    allow_model_mismatch: bool = option(False, identity=False, help=ALLOW_HELP)


@dataclass
class ExportSettings:
    """A dictionary written in another library's layout."""

    dictionary: str = option(flag="--dict", help="dictionary folder")
    out: str = option(help="output folder")
    export_format: str = option("saelens", flag="--format", choices=EXPORT_FORMATS, help="layout to write")
