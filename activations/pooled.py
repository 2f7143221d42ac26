"""Document-level activations: one pooled vector per document and hook (`cli.py cache --pool ...`).

Descriptor discovery (Mondal et al.) ranks whole documents by a feature's
activation, so it needs one vector per document, not per token. Each
document is tokenized on its own with the model's special tokens ([CLS] ...
[SEP] for BERT, BOS for Llama), truncated at --context-length, and batched
with right padding; the attention mask keeps padding out of the model and
out of the pooling (mean and max see only real tokens, `last` is the last
real token, `cls` the first). Batches are padded only to their longest
document, and their boundaries depend only on the corpus and --batch-size,
so a resumed run recomputes exactly the batches an uninterrupted one would.

File layout (beside the token-level cache's attributes, plus `pool`):
`/pooled/<hook>` [n_documents, d], `/doc_ids` (UTF-8 strings, the corpus
ids that join annotations), `/lengths` [n] (tokens kept per document) and
`/tokens` [n, context_length] (padded with 0 beyond `lengths`). Resumption
and crash safety are the token-level cache's: datasets allocated up front,
each batch flushed before `n_contexts_done` (here: documents) counts it.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from activations.cache_layout import (BFLOAT16_ENCODING, STORAGE, CacheResult, early_alloc_dcpl, resume_point,
                                      run_attrs, stored_array)
from activations.corpus import Corpus
from common.errors import UserError
from common.notes import clipped_line
from activations.hooks import hook_width, is_encoder, run_with_cache, validate_hooks
from activations.models import check_context_length, load_model
from common.runstate import Claim, replace_atomically, staging_file
from activations.settings import CacheSettings

_TOKENIZE_BATCH = 256


def pool_hidden(x: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """[batch, pos, d] activations and a [batch, pos] 0/1 mask of real tokens -> [batch, d] float32.

    Padding never reaches the result: mean divides by the real-token count,
    max fills padding with -inf, last picks the last real position.
    """
    x = x.float()
    real = mask.to(x.device).bool()
    if pool == "cls":
        return x[:, 0]
    if pool == "mean":
        weights = real.unsqueeze(-1).float()
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if pool == "max":
        return x.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(1)
    if pool == "last":
        last = real.long().sum(1) - 1
        return x[torch.arange(x.shape[0], device=x.device), last]
    raise UserError(f"pool {pool!r} is not a pooling: use cls, mean, max or last")


def tokenize_documents(texts: list[str], tokenizer, context_length: int) -> list[list[int]]:
    """Each document's token ids with the model's own special tokens, truncated at `context_length`."""
    ids: list[list[int]] = []
    for i in range(0, len(texts), _TOKENIZE_BATCH):
        encoded = tokenizer(texts[i:i + _TOKENIZE_BATCH], add_special_tokens=True, truncation=True,
                            max_length=context_length)["input_ids"]
        ids.extend(list(map(int, row)) for row in encoded)
    return ids


def padded_batch(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [b, longest] input ids and the matching 0/1 attention mask."""
    width = max(len(row) for row in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return tokens, mask


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0  # masked out anyway: any valid id will do


def write_pooled(settings: CacheSettings, corpus: Corpus, claim: Claim, progress: bool) -> CacheResult:
    """The pooled cache of `settings` at the claimed --out; resumes a killed run of the same settings."""
    out = claim.path
    record = settings.record(corpus.describe())
    done, complete = resume_point(claim, record, unit="documents")
    if complete is not None:
        return complete
    documents = []
    for doc in corpus.records():
        documents.append(doc)
        if settings.max_documents is not None and len(documents) >= settings.max_documents:
            break
    if not documents:
        raise UserError(f"corpus {settings.corpus!r} has no non-empty document: pass another --corpus")
    if settings.max_documents is not None and len(documents) < settings.max_documents:  # the file records both
        print(clipped_line("--max-documents", settings.max_documents, len(documents), "documents of the corpus"))
    loaded = load_model(settings.model, device=settings.device)
    hook_points = validate_hooks(loaded.model, settings.hooks)
    check_context_length(loaded, settings.context_length)
    widths = {h: hook_width(loaded.model, next(p for p in hook_points if p.name == h)) for h in settings.hooks}
    ids = tokenize_documents([d.text for d in documents], loaded.tokenizer, settings.context_length)
    empty = [d.id for d, row in zip(documents, ids) if not row]
    if empty:
        raise UserError(f"document {empty[0]!r} has no tokens ({len(empty)} such): drop it from the corpus")
    if done is None:
        _create(out, settings, record, loaded, [d.id for d in documents], ids, widths)
        done = 0
    return _write(out, settings, loaded.model, ids, _pad_id(loaded.tokenizer), done, progress)


def _create(out: Path, settings: CacheSettings, record: dict, loaded, doc_ids: list[str], ids: list[list[int]],
            widths: dict[str, int]) -> None:
    """The empty pooled file at its final size (ids, lengths and tokens filled), renamed into place."""
    n, ctx = len(ids), settings.context_length
    storage = STORAGE[settings.dtype][0]
    tokens = np.zeros((n, ctx), dtype=np.int32)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = row
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_file(out) as partial:
        with h5py.File(partial, "w") as f:
            f.create_dataset("tokens", data=tokens, chunks=(max(1, min(n, (1 << 20) // (ctx * 4))), ctx))
            f.create_dataset("lengths", data=np.asarray([len(r) for r in ids], dtype=np.int32))
            f.create_dataset("doc_ids", data=doc_ids, dtype=h5py.string_dtype("utf-8"))
            group = f.create_group("pooled")
            for name, d in widths.items():
                rows = max(1, min(n, (1 << 20) // (d * np.dtype(storage).itemsize)))
                ds = group.create_dataset(name, shape=(n, d), dtype=storage, chunks=(rows, d), dcpl=early_alloc_dcpl())
                if settings.dtype == "bfloat16":
                    ds.attrs["encoding"] = BFLOAT16_ENCODING
            f.attrs.update({
                **run_attrs(settings, loaded, record, ctx, widths),
                "encoder": is_encoder(loaded.model),
                "pool": settings.pool,
                "fragments": False,
                "bos_prepended": False,
                "documents_read": n,
                "documents_too_short": 0,
                "n_contexts": n,
                "n_contexts_done": 0,
            })
        replace_atomically(partial, out)


def _write(out: Path, settings: CacheSettings, model, ids: list[list[int]], pad_id: int, done: int,
           progress: bool) -> CacheResult:
    """Forward, pool and write every batch from document `done` on; the counter follows the flushed data."""
    n = len(ids)
    bar = tqdm(total=n, initial=done, unit="doc", desc=f"pool {out.name}", disable=not progress, smoothing=0.1)
    started = time.perf_counter()
    written = 0
    try:
        with h5py.File(out, "r+") as f:
            datasets = {name: f["pooled"][name] for name in settings.hooks}
            # batch starts are multiples of batch_size from 0, whatever `done` is: a resumed run redoes the partial
            # batch with the boundaries of the first run, so padding (and every float) is the same
            first = done - done % settings.batch_size
            for start in range(first, n, settings.batch_size):
                stop = min(n, start + settings.batch_size)
                tokens, mask = padded_batch(ids[start:stop], pad_id)
                acts = run_with_cache(model, tokens.to(settings.device), settings.hooks,
                                      attention_mask=mask.to(settings.device))
                for name, ds in datasets.items():
                    pooled = pool_hidden(acts[name], mask, settings.pool)
                    ds[start:stop] = stored_array(pooled, settings.dtype, name, (start, stop), out)
                f.flush()
                f.attrs["n_contexts_done"] = stop
                f.flush()
                written += int(mask.sum())
                bar.update(stop - max(start, done))
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    if progress:
        print(f"wrote {n} documents pooled by {settings.pool} at {len(settings.hooks)} hooks to {out} in {elapsed:.1f}s")
    return CacheResult(out, n, written, elapsed)
