"""Settings of `cli.py descriptors`, `cli.py probe` and `cli.py describe` (descriptor discovery, Mondal et al.).

One dataclass per subcommand; `cli.py` builds the flags from their
`option()` fields. Imports nothing heavy, so `cli.py --help` stays instant.
The identity fields are what each output folder's `settings.json` records;
a rerun into a folder made with other identity settings is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import UserError, require_at_least
from common.options import option
from activations.provenance import ALLOW_HELP

GENERATOR_HELP = ("field:<name> (the descriptors are an annotation field of the corpus: the honest offline source), "
                  "local:<hub id|folder|default> or openai:<model> (an LLM proposes up to 5 descriptors per document)")


@dataclass
class DescriptorsSettings:
    """Descriptors for every document of a corpus, clustered into a vocabulary."""

    corpus: str = option("default", help="the corpus, as for `cli.py cache` (.jsonl, .csv, 'default', 'tweets', ...)")
    text_column: str | None = option(None, help="the .jsonl field or .csv column holding the text (default: text)")
    encoding: str | None = option(None, help="text encoding of the corpus files (default: utf-8), e.g. latin-1")
    generator: str = option("field:description", help=GENERATOR_HELP)
    max_documents: int | None = option(None, help="the first N documents (default: all; must match the pooled cache)")
    cluster: str = option("community", choices=("community", "agglomerative"),
                          help="community: fast community detection on the embeddings, rare descriptors pruned, "
                               "each cluster named by its most central member (the paper); agglomerative: average "
                               "linkage, nothing pruned (the earlier default)")
    cluster_threshold: float = option(0.25, help="cosine distance: community members lie within 1 - this cosine "
                                                 "similarity of the centre; agglomerative cuts average linkage here "
                                                 "(0 keeps only identical descriptors together)")
    min_community: int = option(10, help="community: a community must cover this many documents (a descriptor "
                                         "weighs the documents carrying it), else its descriptors are pruned")
    embedder: str = option("default", help="sentence-embedding model for clustering: default (all-MiniLM-L6-v2), "
                                           "hub id or folder")
    max_tokens: int = option(60, help="LLM generators: answer length in tokens")
    aspects: str = option("a topic, entity type, sentiment, style or other property",
                          help="LLM generators: what a descriptor names, phrased for the corpus (e.g. for reviews: "
                               "'the product, an aspect of it or the sentiment')")
    example_seed: int = option(0, help="LLM generators: seed drawing the prompt's one worked example from the corpus "
                                       "(its descriptors: the generator's own zero-shot answer)")
    compare_generator: str | None = option(None, help="a second generator (same forms as --generator): both run, and "
                                                      "their per-document agreement is reported (agreement.jsonl)")
    base_url: str | None = option(None, identity=False, help="openai: generator: an OpenAI-compatible endpoint")
    concurrency: int = option(4, identity=False, help="openai: generator: requests in flight")
    out: str = option("descriptors", required=True, identity=False, help="the output folder")
    overwrite: bool = option(False, identity=False, help="replace a folder made with other settings")

    def validate(self) -> None:
        kind, sep, target = self.generator.partition(":")
        if not sep or kind not in ("field", "local", "openai") or not target.strip():
            raise UserError(f"--generator {self.generator!r} is not a generator: use {GENERATOR_HELP}")
        if self.compare_generator is not None:
            kind, sep, target = self.compare_generator.partition(":")
            if not sep or kind not in ("field", "local", "openai") or not target.strip():
                raise UserError(f"--compare-generator {self.compare_generator!r} is not a generator: use "
                                f"{GENERATOR_HELP}")
        if not 0.0 <= self.cluster_threshold <= 2.0:
            raise UserError(f"--cluster-threshold {self.cluster_threshold} is not a cosine distance: use 0..2 "
                            "(0.2-0.4 merges near-synonyms)")
        if self.max_documents is not None and self.max_documents < 1:
            raise UserError(f"--max-documents {self.max_documents} must be at least 1")
        if self.cluster not in ("community", "agglomerative"):
            raise UserError(f"--cluster {self.cluster!r} is not a clustering: use community or agglomerative")
        if self.min_community < 1:
            raise UserError(f"--min-community {self.min_community} must be at least 1")
        require_at_least({"--max-tokens": self.max_tokens, "--concurrency": self.concurrency}, 1)


@dataclass
class ProbeSettings:
    """A `probe` dictionary: one logistic-regression direction per label of an annotation field."""

    cache: str = option(help="a pooled cache (`cli.py cache --pool ...`)")
    hook: str = option(help="the hook of the pooled cache to probe")
    descriptors: str = option(help="a `cli.py descriptors` folder: its documents.jsonl carries the annotation fields")
    field: str = option("topic", help="the annotation field whose values are the labels")
    min_documents: int = option(20, help="labels with fewer documents are left out")
    l2: float = option(1.0, help="inverse L2 strength C of scikit-learn's LogisticRegression")
    out: str = option("probe", required=True, identity=False, help="the dictionary folder to write")


@dataclass
class DescribeSettings:
    """Assign descriptors to every feature of some dictionaries from their top documents; measure it."""

    cache: str = option(help="a pooled cache (`cli.py cache --pool ...`)")
    dictionaries: list[str] = option(flag="--dict", help="dictionary folders (any kind)")
    descriptors: str = option(help="a `cli.py descriptors` folder")
    top_percent: float = option(1.0, help="a feature's exemplars: its top k percent of documents (the paper: 1)")
    threshold: float = option(0.2, help="the paper's rule: a descriptor is assigned when its frequency f(c) among "
                                        "the exemplars is >= T")
    frequency: str = option("occurrences", choices=("occurrences", "documents"),
                            help="f(c): occurrences = c's share of all descriptor occurrences among the exemplars "
                                 "(the paper); documents = the share of exemplar documents carrying c")
    min_lift: float | None = option(None, help="our addition, not the paper's: also require f(c) >= L times c's "
                                               "frequency in the corpus (e.g. 2), so the corpus's most common "
                                               "descriptors are not assigned to every feature (default: off)")
    min_exemplars: int = option(1, help="our addition: features active (> 0) on fewer documents get status none "
                                        "(default 1: the paper's rule; documents at activation <= 0 are never "
                                        "exemplars)")
    splits: int = option(5, help="consistency: random calibration/validation halves, each balanced on every "
                                 "descriptor (iterative stratification)")
    top_k: int = option(2, help="K of precision@K / recall@K (probe dictionaries and --judge)")
    seed: int = option(0, help="seed of the splits for consistency")
    gold_field: str | None = option(None, help="annotation field that maps each descriptor to a gold label (its "
                                               "majority label); default: the probe dictionary's field")
    judge: str | None = option(None, help="openai:<model> or local:<...>: asks whether each assigned descriptor "
                                          "fits the exemplars (precision@K from its answers)")
    judge_features: int = option(50, help="with --judge: described features judged per dictionary (seeded sample)")
    base_url: str | None = option(None, identity=False, help="the judge's OpenAI-compatible endpoint")
    plot: str | None = option(None, identity=False, help="PNG comparing the bases (described fraction, consistency "
                                                         "with 95% CI, descriptors per feature)")
    out: str = option("described", required=True, identity=False, help="the output folder")
    overwrite: bool = option(False, identity=False, help="replace a folder made with other settings")
    allow_model_mismatch: bool = option(False, identity=False, help=ALLOW_HELP)

    def validate(self) -> None:
        if not 0.0 < self.top_percent <= 100.0:
            raise UserError(f"--top-percent {self.top_percent} must be in (0, 100]: the paper uses 1")
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"--threshold {self.threshold} is a frequency: use a value in (0, 1]")
        if self.min_lift is not None and self.min_lift < 1.0:
            raise UserError(f"--min-lift {self.min_lift} below 1 would assign descriptors rarer among the exemplars "
                            "than in the corpus: use 1 or more, or leave it out (the paper's rule)")
        if self.frequency not in ("occurrences", "documents"):
            raise UserError(f"--frequency {self.frequency!r} is not a frequency: use occurrences (the paper) or "
                            "documents")
        require_at_least({"--top-k": self.top_k, "--min-exemplars": self.min_exemplars,
                          "--judge-features": self.judge_features, "--splits": self.splits}, 1)
        if self.judge is not None:
            kind, sep, target = self.judge.partition(":")
            if not sep or kind not in ("local", "openai") or not target.strip():
                raise UserError(f"--judge {self.judge!r} is not an LLM: use openai:<model> or local:<hub id|folder|"
                                "default>")
        if not self.dictionaries:
            raise UserError("no --dict given: pass at least one dictionary folder")
