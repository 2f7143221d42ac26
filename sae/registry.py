"""The one table of dictionary kinds: one `KindSpec` row per kind, in the order reports show them.

Every fact that differs between kinds lives in its row: the inference class,
the training objective, the swept parameter (α, k or the L0 coefficient), the
default learning rate, the settings dataclass of its own hyperparameters
(`sae.kind_settings`), whether it trains data-parallel, whether
`cli.py baselines` fits it, its plot marker. `sae.load`, the settings, the trainer, the data-parallel
stepper, the baselines, the plots, the report's ordering and export all read
this table, so a new kind is one new module under `sae/kinds/` plus one row
here, and nothing elsewhere falls back silently for a kind it does not know.

Classes are named as "module:Class" and imported on first use, so importing
the registry is cheap (no torch) and `cli.py --help` or the report can read
the table without loading a model. A row may also hold the class itself
(a test's toy kind does).
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from sae.errors import DictionaryError


@dataclass(frozen=True)
class Sweep:
    """The parameter a learned kind sweeps in one pass (`train-sae`): its flag, field, config key and valid range."""

    key: str  # config.json key of each dictionary and the key in its folder name ("l1" in tied_R2_l1_0.001)
    field: str  # the `TrainSettings` list field holding the values
    flag: str  # its command-line flag
    integer: bool  # values are whole numbers (k)
    minimum: float  # smallest valid value
    rule: str  # the valid range in words, for the error message
    example: str  # a valid value, for the error message

    def cast(self, value: float) -> float:
        return int(value) if self.integer else float(value)


L1_SWEEP = Sweep("l1", "l1s", "--l1", integer=False, minimum=0.0, rule="non-negative numbers", example="1e-3")
K_SWEEP = Sweep("k", "ks", "--k", integer=True, minimum=1, rule="positive integers", example="16 32 64")
L0_SWEEP = Sweep("l0_coefficient", "l0_coefficients", "--l0-coefficient", integer=False, minimum=0.0,
                 rule="non-negative numbers", example="0.3 1 3")


def schedule_is_valid(warmup: float, decay: float) -> bool:
    """(warm-up, decay) are fractions of the run that fit in it together (a registry row's or the flags')."""
    return 0 <= warmup <= 1 and 0 <= decay <= 1 and warmup + decay <= 1


@dataclass(frozen=True)
class KindSpec:
    """Everything the code decides per kind; `name` is the `kind` in config.json."""

    name: str
    inference: str | type  # "module:Class" of the `Dictionary` (what `sae.load` builds)
    objective: str | type | None = None  # "module:Class" of the `SweepStack` that trains it; None: train-sae refuses
    sweep: Sweep | None = None  # what train-sae sweeps (learned kinds)
    lr: float | None = None  # default Adam learning rate (learned kinds): each loss has its own scale
    # runs longer than this many steps default to lr · sqrt(lr_steps / steps) (None: `lr` at every length)
    lr_steps: int | None = None
    # runs shorter than this many steps default to lr · sqrt(lr_rise_steps / steps) (None: `lr` however short)
    lr_rise_steps: int | None = None
    # default (warm-up, decay) of its learning-rate schedule, as fractions of the run (--lr-warmup, --lr-decay)
    lr_schedule: tuple[float, float] = (0.05, 0.2)
    # "module:Class" of the dataclass of this kind's own hyperparameters (`sae.kind_settings`): its options are
    # train-sae flags, its values are recorded in each dictionary's `training` only for the kinds that use them
    settings: str | type | None = None
    # trains under `--distribute data`: its loss is a sum over rows up to a global constant, and its only
    # batch-updated state is `since_fired` (see sae.distributed)
    data_parallel: bool = False
    # how its loss depends on the batch, which data-parallel ranks weigh their loss by: "rows" (a mean over rows)
    # or "variance" (a sum over rows divided by the batch's total variance, as TopK's FVU)
    loss_over: str = "rows"
    fitted: bool = False  # `cli.py baselines` fits it
    topk_control_of: str | None = None  # a top-k control of this fitted kind (its folder is <kind>_k<k>)
    folder_prefix: str | None = None  # train-sae's folder names start with this (default: the kind)
    marker: str = "o"  # its points in the FVU-vs-L0 plot

    def __post_init__(self) -> None:
        """A learned row without its sweep or learning rate would fail far from here, mid-run: refuse it now."""
        if self.objective is not None and (self.sweep is None or not self.lr or self.lr <= 0):
            raise ValueError(f"kind {self.name!r} has a training objective, so it needs a sweep and a positive lr")
        for name in ("lr_steps", "lr_rise_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"kind {self.name!r}: {name} is a positive number of steps or None")
        if not schedule_is_valid(*self.lr_schedule):
            raise ValueError(f"kind {self.name!r}: lr_schedule is (warm-up, decay), fractions summing to at most 1")
        if self.loss_over not in ("rows", "variance"):
            raise ValueError(f"kind {self.name!r}: loss_over is 'rows' or 'variance', not {self.loss_over!r}")

    def default_lr(self, steps: int) -> float:
        """The learning rate a run of `steps` steps trains at unless --lr says otherwise.

        One rate cannot serve every length: `lr` is sized for short runs (a JumpReLU threshold moves by about
        the rate per step, so at a fifth of it 2,000 steps leave the dictionary dense), and over 7,812 steps
        the same rate leaves every TopK-family kind and JumpReLU 0.025-0.20 F1 below this rule's 2.5e-3 on
        SynthSAEBench (docs/RESULTS.md). Falling as 1/sqrt(steps) keeps lr x steps, how far a weight can
        travel, growing with the run while the step noise at the end shrinks. A kind whose `lr` is sized for
        long runs (Matryoshka's 1e-3) rises by the same law below `lr_rise_steps` instead.
        """
        if self.lr is None:
            raise ValueError(f"kind {self.name!r} is not learned: it has no learning rate")
        if self.lr_rise_steps is not None and steps < self.lr_rise_steps:
            return self.lr * (self.lr_rise_steps / max(1, steps)) ** 0.5
        if self.lr_steps is None or steps <= self.lr_steps:
            return self.lr
        return self.lr * (self.lr_steps / steps) ** 0.5

    @property
    def learned(self) -> bool:
        return self.objective is not None

    @property
    def prefix(self) -> str:
        return self.folder_prefix or self.name


# Up to this many steps TopK, BatchTopK and JumpReLU default to their row's lr; longer runs to lr * sqrt(LR_STEPS /
# steps) (`KindSpec.default_lr`). On SynthSAEBench at 7,812 steps that is 2.5e-3: F1 +0.025 to +0.20 over 5e-3 for
# every one of them; on SmolLM2's layer 3 at 3,906 steps (3.6e-3) held-out FVU 1.5-7 % lower and fewer dead
# latents. The L1 SAEs keep 5e-3 at every length: their L0 at an alpha moves with the rate, and the default
# alpha sweep (and item 3's planted-recovery results) are set at 5e-3 (docs/RESULTS.md).
LR_STEPS = 2_000
_AUXK = "sae.kind_settings:AuxKSettings"  # the AuxK loss against dead latents (TopK; BatchTopK adds to it)

# Report order: learned dictionaries first (the papers' subject), then the baselines they are compared to.
_ROWS: tuple[KindSpec, ...] = (
    # Learning rates recover planted features at the default schedule (benchmarks/bench_recovery.py) and
    # train well on normalised activations.
    KindSpec("tied_sae", "sae.kinds.tied:TiedSAE", "sae.kinds.tied:TiedStack", L1_SWEEP, lr=5e-3,
             data_parallel=True, folder_prefix="tied", marker="o"),
    KindSpec("untied_sae", "sae.kinds.untied:UntiedSAE", "sae.kinds.untied:UntiedStack", L1_SWEEP, lr=5e-3,
             settings="sae.kind_settings:UntiedSettings", data_parallel=True, folder_prefix="untied", marker="s"),
    KindSpec("topk", "sae.kinds.topk:TopKSAE", "sae.kinds.topk:TopKStack", K_SWEEP, lr=5e-3, lr_steps=LR_STEPS,
             settings=_AUXK, data_parallel=True, loss_over="variance", marker="P"),
    # its top-k spans the whole batch, which no data-parallel rank holds
    KindSpec("batchtopk", "sae.kinds.threshold:BatchTopKSAE", "sae.kinds.threshold:BatchTopKStack", K_SWEEP,
             lr=5e-3, lr_steps=LR_STEPS, settings="sae.kind_settings:BatchTopKSettings", marker="X"),
    # SAELens's constant 1e-3 (no warm-up or decay), with its rows started at 0.1 and per-level AuxK
    # (`MatryoshkaSettings`): together they beat our falling rate on SynthSAEBench (F1 +0.033 at L0 10, three
    # draws) and on SmolLM2 at 1M tokens (docs/RESULTS.md, "Matryoshka's defaults"); rows at 0.1 with the
    # falling rate do not. Below 2,000 steps 1e-3 is too slow (held-out FVU +8 % at 512 steps), so it rises
    KindSpec("matryoshka_batchtopk", "sae.kinds.matryoshka:MatryoshkaSAE", "sae.kinds.matryoshka:MatryoshkaStack",
             K_SWEEP, lr=1e-3, lr_rise_steps=LR_STEPS, lr_schedule=(0.0, 0.0),
             settings="sae.kind_settings:MatryoshkaSettings",
             folder_prefix="matryoshka", marker="p"),
    # trained here, or loaded from SAELens (Gemma Scope); its loss is a mean over rows and it has no batch state
    KindSpec("jumprelu", "sae.kinds.threshold:JumpReLUSAE", "sae.kinds.jumprelu:JumpReLUStack", L0_SWEEP,
             lr=5e-3, lr_steps=LR_STEPS, settings="sae.kind_settings:JumpReLUSettings", data_parallel=True,
             marker="*"),
    KindSpec("neuron", "sae.kinds.neuron:NeuronBasis", fitted=True, marker="D"),
    KindSpec("signed_neuron", "sae.kinds.neuron:SignedNeuronBasis", fitted=True, marker="d"),
    KindSpec("pca", "sae.kinds.fitted:PCABasis", fitted=True, marker="^"),
    KindSpec("ica", "sae.kinds.fitted:ICABasis", fitted=True, marker="v"),
    KindSpec("random", "sae.kinds.fitted:RandomBasis", fitted=True, marker="x"),
    KindSpec("pca_topk", "sae.kinds.fitted:PCATopK", fitted=True, topk_control_of="pca", marker="<"),
    KindSpec("ica_topk", "sae.kinds.fitted:ICATopK", fitted=True, topk_control_of="ica", marker=">"),
    KindSpec("probe", "sae.kinds.probe:ProbeBasis"),  # written by `cli.py probe`
)
_KINDS: dict[str, KindSpec] = {row.name: row for row in _ROWS}


# -- reading the table -----------------------------------------------------------------------------

def kind_spec(kind: str) -> KindSpec:
    """The row of `kind`; a kind this version does not know is a `DictionaryError` naming the known ones."""
    spec = _KINDS.get(kind)
    if spec is None:
        raise DictionaryError(f"kind {kind!r} is not one of {', '.join(sorted(_KINDS))}: "
                              "re-create the dictionary with this version of the tool")
    return spec


def specs() -> tuple[KindSpec, ...]:
    """Every row, in report order."""
    return tuple(_KINDS.values())


def kind_names() -> tuple[str, ...]:
    """Every kind, in report order."""
    return tuple(_KINDS)


def learned_kinds() -> tuple[str, ...]:
    """Kinds `cli.py train-sae --kind` trains."""
    return tuple(s.name for s in _KINDS.values() if s.learned)


def fitted_kinds() -> tuple[str, ...]:
    """Kinds `cli.py baselines --kinds` fits."""
    return tuple(s.name for s in _KINDS.values() if s.fitted)


def kind_order(kind: str) -> int:
    """Position of a kind in report order; unknown kinds sort last."""
    names = kind_names()
    return names.index(kind) if kind in names else len(names)


def _resolve(target: str | type) -> type:
    if not isinstance(target, str):
        return target
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def kind_class(kind: str) -> type:
    return _resolve(kind_spec(kind).inference)


def objective_class(kind: str) -> type:
    """The `SweepStack` subclass that trains `kind`."""
    spec = _KINDS.get(kind)
    if spec is None or spec.objective is None:
        raise DictionaryError(f"kind {kind!r} is not trained by train-sae: choose from {', '.join(learned_kinds())}")
    return _resolve(spec.objective)


def settings_class(kind: str) -> type | None:
    """The dataclass of `kind`'s own hyperparameters (None: it has none)."""
    target = kind_spec(kind).settings
    return None if target is None else _resolve(target)


def default_settings(kind: str):
    """`kind`'s own hyperparameters at their defaults (None: it has none)."""
    cls = settings_class(kind)
    return None if cls is None else cls()


def all_classes() -> dict[str, type]:
    return {k: kind_class(k) for k in _KINDS}


def __getattr__(name: str) -> tuple[str, ...]:
    """`LEARNED_KINDS` / `FITTED_KINDS`, read from the table when asked (so a kind registered later is in them)."""
    if name == "LEARNED_KINDS":
        return learned_kinds()
    if name == "FITTED_KINDS":
        return fitted_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- adding a kind at run time (tests, plug-ins) ---------------------------------------------------

@contextmanager
def registered(*rows: KindSpec) -> Iterator[None]:
    """Add (or replace) rows for the duration of the block, then restore the table exactly as it was.

    What lets a test prove that a new kind needs nothing but its module and its row.
    """
    saved = dict(_KINDS)
    try:
        for row in rows:
            _KINDS[row.name] = row
        yield
    finally:
        _KINDS.clear()
        _KINDS.update(saved)
