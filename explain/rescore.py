"""`explain --rescore SRC`: score an earlier run's explanations again, without asking its explainer.

Why: an explanation costs an LLM call and a scoring pass may fail or be
worth redoing with another simulator (a server without logprobs, a better
model, text mode against logprob mode). The explainer's answers are in
SRC's SQLite call cache (`llm_cache.sqlite`), keyed by the full request, so
replaying the same plan (same exemplars, seed, format, best-of-k) against
that cache gives the same candidates without a single explainer request,
even for records written before failed records kept their explanation.

The run's settings must describe the same explanations as SRC's
config.json (`EXPLANATION_KEYS`); what scores them (simulator, scorers,
score mode, base URL) may differ, and the records go to another --out,
beside SRC, so both runs stay comparable (`compare` keeps them apart by
simulator and mode). A request the cache does not hold (a feature SRC never
explained) is a `failed` record of the explain step naming SRC; nothing is
sent anywhere.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from common.errors import UserError, first_line, refuse_file
from common.runstate import read_json
from explain.llm.base import LLMBackend, Messages
from explain.llm.cache import LLMCache
from explain.llm.errors import LLMError
from explain.run_folder import CONFIG_FILE, LLM_CACHE_FILE
from explain.settings import TOKENS, ExplainSettings

#: Keys of config.json that decide the explanations (and the exemplars they are scored on).
EXPLANATION_KEYS = ("cache", "dicts", "cache_identity", "dictionaries", "explainer", "format", "k", "seed",
                    "exemplars", "format_version")
# the flag to change when a key differs (the message names that one, not every flag of the list)
_FLAG_OF = {"cache": "--cache", "cache_identity": "--cache (its contents changed)", "dicts": "--dict",
            "dictionaries": "--dict (their weights changed)", "explainer": "--explainer", "format": "--format",
            "k": "--best-of", "seed": "--seed", "exemplars": "--random and --seed",
            "format_version": "version of the toolkit"}
_GENERATE_KEYS = {"op", "messages", "n", "temperature", "max_tokens", "seed"}


def source_folder(settings: ExplainSettings, out: Path) -> Path:
    """SRC, checked: an explain --out folder other than this run's."""
    src = Path(str(settings.rescore)).resolve()
    refuse_file(settings.rescore, "--rescore", "an explain run folder", "pass the --out folder of an earlier "
                "`cli.py explain` run")
    if not (src / CONFIG_FILE).is_file():
        raise UserError(f"--rescore {settings.rescore}: no {CONFIG_FILE} there; pass the --out folder of an "
                        "earlier `cli.py explain` run")
    if src == out.resolve():
        raise UserError(f"--rescore {settings.rescore} is this run's --out: write the rescored records to another "
                        "--out folder")
    return src


def check_source(src: Path, doc: dict[str, Any]) -> None:
    """Refuse a SRC whose explanations are not the ones this run's settings describe (nothing written yet)."""
    old = read_json(src / CONFIG_FILE, "the settings of an explain run", "pass another --rescore folder")
    if not isinstance(old, dict):
        raise UserError(f"--rescore: {src / CONFIG_FILE} is not the settings of an explain run; pass another folder")
    for key in EXPLANATION_KEYS:
        if old.get(key) != doc.get(key):
            raise UserError(f"--rescore {src}: its {key} is {json.dumps(old.get(key))[:120]}, this run's is "
                            f"{json.dumps(doc.get(key))[:120]}; pass the same {_FLAG_OF.get(key, key)} as that run")


class CachedExplainerBackend(LLMBackend):
    """An explainer backend that only replays SRC's cached `generate` answers; it never sends a request."""

    capabilities = frozenset({"generation"})
    thread_safe = True  # it only reads SRC's cache, whose reads are under the cache's lock

    def __init__(self, spec: str, src: Path):
        self.src = src
        self.name = f"{spec} (answers from {src / LLM_CACHE_FILE})"
        self.identities = _explainer_identities(src / LLM_CACHE_FILE, spec)
        super().__init__(LLMCache(src / LLM_CACHE_FILE))

    def identity(self) -> dict[str, Any]:
        return self.identities[0]

    def generate(self, messages: Messages, *, n: int = 1, temperature: float = 1.0, max_tokens: int = 60,
                 seed: int = 0) -> list[str]:
        for ident in self.identities:
            hit = self.cache.get({"op": "generate", **ident, "messages": messages, "n": int(n),
                                  "temperature": float(temperature), "max_tokens": int(max_tokens), "seed": int(seed)})
            if hit is not None:
                return list(hit["texts"])
        raise LLMError(f"{self.src / LLM_CACHE_FILE} holds no answer of the explainer to this request: that run "
                       "never explained this feature (rescore only what it explained)")

    def close(self) -> None:
        self.cache.close()


def _explainer_identities(path: Path, spec: str) -> list[dict[str, Any]]:
    """The backend identities (model, endpoint, weights) under which SRC's explainer answers are cached."""
    kind, _, model = spec.partition(":")
    if not path.is_file():
        raise UserError(f"--rescore: {path} does not exist, so the explainer's answers cannot be replayed; "
                        "pass a folder written by `cli.py explain` with an LLM explainer")
    try:
        with closing(sqlite3.connect(str(path))) as conn:
            rows = conn.execute("SELECT request FROM calls WHERE json_extract(request, '$.op') = 'generate' "
                                "AND json_extract(request, '$.backend') = ?", (kind,)).fetchall()
    except sqlite3.DatabaseError as err:
        raise UserError(f"--rescore: cannot read {path}: {first_line(err)}") from err
    found: dict[str, dict[str, Any]] = {}
    for (text,) in rows:
        ident = {k: v for k, v in json.loads(text).items() if k not in _GENERATE_KEYS}
        if kind != "openai" or ident.get("model") == model:
            found.setdefault(json.dumps(ident, sort_keys=True), ident)
    if not found:
        raise UserError(f"--rescore: {path} holds no answer of the explainer {spec}; pass the folder of the run "
                        "that explained with it")
    return list(found.values())


def source_explainer(settings: ExplainSettings, src: Path) -> tuple[Any, CachedExplainerBackend | None]:
    """(the rescore run's explainer, its replaying backend to close): SRC's explainer answered from SRC's cache
    (the token-list one needs no LLM, so it is simply run again)."""
    if settings.explainer == TOKENS:
        from explain.token_list import TokenListExplainer

        return TokenListExplainer(), None
    from explain.explainer import ExplainerConfig, LLMExplainer

    backend = CachedExplainerBackend(settings.explainer, src)
    config = ExplainerConfig(format=settings.prompt_format, k=settings.best_of, seed=settings.seed)
    return LLMExplainer(backend, config), backend
