"""What a cache or a dictionary was made from, and whether the two belong together.

Why one module: a dictionary applied to the activations of a model it was not
trained on gives numbers that look right when the widths agree (a full,
plausible IOI curve from another model's dictionary). Every command that pairs
a dictionary with a cache or a model (`patch-ioi`, `explain`, `evaluate`,
`report`, `describe`, `baselines --topk-from`) calls `check_pairing` before any
work, so the refusal is worded the same everywhere and one flag,
`--allow-model-mismatch`, overrides it; the commands record its use in their
output.

A model is identified by a fingerprint of its weights (`model_fingerprint`),
which a cache records when it is written and a dictionary copies from its
cache. Files from before the fingerprint existed (or SAEs from other
libraries) carry only a model name; those are compared by name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from common.errors import UserError

ALLOW_FLAG = "--allow-model-mismatch"
ALLOW_HELP = ("use dictionaries with a cache or model other than the one they were trained on (e.g. a fine-tune's "
              "dictionary on its base model); the output records that it was used")
RECORD_KEYS = ("model_id", "model_source", "model_revision", "model_fingerprint")
_SAMPLE = 4096  # elements hashed per parameter tensor: cheap for any size, and a fine-tune changes them all
_NO_REVISION = ("", "local", "main", "None")
UNRECORDED = "synthetic"  # sae.data.TensorSource's model_id: data handed in from Python, of no recorded model


class ModelMismatch(UserError):
    """A dictionary paired with a cache or model other than the one it was made from."""


def model_fingerprint(model: Any) -> str:
    """16 hex digits identifying a model's weights: the shape and first elements of every parameter tensor.

    Every tensor is sampled (not just the embedding), so a fine-tune that froze
    the embeddings still differs from its base; the same weights loaded from
    another folder or onto another device agree. Names are left out, so a model
    saved and reloaded under another class name still matches.
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for p in model.parameters():
            h.update(repr(tuple(p.shape)).encode())
            h.update(p.detach().reshape(-1)[:_SAMPLE].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def loaded_record(loaded: Any) -> dict[str, str]:
    """The model record of a `LoadedModel` (what a cache stores in its attributes and a dictionary copies)."""
    return {"model_id": str(loaded.model_id), "model_source": str(loaded.source),
            "model_revision": str(loaded.revision), "model_fingerprint": model_fingerprint(loaded.model)}


def record_of(mapping: Mapping[str, Any]) -> dict[str, str]:
    """The model record in a cache's attributes or a dictionary's config.json (missing keys left out).

    A probe dictionary names its model under "model"; it is read as model_id. "synthetic" (what a dictionary
    trained in Python on in-memory data records) names no model, so it is left out: such a side does not say.
    """
    record = {k: str(mapping[k]) for k in RECORD_KEYS if mapping.get(k) not in (None, "")}
    if "model_id" not in record and isinstance(mapping.get("model"), str) and mapping["model"]:
        record["model_id"] = mapping["model"]
    if record.get("model_id") == UNRECORDED:
        del record["model_id"]
    return record


def _names(record: Mapping[str, str]) -> set[str]:
    """The ways a record names its model: as given, the folder loaded, and their last path parts (a folder moved
    or a hub id given with or without its organisation, as SAELens names models)."""
    names = {record.get("model_id", ""), record.get("model_source", "")} - {""}
    for name in list(names):
        names.add(Path(name).name)
        path = Path(name).expanduser()
        if path.exists():
            names.add(str(path.resolve()))
    return names - {""}


def _shown(record: Mapping[str, str]) -> str:
    name = record.get("model_id") or record.get("model_source") or "(unknown)"
    revision = record.get("model_revision", "")
    return f"{name!r}" + (f" at revision {revision}" if revision not in _NO_REVISION else "")


def mismatch(made_from: Mapping[str, str], used_on: Mapping[str, str]) -> str | None:
    """Why two model records name different models, or None when they agree or one side does not say.

    Fingerprints decide when both sides have one; otherwise names, and then
    revisions of the same hub model.
    """
    a, b = made_from.get("model_fingerprint"), used_on.get("model_fingerprint")
    if a and b:
        return None if a == b else f"weights differ (fingerprint {a} vs {b})"
    names_a, names_b = _names(made_from), _names(used_on)
    if not names_a or not names_b:
        return None
    if not names_a & names_b:
        return "names differ"
    rev_a, rev_b = made_from.get("model_revision", ""), used_on.get("model_revision", "")
    if rev_a not in _NO_REVISION and rev_b not in _NO_REVISION and rev_a != rev_b:
        return f"revisions differ ({rev_a} vs {rev_b})"
    return None


def check_pairing(dictionary: Any, used_on: Mapping[str, Any], where: str, allow: bool = False) -> dict[str, Any]:
    """Refuse (ModelMismatch, one line naming both sides) a dictionary made from another model than `used_on`'s.

    `used_on` is a model record (`loaded_record`, or `record_of(cache.attrs)`);
    `where` names it for the message ("cache c.h5", "--model gpt2"). With
    `allow` the mismatch is printed as a note instead. Returns what the command
    records in its output: {"dictionary", "made_from", "used_on", "status"},
    status "same model", "not recorded" (a side that does not say) or
    "mismatch allowed (...)".
    """
    made_from = record_of(getattr(dictionary, "config", {}) or {})
    used = record_of(used_on)
    entry = {"dictionary": str(getattr(dictionary, "name", "")), "made_from": made_from, "used_on": used}
    why = mismatch(made_from, used)
    if why is None:
        known = (made_from.get("model_fingerprint") and used.get("model_fingerprint")) or (_names(made_from) and
                                                                                          _names(used))
        entry["status"] = "same model" if known else "not recorded"
        return entry
    text = (f"dictionary {entry['dictionary']!r} was trained on model {_shown(made_from)} but {where} is from model "
            f"{_shown(used)} ({why})")
    if not allow:
        raise ModelMismatch(f"{text}: use a dictionary trained on this model (or a cache/--model of the model it was "
                            f"trained on), or pass {ALLOW_FLAG} if you mean it (e.g. a fine-tune's dictionary on "
                            "its base)")
    print(f"note: {text}; used anyway because of {ALLOW_FLAG}")
    entry["status"] = f"mismatch allowed ({why})"
    return entry
