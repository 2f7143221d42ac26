"""Settings of `cli.py patch-ioi` and `cli.py ioi-layers`: the one place their options and defaults are written.

`cli.py` builds both subcommands from these dataclasses (see
`common.options`); `demo` and tests construct the same objects. The
identity fields of `PatchIOISettings` (plus the τ grid and the hook) are the
settings record that ioi.json and ioi_config.json carry and a rerun is
checked against. Imports nothing heavy, so `cli.py --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import UserError
from common.options import option
from activations.provenance import ALLOW_HELP

# ioi.json's features_to_reach: the fewest features with KL <= these fractions of KL(clean || cf); the plot marks them.
REACH_FRACTIONS = (0.25, 0.10)

# On a CPU the paper's greedy over every feature takes hours (576 features, 2 cores): screen to this many by default.
CPU_DEFAULT_CANDIDATES = 64

_MODEL_HELP = "hub id, local folder, or 'default' (offline SmolLM2-135M-Instruct)"
_NAMES_HELP = ("comma-separated first names to use (each must be one token with a leading space); "
               "default: a built-in list of common names")


def _check_prompts(n_prompts: int) -> None:
    if n_prompts < 1:
        raise UserError(f"--n-prompts must be at least 1, got {n_prompts}")


@dataclass
class PatchIOISettings:
    """IOI feature patching of dictionaries at one hook; `dicts`, `out` and the runtime fields may change on a rerun."""

    model: str = option("default", help=_MODEL_HELP)
    # Not part of the settings record: a rerun may add dictionaries (those done are kept, see causal.commands).
    dicts: list[str] = option(default_factory=list, flag="--dict", required=True, identity=False,
                              help="dictionary folder(s), all trained at one hook")
    n_prompts: int = option(50, help="IOI prompt pairs")
    seed: int = option(0, help="seed of the prompt draw")
    out: str = option("", required=True, identity=False,
                      help="output folder for ioi.json, ioi_config.json and ioi_prompts.json")
    plot: str | None = option(None, identity=False, help="PNG of KL vs number of patched features")
    device: str = option("cpu", identity=False,
                         help="cpu or cuda; on cuda candidate features are evaluated in wide batches")
    candidates: int | None = option(None, help="run the greedy only on the K features with the largest "
                                               "integrated-gradient attribution; ioi.json also gets the measured KL "
                                               "of the top-K, 2K, 4K, ... features by that ranking as screen_curve "
                                               f"(default: {CPU_DEFAULT_CANDIDATES} on a CPU, every feature, the "
                                               "paper's protocol, on cuda)")
    full_greedy: bool = option(False, identity=False,
                               help="run the paper's greedy over every feature on a CPU too (hours on 2 cores at "
                                    "576 features; the default there screens by attribution, see --candidates)")
    names: list[str] | None = option(None, csv=True, help=_NAMES_HELP)
    overwrite: bool = option(False, identity=False,
                             help="replace an IOI run with other settings in --out (by default a rerun with the same "
                                  "settings keeps the dictionaries already done)")
    allow_model_mismatch: bool = option(False, identity=False, help=ALLOW_HELP)

    def validate(self) -> None:
        """Mistakes that need no file to find."""
        if not self.out:
            raise UserError("no output folder: pass --out DIR")
        _check_prompts(self.n_prompts)
        if self.candidates is not None and self.candidates < 1:
            raise UserError(f"--candidates must be at least 1, got {self.candidates}")
        if self.candidates is not None and self.full_greedy:
            raise UserError(f"--candidates {self.candidates} and --full-greedy contradict each other: pass one")
        if self.plot is not None and not str(self.plot).lower().endswith(".png"):
            raise UserError(f"--plot {self.plot!r} must name a .png file")

    def greedy_choice(self) -> tuple[int | None, str]:
        """(candidates, how they were chosen): the device decides when the user did not.

        On a CPU the full greedy is hours, so the default screens by
        attribution; on cuda the paper's greedy over every feature is minutes.
        """
        if self.candidates is not None:
            return self.candidates, "--candidates"
        if self.full_greedy:
            return None, "--full-greedy"
        if str(self.device).startswith("cuda"):
            return None, "default on cuda: every feature"
        return CPU_DEFAULT_CANDIDATES, f"default on {self.device}: --candidates {CPU_DEFAULT_CANDIDATES}"


@dataclass
class IOILayersSettings:
    """The whole-vector layer scan that tells which layer to train dictionaries at for IOI patching."""

    model: str = option("default", help=_MODEL_HELP)
    n_prompts: int = option(50, help="IOI prompt pairs")
    seed: int = option(0, help="seed of the prompt draw")
    names: list[str] | None = option(None, csv=True, help=_NAMES_HELP)
    json_path: str | None = option(None, flag="--json", identity=False, help="write the table as JSON")
    device: str = option("cpu", identity=False, help="cpu or cuda")

    def validate(self) -> None:
        _check_prompts(self.n_prompts)
