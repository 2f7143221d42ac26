"""What an explain run's output folder holds besides the records, and what a rerun checks against it.

`OUT/config.json` holds every setting that decides the records (with the
cache's and each dictionary's identity); a rerun with different settings on
the same OUT is refused before anything is written. Runtime knobs
(`concurrency`) are kept under `runtime` and not compared.

Features are chosen per dictionary: `--feature-ids`, or `--features N` =
the first N of a permutation seeded with (seed, crc32 of the dictionary's
name), so a larger N only adds features.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.runstate import Claim, claim_output
from explain.records_file import RESULTS_FILE, read_records, rewrite_records
from explain.settings import ExplainSettings

CONFIG_FILE = "config.json"
LLM_CACHE_FILE = "llm_cache.sqlite"
EMBEDDINGS_FILE = "embeddings.sqlite"  # the embedding scorer's vectors (explain.llm.embedder)
FORMAT_VERSION = 1
RUNTIME_KEY = "runtime"
_DONE = ("ok", "skipped")  # statuses a rerun keeps; `failed` records are retried


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def dictionary_identity(folder: Path, d: Any) -> dict[str, Any]:
    weights = folder / "weights.safetensors"
    return {"path": str(folder), "name": d.name, "kind": d.kind, "hook": d.hook, "n_features": d.n_features,
            "weights_sha256": _file_digest(weights) if weights.exists() else None}


def config_doc(settings: ExplainSettings, cache_path: Path, cache: Any, folders: list[Path],
               dictionaries: list[Any]) -> dict[str, Any]:
    """The settings record of config.json (without `runtime`): what a rerun must match to resume."""
    return {**settings.to_json(), "cache": str(cache_path), "dicts": [str(f) for f in folders],
            "format_version": FORMAT_VERSION,
            "cache_identity": {"n_contexts": cache.n_contexts, "model_id": cache.model_id,
                               "context_length": cache.context_length,
                               "settings": str(cache.attrs.get("settings", ""))},
            "dictionaries": [dictionary_identity(f, d) for f, d in zip(folders, dictionaries)]}


def check_settings(claim: Claim, doc: dict[str, Any]) -> None:
    """Refuse an OUT made by another command, or by this one with other settings (nothing is written)."""
    out = claim.path
    if not (out / CONFIG_FILE).exists() and (out / RESULTS_FILE).exists():
        raise UserError(f"{out / RESULTS_FILE} exists without {CONFIG_FILE}: it was not made by this command; "
                        "choose another --out")
    claim.compare(doc)


def claim_run_folder(out: Path):
    """This process holds OUT for the run (`claim_output`: a second writer is refused); its record is config.json,
    whose `runtime` is not compared."""
    return claim_output(out, None, None, record=CONFIG_FILE, ignore=(RUNTIME_KEY,), what="explain run")


def write_config(claim: Claim, concurrency: int) -> None:
    claim.write_record({RUNTIME_KEY: {"concurrency": concurrency}})


def choose_features(n_features: int, name: str, count: int | None, feature_ids: list[int] | None,
                    seed: int) -> list[int]:
    if feature_ids:
        bad = [f for f in feature_ids if not 0 <= f < n_features]
        if bad:
            raise UserError(f"--feature-ids {bad} out of range for {name} ({n_features} features): "
                            f"pass ids in 0..{n_features - 1}")
        return sorted(set(int(f) for f in feature_ids))
    if count is None or count < 1:
        raise UserError(f"--features {count}: pass at least 1, or --feature-ids")
    if count > n_features:
        print(f"note: --features {count} is more than {name} has: it has {n_features} features, and all "
              f"{n_features} are explained")
    # A prefix of one seeded permutation: the features of --features 50 are among those of --features 100.
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    return sorted(int(f) for f in rng.permutation(n_features)[:count])


def done_features(results: Path) -> set[tuple[str, int]]:
    """(dictionary path, feature) of the records a rerun keeps; a torn last line is cut off and
    `failed` records are dropped from the file, so those features are done again."""
    records = read_records(results, repair=True)
    kept = [r for r in records if r.get("status") in _DONE]
    if len(kept) != len(records):
        print(f"retrying {len(records) - len(kept)} failed feature(s) from the previous run")
        rewrite_records(results, kept)
    return {(r["dictionary_path"], int(r["feature"])) for r in kept}
