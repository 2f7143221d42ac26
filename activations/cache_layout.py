"""The activation cache's file layout, in one place: what the writers create and the readers trust.

Dataset names and dtypes (`/tokens`, `/acts/<hook>`, bfloat16 kept as its
bits), chunking, the file attributes every cache carries (`run_attrs`,
`cache_attrs`), the check of an existing file before a run resumes it
(`recorded_settings`, for `common.runstate.claim_output`), and how a batch becomes what the file stores
(`stored_array`, which refuses a value that would not be finite there).
The token-level writer (`activations.cache_writer`), the torchrun shards
(`activations.shards`), the pooled writer (`activations.pooled`) and the
readers import from here, and from nowhere else, what a cache file is.

Crash safety starts here: every dataset is created at its final size with
all chunks allocated up front (ALLOC_TIME_EARLY), so during a run only raw
data and one integer attribute change on disk, never the file's index
structures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from common.errors import UserError, first_line
from common.runstate import Claim, replace_atomically, require_same_settings, staging_file
from activations.settings import CacheSettings, record_json

FORMAT_VERSION = 1
_TARGET_CHUNK_BYTES = 1 << 20
# How each --dtype is held in the file. HDF5 has no bfloat16 type, so bfloat16 values are stored exactly as
# their 16-bit patterns in uint16 datasets (the dataset's `encoding` attribute says so); `ActivationCache`
# turns them back into float32 without loss (a bfloat16 is the upper half of a float32).
STORAGE = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32),
           "bfloat16": (np.uint16, torch.bfloat16)}
BFLOAT16_ENCODING = "bfloat16-bits"
_RANGE = {"float16": "65504", "bfloat16": "3.4e38", "float32": "3.4e38"}


@dataclass(frozen=True)
class CacheResult:
    path: Path
    n_contexts: int
    tokens_written: int  # by this call (0 if the file was already complete)
    seconds: float  # the forward-and-write loop only, not model loading

    def __fspath__(self) -> str:  # usable wherever a path is expected
        return str(self.path)


def early_alloc_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def recorded_settings(out: Path, world_size: int = 1) -> dict[str, dict]:
    """{"file": the settings an existing cache was made with}, for `Claim.compare`; {} if there is no file.

    A file this tool did not write, and an unfinished file begun by another
    number of processes (`world_size`, torchrun: which contexts go where
    depends on it), are refused.
    """
    if not out.exists():
        return {}
    fix = "choose another --out or pass --overwrite"
    try:
        f = h5py.File(out, "r")
    except OSError as err:
        raise UserError(unreadable_cache(out, err, fix)) from err
    try:
        with f:
            stored = json.loads(f.attrs["settings"])
            done = int(f.attrs["n_contexts_done"])
            total = int(f.attrs.get("n_contexts", done))
            written_by = int(f.attrs.get("world_size", 1))
        if not isinstance(stored, dict):
            raise TypeError("settings is not a JSON object")
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{out} exists but is not an activation cache this tool wrote: {fix}") from err
    if written_by != world_size and done < total:  # which contexts go where depends on the number of processes
        how = ("one process (without torchrun)" if written_by == 1 else
               f"`torchrun --nproc_per_node {written_by} cli.py cache ...`")
        raise UserError(f"{out} is an unfinished cache of {written_by} process(es), not {world_size}: resume it with "
                        f"{how} (same arguments), or pass --overwrite")
    return {"file": stored}


def check_existing(out: Path, record: dict, world_size: int = 1) -> int | None:
    """Contexts already done in a file made with the same settings; None if no file. For a check before the
    file is claimed (`claim_output` with `recorded_settings` compares it again under the lock)."""
    recorded = recorded_settings(out, world_size)
    if not recorded:
        return None
    require_same_settings(recorded["file"], record, f"--out {str(out)!r}", source="file", can_overwrite=True,
                          what="cache")
    return contexts_done(out)[0]


def contexts_done(out: Path) -> tuple[int, int]:
    """(contexts written, contexts the file holds) of an existing cache."""
    with h5py.File(out, "r") as f:
        done = int(f.attrs["n_contexts_done"])
        return done, int(f.attrs.get("n_contexts", done))


def chunk_rows(n: int, per_context_bytes: int) -> int:
    """Contexts per HDF5 chunk: about 1 MiB, at least one context, at most all of them."""
    return max(1, min(n, _TARGET_CHUNK_BYTES // per_context_bytes))


def create_tokens(f: h5py.File, n: int, ctx: int) -> h5py.Dataset:
    return f.create_dataset("tokens", shape=(n, ctx), maxshape=(None, ctx), dtype=np.int32,
                            chunks=(chunk_rows(n, ctx * np.dtype(np.int32).itemsize), ctx), dcpl=early_alloc_dcpl())


def create_token_file(out: Path, settings: CacheSettings, record: dict, loaded, tokens: np.ndarray, widths: dict[str, int],
                 stats: dict, extra_attrs: dict | None = None) -> None:
    """The empty cache at its final size; `extra_attrs` (a torchrun shard's place) go after the usual ones."""
    n, ctx = tokens.shape
    storage = STORAGE[settings.dtype][0]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build the empty file under a temporary name and rename it into place, so
    # a kill during creation never leaves a file that a rerun cannot resume.
    with staging_file(out) as partial:
        with h5py.File(partial, "w") as f:
            create_tokens(f, n, ctx)
            acts = f.create_group("acts")
            for name, d in widths.items():
                rows = chunk_rows(n, ctx * d * np.dtype(storage).itemsize)
                ds = acts.create_dataset(name, shape=(n, ctx, d), maxshape=(None, ctx, d), dtype=storage,
                                         chunks=(rows, ctx, d), dcpl=early_alloc_dcpl())
                if settings.dtype == "bfloat16":
                    ds.attrs["encoding"] = BFLOAT16_ENCODING
            f.attrs.update({**cache_attrs(settings, record, loaded, n, ctx, widths, stats), **(extra_attrs or {})})
        replace_atomically(partial, out)


def cache_attrs(settings: CacheSettings, record: dict, loaded, n: int, ctx: int, widths: dict[str, int],
                stats: dict) -> dict:
    """Every attribute of a new token-level cache of `n` contexts (none finished yet), in the order written."""
    return {
        **run_attrs(settings, loaded, record, ctx, widths),
        "fragments": settings.fragments,
        "bos_prepended": bool(stats["bos_prepended"]),
        "documents_read": int(stats["documents_read"]),
        "documents_too_short": int(stats["documents_too_short"]),
        "n_contexts": n,
        "n_contexts_done": 0,
    }


def run_attrs(settings: CacheSettings, loaded, record: dict, ctx: int, widths: dict[str, int]) -> dict:
    """The file attributes every cache shares (token-level and pooled): what model, data and layout wrote it.

    The model's fingerprint is what dictionaries trained on this cache copy, so that every command pairing a
    dictionary with a cache or a model can tell another model of the same width (`activations.provenance`).
    """
    from activations.provenance import model_fingerprint

    return {
        "format_version": FORMAT_VERSION,
        "settings": record_json(record),
        "model_id": settings.model,
        "model_source": loaded.source,
        "model_revision": loaded.revision,
        "model_fingerprint": model_fingerprint(loaded.model),
        "model_type": str(loaded.model.config.model_type),
        "tokenizer": str(getattr(loaded.tokenizer, "name_or_path", "")),
        "dtype": settings.dtype,
        "context_length": ctx,
        "hooks": json.dumps(list(settings.hooks)),
        "widths": json.dumps(widths),
        "corpus": record["corpus"],
    }


def stored_array(x: torch.Tensor, dtype: str, hook: str, contexts: tuple[int, int], out: Path) -> np.ndarray:
    """`x` as the file stores it; a value that is not finite there is a one-line error, never a silent inf."""
    stored = x.to("cpu", STORAGE[dtype][1])
    if not bool(torch.isfinite(stored).all()):
        raise _non_finite(x, stored, dtype, hook, contexts, out)
    if dtype == "bfloat16":
        return stored.view(torch.int16).numpy().view(np.uint16)
    return stored.numpy()


def _non_finite(x: torch.Tensor, stored: torch.Tensor, dtype: str, hook: str, contexts: tuple[int, int],
                out: Path) -> UserError:
    bad = ~torch.isfinite(stored)
    where = bad.nonzero()[0].tolist()  # first bad (context in batch, position, unit)
    at = f"context {contexts[0] + where[0]}, position {where[1]}"
    kept = (f"the {contexts[0]} contexts before it are written and the file stays resumable"
            if contexts[0] else "nothing was written yet")
    raw = x.detach().float().cpu()
    if not bool(torch.isfinite(raw[bad]).all()):
        return UserError(f"the model itself produced NaN or inf at {hook} ({at}) of {out}; --dtype cannot fix that: "
                         f"check the model and its weights ({kept})")
    largest = float(raw[torch.isfinite(raw)].abs().max())
    return UserError(f"{hook} has values beyond {dtype}'s range ({largest:.3g} > {_RANGE[dtype]}, at {at}), which "
                     f"--dtype {dtype} would store as inf; rerun with --dtype float32 (or bfloat16: float32's range in "
                     f"16 bits) and --overwrite ({kept})")


def resume_point(claim: Claim, record: dict, unit: str = "contexts") -> tuple[int | None, CacheResult | None]:
    """(how many are done, or None for a new file; the result to return at once when the file is already complete).

    One rule for every writer: an existing file is resumed only with the same settings (`claim.compare`,
    reading `recorded_settings`; --overwrite starts a new file).
    """
    if not claim.compare(record).resumes:
        return None, None
    done, total = contexts_done(claim.path)
    if done >= total:
        print(f"{claim.path} is already complete ({total} {unit}); nothing to do.")
        return done, CacheResult(claim.path, total, 0, 0.0)
    return done, None


def unreadable_cache(path: Path, err: OSError, fix: str) -> str:
    """Why h5py cannot open `path`, in words: in use by a writer, a damaged HDF5 file, or no HDF5 file at all."""
    text = str(err)
    if "unable to lock file" in text.lower():
        return f"{path} is open in another process that is writing it (HDF5 file lock): wait for it to finish"
    if h5py.is_hdf5(path):
        return (f"{path} is a corrupt HDF5 file (truncated or damaged: {first_line(err)}): it cannot be read; "
                f"{fix}")
    return f"{path} is not an HDF5 file, so not an activation cache written by `cli.py cache`: {fix}"
