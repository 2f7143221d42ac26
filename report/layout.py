"""The run folder: where the demo (`pipeline.demo`) writes each stage's output and where the report looks for it.

Layout written by `cli.py demo` (every path is optional for `cli.py report`)::

    RUN/
      demo_settings.json       the demo's settings (DemoSettings); a rerun must match them
      cache_train.h5           training activations (packed text)
      cache_frags.h5           explanation set (`--fragments`: one 64-token fragment per document)
      dicts/<name>/            one dictionary per folder: config.json (kind, hook, metrics) + weights.safetensors
      explanations/<run>/      `cli.py explain --out`: explanations.jsonl + config.json (+ llm_cache.sqlite)
      compare.json, compare.png  `cli.py compare` over every explanation run
      ioi/ioi.json             `cli.py patch-ioi --out` (+ ioi.png)
      stages/<stage>.json      completion markers, written last by each stage, with its wall time
      report/index.html        `cli.py report`

`cli.py report --run RUN` does not depend on these names: it finds every
dictionary by its config.json + weights.safetensors, every explanation run
by its explanations.jsonl and every IOI result by its ioi.json, anywhere
under RUN, so a hand-made folder of `train-sae` / `explain` / `patch-ioi`
outputs works too. Only the stage markers are read from `stages/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import runstate
from common.errors import UserError

SETTINGS_FILE = "demo_settings.json"
TRAIN_CACHE = "cache_train.h5"
FRAGMENT_CACHE = "cache_frags.h5"
DICTS_DIR = "dicts"
EXPLANATIONS_DIR = "explanations"
COMPARE_JSON = "compare.json"
COMPARE_PNG = "compare.png"
IOI_DIR = "ioi"
STAGES_DIR = "stages"
REPORT_DIR = "report"

RESULTS_FILE = "explanations.jsonl"  # explain.pipeline.RESULTS_FILE; repeated so discovery needs no import
IOI_FILE = "ioi.json"


class RunFolderError(UserError):
    """A run folder that cannot be read; the message says what to pass instead."""


@dataclass
class RunContents:
    """What `discover` found under a run folder (paths only; nothing is loaded yet)."""

    root: Path
    dictionaries: list[Path] = field(default_factory=list)
    explanation_runs: list[Path] = field(default_factory=list)  # folders holding explanations.jsonl
    ioi_results: list[Path] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] | None = None


def check_run_folder(run_dir: str | Path) -> Path:
    """--run, refused unless it is a folder (a file is called a file); before the output folder under it is named."""
    root = Path(run_dir)
    if not root.is_dir():
        what = "a file, not a run folder" if root.is_file() else "not a folder"
        raise RunFolderError(f"--run {str(root)!r} is {what}: pass the folder given to `cli.py demo --out` "
                             "(or any folder holding dictionaries, explanations and ioi.json)")
    return root


def discover(run_dir: str | Path, skip: Path | None = None) -> RunContents:
    """Walk `run_dir` once; `skip` (the report's own output folder) is not searched."""
    root = check_run_folder(run_dir)
    found = RunContents(root=root)
    skip_resolved = skip.resolve() if skip is not None else None
    for current, dirs, files in os.walk(root):
        here = Path(current)
        # hidden folders are temporary or checkpoint folders of the stages (e.g. ".train-<digest>")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip_resolved is None or (here / d).resolve() != skip_resolved))
        if "config.json" in files and "weights.safetensors" in files:
            found.dictionaries.append(here)
        if RESULTS_FILE in files:
            found.explanation_runs.append(here)
        if IOI_FILE in files:
            found.ioi_results.append(here / IOI_FILE)
    stages = root / STAGES_DIR
    if stages.is_dir():
        for path in sorted(stages.glob("*.json")):
            found.stages.append(read_json(path))
    settings = root / SETTINGS_FILE
    if settings.exists():
        found.settings = read_json(settings)
    return found


def read_json(path: Path) -> Any:
    """A JSON file of the run; an unreadable one is a one-line error saying how to get a good one."""
    return runstate.read_json(path, "a file of the run", "rerun the stage that wrote it, or delete it")
