"""Hyperparameters only some kinds have: one settings dataclass per kind (or family of kinds).

As SAELens keeps one training config class per architecture, a kind's own
knobs live in its class, which its row in `sae.registry` names (`settings=`).
`train-sae` shows every class's options as flags, in a group that says which
kinds use each; a flag of a kind other than `--kind` is refused, not ignored;
the chosen kind's values are validated by its class and recorded in each
dictionary's `training`, flat beside the shared settings (so a TopK
dictionary's config.json keeps the `auxk_alpha` / `dead_tokens` keys it always
had), and only for the kinds that use them. The objective reads them as
`SweepStack.kind_settings`.

What a kind sweeps (α, k, the L0 coefficient) is not here: sweeps are
`TrainSettings` lists, named by the row's `Sweep`.

Imports nothing heavy, so `cli.py --help` stays instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar

from common.errors import UserError
from common.options import option


class ClassDefaults:
    """Options whose default depends on the settings class (Matryoshka's AuxK weight and row start differ from
    BatchTopK's, untied rows from BatchTopK's): such a field defaults to None, and at construction takes the
    class's `DEFAULT_<FIELD>`, so every record names the value that trained and one option keeps one default."""

    def __post_init__(self) -> None:
        for f in fields(self):
            default = getattr(type(self), f"DEFAULT_{f.name.upper()}", None)
            if getattr(self, f.name) is None and default is not None:
                setattr(self, f.name, default)


def _positive(flag: str, value: float, example: str) -> None:
    if not (math.isfinite(float(value)) and value > 0):
        raise UserError(f"{flag} {value} must be a positive number, e.g. {flag} {example}")


@dataclass
class AuxKSettings(ClassDefaults):
    """TopK, BatchTopK and Matryoshka: the AuxK loss of Gao et al. (2024) against dead latents."""

    # Gao et al.'s 1/32; Matryoshka's per-level AuxK takes SAELens's 1 (`MatryoshkaSettings`)
    DEFAULT_AUXK_ALPHA: ClassVar[float] = 1 / 32
    auxk_alpha: float | None = option(None, help="weight of the AuxK loss against dead latents (default: 1/32; "
                                                 "matryoshka_batchtopk 1)")
    dead_tokens: int = option(100_000, help="a latent that has not fired for this many tokens is dead (AuxK)")

    def validate(self) -> None:
        if not (math.isfinite(float(self.auxk_alpha)) and self.auxk_alpha >= 0):
            raise UserError(f"--auxk-alpha {self.auxk_alpha} must be 0 (no AuxK loss) or more")
        _check_window("--dead-tokens", self.dead_tokens)

    def dead_latent_loss(self) -> tuple[str, int, float]:
        """(its window's flag, the window in tokens, the loss's weight): what `train-sae` checks against --tokens."""
        return "--dead-tokens", self.dead_tokens, self.auxk_alpha


def _check_window(flag: str, tokens: int) -> None:
    if tokens < 1:
        raise UserError(f"{flag} {tokens} must be positive, e.g. {flag} 100000")


DECODER_NORMS = ("unit", "free")


@dataclass
class DecoderNormSettings(ClassDefaults):
    """How the decoder's row norms are kept (untied L1, BatchTopK, Matryoshka).

    "unit" keeps every decoder row at norm 1, so a code is the size of its component of the reconstruction.
    "free" trains as SAELens does: the norms learn, and a code times its row's norm is what is ranked
    (BatchTopK's rescale_acts_by_decoder_norm) or penalised (Standard L1: Σ c·‖W_d‖); the norms are folded
    into the encoder when a dictionary is saved, so saved rows are unit either way. The default is the
    class's `DEFAULT_DECODER_NORM`, filled in at construction (`ClassDefaults`) so every record names the one
    that trained.
    """

    DEFAULT_DECODER_NORM: ClassVar[str] = "unit"
    decoder_norm: str | None = option(None, choices=DECODER_NORMS,
                                      help="decoder rows held at norm 1 (unit) or learned as SAELens trains them "
                                           "(free: codes ranked / penalised times their row norm, the norms folded "
                                           "in at save); default: free for batchtopk and matryoshka_batchtopk, "
                                           "unit for untied_sae")

    def validate(self) -> None:
        if self.decoder_norm not in DECODER_NORMS:
            raise UserError(f"--decoder-norm {self.decoder_norm!r} must be one of {', '.join(DECODER_NORMS)}, "
                            "e.g. --decoder-norm free")


@dataclass
class UntiedSettings(DecoderNormSettings):
    """The untied L1 SAE. With "free" its rows start at norm 0.1 (SAELens's decoder_init_norm): from norm 1
    the same objective found far fewer true features on SynthSAEBench (F1 0.38 at L0 9.9 against 0.58 at
    L0 10.7, 1M samples, lr 1e-3). On SmolLM2's layer 3 both land on about the same FVU-L0 curve (held-out
    FVU 0.135 at L0 20.0 free, 0.132 at L0 19.2 unit, 131k tokens). "unit" stays its default: at 1M tokens,
    free rows with the falling rate find more true features (SynthSAEBench, planted sets) but, at L0 10-60,
    reconstruct SmolLM2's layers 3 and 20 worse (held-out FVU +7-32 %, spliced KL up to +22 %) and its layer 10
    and layer-10 MLP output no better (docs/RESULTS.md, "Should the untied L1 SAE follow?")."""

    DEFAULT_DECODER_NORM: ClassVar[str] = "unit"


@dataclass
class BatchTopKSettings(AuxKSettings, DecoderNormSettings):
    """BatchTopK and Matryoshka: AuxK, and the decoder norms, "free" by default as SAELens trains them.

    BatchTopK's free rows start at norm 1 (`decoder_init_norm`): SAELens's 0.1 found fewer true features at our
    falling learning rate. Matryoshka's start at 0.1 (`MatryoshkaSettings`). On SynthSAEBench at 1M samples
    and the default learning rate, "free" finds more true features (BatchTopK F1 0.488 / 0.545 at L0 10 / 12
    against 0.436 / 0.469 with unit rows; Matryoshka 0.517 / 0.576 against 0.481 / 0.527). On SmolLM2's
    layer 3 at the default 1M tokens it costs held-out FVU 0.5-3 % for BatchTopK (0.0865 / 0.0597 against
    0.0839 / 0.0594 at L0 20 / 50) and 4-6 % for Matryoshka, and in runs of up to 2,000 steps about 6 %:
    finding the right features is what a dictionary is for, so "free" is the default and "unit" is a flag
    (docs/RESULTS.md, "The defaults now follow the run").
    """

    DEFAULT_DECODER_NORM: ClassVar[str] = "free"
    DEFAULT_DECODER_INIT_NORM: ClassVar[float] = 1.0
    decoder_init_norm: float | None = option(None, help="norm the free decoder rows (and the encoder, their copy) "
                                                        "start at (default: batchtopk 1, matryoshka_batchtopk 0.1 "
                                                        "as SAELens; unit rows: 1). 0.1 pays only with a low "
                                                        "constant rate, as Matryoshka's (docs/RESULTS.md)")

    def __post_init__(self) -> None:
        if self.decoder_init_norm is None and (self.decoder_norm or self.DEFAULT_DECODER_NORM) == "unit":
            self.decoder_init_norm = 1.0  # unit rows are held at norm 1: the class's free-row start does not apply
        super().__post_init__()

    def validate(self) -> None:
        AuxKSettings.validate(self)
        DecoderNormSettings.validate(self)
        norm = float(self.decoder_init_norm)
        if not (math.isfinite(norm) and norm > 0):
            raise UserError(f"--decoder-init-norm {self.decoder_init_norm} must be positive, e.g. 0.1")
        if norm != 1.0 and self.decoder_norm != "free":
            raise UserError(f"--decoder-init-norm {self.decoder_init_norm} needs --decoder-norm free (unit rows are "
                            "held at norm 1); add --decoder-norm free or drop --decoder-init-norm")


@dataclass
class MatryoshkaSettings(BatchTopKSettings):
    """Matryoshka BatchTopK (Bussmann et al. 2025): nested prefixes of the dictionary each reconstruct the input.

    The prefixes are fractions of the width, so one setting fits every --ratio
    of a sweep; the default nests 1/16, 1/8, 1/4, 1/2 and the whole dictionary,
    the doubling groups of Bussmann et al.

    Its defaults are SAELens's training setup where that was measured to matter: free rows started at norm
    0.1, AuxK per level at weight 1, and (its registry row) a constant learning rate of 1e-3 without warm-up
    or decay. Together they beat our BatchTopK defaults on SynthSAEBench (F1 0.557 / 0.570 at L0 10 / 12 over
    three draws, against 0.524 / 0.578, SAELens's Matryoshka 0.543 / 0.549) and on SmolLM2 (held-out FVU,
    spliced KL and dead latents lower at 1M tokens); any one of them alone did not (docs/RESULTS.md,
    "Matryoshka's defaults").
    """

    DEFAULT_AUXK_ALPHA: ClassVar[float] = 1.0
    DEFAULT_DECODER_INIT_NORM: ClassVar[float] = 0.1

    matryoshka_prefixes: list[float] = option(
        default_factory=lambda: [0.0625, 0.125, 0.25, 0.5],
        help="widths of the inner dictionaries that must each reconstruct the input on their own, as fractions of "
             "the dictionary width, increasing (the whole dictionary is always the last level)")

    matryoshka_aux: bool = option(True, negate="--no-matryoshka-aux",
                                  help="AuxK per level: each level's dead latents reconstruct the residual of its "
                                       "own prefix (SAELens's use_matryoshka_aux_loss, as SynthSAEBench trains it), "
                                       "instead of the whole dictionary's")

    def validate(self) -> None:
        super().validate()
        p = [float(v) for v in self.matryoshka_prefixes]
        if any(not (0 < v <= 1) for v in p) or any(a >= b for a, b in zip(p, p[1:])):
            raise UserError(f"--matryoshka-prefixes {self.matryoshka_prefixes} must be increasing fractions in (0, 1], "
                            "e.g. --matryoshka-prefixes 0.0625 0.25")

    def widths(self, n_features: int) -> list[int]:
        """Latents in each nested level, increasing and ending at `n_features` (levels that round together merge)."""
        sizes = [max(1, min(n_features, int(round(v * n_features)))) for v in self.matryoshka_prefixes]
        return sorted(set(sizes) | {n_features})


# The pre-activation loss against dead JumpReLU latents: weight and window measured on SmolLM2's layer 3 and
# on SynthSAEBench (docs/RESULTS.md): dead latents 30-35 % -> 0-0.1 %, held-out FVU and F1 better. Anthropic's
# 3e-6 does nothing here: Adam still remembers the latent's earlier gradients, so so small a gradient barely
# moves it. A window that is a share of the run, not a fixed count, revives early in short runs and leaves
# rare features alone in long ones (a 100M-token run calls a latent dead after 2M tokens; SAELens: ~4M).
PRE_ACT_LOSS = 1e-2
PRE_ACT_DEAD_SHARE = 50  # by default a latent is dead once it has not fired for a 50th of the run's tokens


@dataclass
class JumpReLUSettings:
    """JumpReLU training (Rajamanoharan et al. 2024, as SAELens trains it), under SAELens's names.

    The thresholds start at 0.3 and the kernel is 0.2 wide, not SAELens's 0.01 and 0.05: a threshold
    moves by about the learning rate per step in log space and learns only from pre-activations within
    half a bandwidth of it. On planted data, SAELens's values stayed dense over 1,000 steps (L0 23-30 of
    32 latents for every coefficient from 0.03 to 30, 1.2 true features per vector) where these reach the
    planted L0 and directions. On SmolLM2's layer 3 both sparsify in 1,171 steps; these reach lower L0,
    and the pre-activation loss (on by default, unlike SAELens) keeps the latents whose threshold starts
    above all their pre-activations from staying dead: without it a third of them did (docs/RESULTS.md).
    """

    jumprelu_init_threshold: float = option(0.3, help="initial threshold of every latent (learned as its log)")
    jumprelu_bandwidth: float = option(0.2, help="width of the rectangle kernel whose pseudo-derivative trains the "
                                                  "thresholds through the step function (straight-through estimator)")
    l0_warmup: float = option(0.0, help="fraction of steps over which the L0 coefficient rises linearly from 0 to "
                                        "its value (SAELens's l0_warm_up_steps)")
    jumprelu_threshold_speed: float = option(1.0, help="the thresholds learn this many times faster than the "
                                                       "other weights (log θ is this times the trained parameter)")
    pre_act_loss: float = option(PRE_ACT_LOSS, help="weight of the pre-activation loss that pulls each dead latent's "
                                                    "pre-activations up to its threshold (Anthropic's, SAELens's "
                                                    "pre_act_loss_coefficient, in the same units); 0 turns it off")
    pre_act_dead_tokens: int | None = option(None, help="a latent that has not fired for this many tokens is dead: "
                                                        "the pre-activation loss acts on it (default: a "
                                                        f"{PRE_ACT_DEAD_SHARE}th of --tokens)")

    def validate(self) -> None:
        _positive("--jumprelu-init-threshold", self.jumprelu_init_threshold, "0.01")
        _positive("--jumprelu-bandwidth", self.jumprelu_bandwidth, "0.05")
        _positive("--jumprelu-threshold-speed", self.jumprelu_threshold_speed, "5")
        if not 0 <= self.l0_warmup <= 1:
            raise UserError(f"--l0-warmup {self.l0_warmup} is a fraction of the run: pass a value in [0, 1]")
        if not (math.isfinite(float(self.pre_act_loss)) and self.pre_act_loss >= 0):
            raise UserError(f"--pre-act-loss {self.pre_act_loss} must be 0 (off) or more, e.g. --pre-act-loss 0.01")
        if self.pre_act_dead_tokens is not None:
            _check_window("--pre-act-dead-tokens", self.pre_act_dead_tokens)

    def for_run(self, tokens: int) -> JumpReLUSettings:
        """These settings for a run of `tokens` tokens: the default window becomes a share of it."""
        if self.pre_act_dead_tokens is not None:
            return self
        return replace(self, pre_act_dead_tokens=max(1, tokens // PRE_ACT_DEAD_SHARE))

    def dead_latent_loss(self) -> tuple[str, int, float]:
        return "--pre-act-dead-tokens", self.pre_act_dead_tokens or 0, self.pre_act_loss
