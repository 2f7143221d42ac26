"""Settings of the dictionary stage's subcommands: the one place their options and defaults are written.

`cli.py` builds `train-sae`, `baselines`, `evaluate` and `export` from these
dataclasses (see `common.options`), and `demo` constructs the same
objects. Imports nothing heavy, so `cli.py --help` stays instant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from common.errors import UserError, require_at_least
from common.options import option, option_group
from activations.provenance import ALLOW_HELP
from sae.registry import (K_SWEEP, L1_SWEEP, Sweep, default_settings, fitted_kinds, kind_spec, learned_kinds,
                          schedule_is_valid, settings_class, specs)

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


def _lr_help() -> str:
    """--lr's help: each kind's default, and for the kinds whose default falls with the run's length, the rule."""
    learned = [s for s in specs() if s.learned]
    rules = sorted({("falls", s.lr_steps) for s in learned if s.lr_steps} |
                   {("rises", s.lr_rise_steps) for s in learned if s.lr_rise_steps})
    marks = {rule: "*" * (i + 1) for i, rule in enumerate(rules)}
    kinds = ", ".join(f"{s.name} {s.lr:g}{marks.get(('falls', s.lr_steps), '')}"
                      f"{marks.get(('rises', s.lr_rise_steps), '')}" for s in learned)
    said = {"falls": "up to {n:,} steps, x sqrt({n:,} / steps) beyond",
            "rises": "from {n:,} steps, x sqrt({n:,} / steps) below"}
    rules = "; ".join(f"{marks[(way, n)]} {said[way].format(n=n)}" for way, n in rules)
    return f"Adam learning rate (default: per kind, {kinds}{'; ' + rules if rules else ''})"


def _schedule_help(text: str, part: int) -> str:
    """--lr-warmup's or --lr-decay's help: each kind's default where they differ (`KindSpec.lr_schedule`)."""
    learned = [s for s in specs() if s.learned]
    values: dict[float, list[str]] = {}
    for s in learned:
        values.setdefault(s.lr_schedule[part], []).append(s.name)
    common = max(values, key=lambda v: len(values[v]))
    others = "; ".join(f"{', '.join(names)} {v:g}" for v, names in values.items() if v != common)
    return f"{text} (default: {common:g}{'; ' + others if others else ''})"


def _sweeping(sweep: Sweep) -> tuple[str, ...]:
    """The learned kinds that sweep `sweep`, in report order."""
    return tuple(s.name for s in specs() if s.learned and s.sweep == sweep)


# The default α sweep at width d = 64, where it was chosen (the planted sets of bench_recovery.py). After
# normalisation (E‖x‖ = √d) the codes grow as √d and the per-dimension squared error does not, so the L1 term
# weighs α·√d against it: the same α is √(d/64) times stronger at width d (docs/RESULTS.md).
L1_DEFAULTS_AT = 64
L1_DEFAULTS = (3e-3, 1e-2, 3e-2, 8e-2)


def default_l1s(d_in: int) -> list[float]:
    """`L1_DEFAULTS` scaled to width `d_in`, to two significant digits (they name the dictionary folders)."""
    return [float(f"{a * math.sqrt(L1_DEFAULTS_AT / d_in):.2g}") for a in L1_DEFAULTS]


def _sweep_fields() -> set[str]:
    """`TrainSettings` fields that belong to some kinds only: their sweeps."""
    return {s.sweep.field for s in specs() if s.learned}


def _kind_settings_classes() -> list[tuple[str, type]]:
    """(--kind <name>, its settings class) of every learned kind that has one, in report order."""
    return [(f"--kind {s.name}", settings_class(s.name)) for s in specs() if s.learned and s.settings is not None]


def _chosen_settings_class(values: dict) -> type | None:
    kind = values.get("kind", TrainSettings.kind)
    return settings_class(kind) if kind in learned_kinds() else None


SINK_HELP = ("leave out tokens whose norm exceeds this x the median token norm of the training split (massive "
             "activations: attention sinks beyond position 0, e.g. position 1 at SmolLM2's deep layers); 0 keeps "
             "every token")


@dataclass
class TrainSettings:
    """A sweep of SAEs trained in one pass over the cache; what decides the weights is `public()`."""

    hook: str = option(help="hook to train on, e.g. blocks.3.hook_resid_post")
    ratios: list[float] = option(flag="--ratio", default_factory=lambda: [2.0], help="dictionary size / d_in")
    # a sweep of α by default, one model each in one pass: one α cannot serve every distribution, and the more
    # directions share the space, the stronger the α that finds them (docs/RESULTS.md, "L1 defaults under
    # superposition"); scaled to the data's width when it is known (`default_l1s`)
    l1s: list[float] | None = option(None, flag="--l1",
                                     help=f"L1 coefficients alpha ({', '.join(_sweeping(L1_SWEEP))}), in normalised "
                                          f"units; default {' '.join(f'{a:g}' for a in L1_DEFAULTS)} at d "
                                          f"{L1_DEFAULTS_AT} times sqrt({L1_DEFAULTS_AT} / d), which keeps the "
                                          "L1 term's weight against the squared error the same at every width "
                                          "(d 576: " + " ".join(f"{a:g}" for a in default_l1s(576)) + ")")
    kind: str = option("tied_sae", choices=learned_kinds,
                       help="what to train: the paper's tied or untied L1 SAE, TopK / BatchTopK / Matryoshka "
                            "BatchTopK, or JumpReLU")
    ks: list[int] = option(flag="--k", default_factory=lambda: [32],
                           help="active latents per token (topk) or per token on average over a batch (batchtopk, "
                                "matryoshka_batchtopk)")
    l0_coefficients: list[float] = option(flag="--l0-coefficient", default_factory=lambda: [1.0],
                                          help="L0 penalty coefficients (jumprelu), in SAELens's units: the loss is "
                                               "the squared error summed over dimensions + this x L0, on normalised "
                                               "inputs; larger is sparser")
    batch_size: int = option(256, help="activation vectors per step")
    lr: float | None = option(None, help=_lr_help())
    lr_warmup: float | None = option(None, help=_schedule_help("fraction of steps over which the learning rate "
                                                               "warms up linearly", 0))
    lr_decay: float | None = option(None, help=_schedule_help("final fraction of steps over which it decays "
                                                              "linearly to 0", 1))
    tokens: int = option(1_000_000, help="activation vectors to train on")
    normalise: bool = option(True, negate="--no-normalise",
                             help="scale inputs by one constant so that E||x|| = sqrt(d) (folded into the saved "
                                  "weights), so one alpha range means the same sparsity at every layer and model")
    eval_fraction: float = option(0.1, help="last fraction of the cache's contexts held out: never trained on, "
                                            "every stored metric is measured there")
    keep_first_position: bool = option(False, help="also train and measure on position 0 of each context "
                                                   "(BOS or attention sink; excluded by default)")
    sink_factor: float = option(20.0, help=SINK_HELP + " (training and every metric)")
    # the kind's own hyperparameters: an instance of its registry row's `settings` class (None: its defaults)
    kind_settings: Any = option_group(classes=_kind_settings_classes, choose=_chosen_settings_class,
                                      help="options of some kinds only (see sae/kind_settings.py)")
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
        sweep = self.sweep
        values = self.sweep_values if getattr(self, sweep.field) is not None else list(L1_DEFAULTS)
        if not values or any(v < sweep.minimum for v in values):
            raise UserError(f"{sweep.flag} {getattr(self, sweep.field)} must be {sweep.rule}, "
                            f"e.g. {sweep.flag} {sweep.example}")
        if len(set(map(float, self.ratios))) != len(self.ratios) or len(set(map(float, values))) != len(values):
            raise UserError(f"--ratio and {sweep.flag} values must each be listed once: remove the duplicates")
        # before the default lr, which depends on the number of steps, tokens / batch size
        require_at_least({"--batch-size": self.batch_size,
                          "--checkpoint-every": self.checkpoint_every}, 1, "positive")
        numbers = {"--lr": self.learning_rate, **{f"{sweep.flag} {a}": a for a in values},
                   **{f"--ratio {r}": r for r in self.ratios}}
        bad = [flag for flag, v in numbers.items() if not math.isfinite(float(v))]
        if bad:
            raise UserError(f"{bad[0]} is not a finite number: pass a real value")
        if self.learning_rate <= 0:
            raise UserError(f"--lr {self.learning_rate} must be positive")
        if not schedule_is_valid(*self.schedule):
            raise UserError("--lr-warmup and --lr-decay are fractions of the run: each in [0, 1], together at most 1")
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"--eval-fraction {self.eval_fraction} must be in [0, 1)")
        require_at_least({"--tokens": self.tokens}, 1, "positive")
        if self.tokens < self.batch_size:
            raise UserError(f"--tokens {self.tokens} is less than one batch of {self.batch_size}: raise --tokens")
        own = self.own_settings
        if own is not None and hasattr(own, "validate"):
            own.validate()

    @property
    def own_settings(self) -> Any:
        """The kind's own hyperparameters (`kind_settings`, or its settings class's defaults); None if it has none.

        Settings of another kind's class are a `UserError`: they would be silently ignored otherwise.
        """
        cls = settings_class(self.kind)
        if self.kind_settings is None:
            return default_settings(self.kind)
        if cls is None or not isinstance(self.kind_settings, cls):
            want = "no settings of its own" if cls is None else f"{cls.__name__}"
            raise UserError(f"--kind {self.kind} takes {want}, not {type(self.kind_settings).__name__}: "
                            "pass the settings of the kind being trained")
        return self.kind_settings

    @property
    def sweep(self) -> Sweep:
        """What this kind sweeps (its registry row): α for the L1 kinds, k for the TopK kinds."""
        return kind_spec(self.kind).sweep

    @property
    def sweep_values(self) -> list[float]:
        """The swept values of this kind: α for the L1 kinds, k for the TopK kinds (after `for_data`)."""
        sweep = self.sweep
        values = getattr(self, sweep.field)
        if values is None:
            raise ValueError("the default --l1 depends on the data's width: call for_data(d_in) first")
        return [sweep.cast(v) for v in values]

    def for_data(self, d_in: int) -> TrainSettings:
        """These settings for this run's data: the default α sweep (None) becomes `default_l1s(d_in)`, and the
        kind's own settings fill in what depends on the run (`for_run(tokens)`), so each dictionary's config
        records the values it was trained with."""
        own = self.own_settings
        if hasattr(own, "for_run"):
            own = own.for_run(self.tokens)
        return replace(self, l1s=self.l1s if self.l1s is not None else default_l1s(d_in), kind_settings=own)

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else kind_spec(self.kind).default_lr(self.steps)

    @property
    def schedule(self) -> tuple[float, float]:
        """(warm-up, decay) fractions of the run: --lr-warmup / --lr-decay, else the kind's `lr_schedule`."""
        warmup, decay = kind_spec(self.kind).lr_schedule
        return (float(self.lr_warmup if self.lr_warmup is not None else warmup),
                float(self.lr_decay if self.lr_decay is not None else decay))

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def public(self) -> dict:
        """What decides the trained weights (stored in each dictionary's config as `training`)."""
        data = {k: v for k, v in asdict(self).items()
                if k not in ("checkpoint_every", "cache", "out", "device", "export", "distribute", "kind_settings")}
        for key in _sweep_fields() - {self.sweep.field}:  # other kinds' sweeps
            data.pop(key, None)
        own = self.own_settings
        if own is not None:  # this kind's own knobs, flat: a TopK record keeps its auxk_alpha / dead_tokens keys
            data.update(asdict(own))
        warmup, decay = self.schedule
        data.update(kind=self.kind, lr=self.learning_rate, lr_warmup=warmup, lr_decay=decay, steps=self.steps,
                    optimizer="adam",
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
