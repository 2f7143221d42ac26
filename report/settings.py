"""Settings of `cli.py report`: the one place its options are written (imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from common.options import option
from activations.provenance import ALLOW_HELP


@dataclass
class ReportSettings:
    """Which run folder to read and where index.html goes; nothing here decides a stored result."""

    run: str = option(required=True, identity=False,
                      help="run folder (from `demo`, or any folder of dictionaries, explanations, ioi.json)")
    out: str | None = option(None, identity=False,
                             help="output folder for index.html and its PNGs (default: RUN/report)")
    descriptors: list[str] = option(default_factory=list, identity=False, metavar="DESCRIBE_OUT",
                                    help="`cli.py describe` output folders (descriptors.jsonl, summary.json): "
                                         "descriptor chips on the feature cards and the comparison of bases")
    features_cache: str | None = option(None, identity=False, metavar="CACHE",
                                        help="activation cache the feature pages are computed from (default: "
                                             "RUN/cache_frags.h5, else the cache an explanation run read; none: "
                                             "no feature pages)")
    max_features: int | None = option(None, identity=False, metavar="N",
                                      help="feature pages for the first N features of each dictionary "
                                           "(default: all; 0: none)")
    allow_model_mismatch: bool = option(False, identity=False, help=ALLOW_HELP)
