"""Write activations of many hooks, in one corpus pass, to one HDF5 file; resumable.

This module decides what to run (checks, the torchrun and pooled branches,
resuming); the file's layout is `activations.cache_layout`, the write loop
`activations.batch_writer`. Each batch is written, flushed, and only then
counted in `n_contexts_done`; a killed run resumes to the same bytes.
"""

from __future__ import annotations

from pathlib import Path


from activations.batch_writer import write_batches
from activations.cache_layout import CacheResult, create_token_file, recorded_settings, resume_point
from activations.corpus import build_contexts, resolve_corpus
from activations.devices import check_device
from activations.distributed import launch_from_env
from activations.hooks import hook_width, validate_hooks
from activations.models import check_context_length, load_model
from common.notes import clipped_line
from common.runstate import Claim, check_output_file, claim_output
from activations.settings import CacheSettings

__all__ = ["CacheResult", "cache_activations", "write_cache"]


def cache_activations(
    model: str = "default",
    corpus: str = "default",
    hooks: list[str] | tuple[str, ...] = (),
    context_length: int = 128,
    max_tokens: int = 1_000_000,
    batch_size: int = 32,
    dtype: str = "float16",
    out: str | Path = "cache.h5",
    overwrite: bool = False,
    fragments: bool = False,
    device: str = "cpu",
    progress: bool = True,
    pool: str | None = None,
    text_column: str | None = None,
    max_documents: int | None = None,
    encoding: str | None = None,
) -> CacheResult:
    """Cache activations of `hooks` over `corpus`; resumes a killed run of the same settings.

    The keyword form of `write_cache` for Python callers (the names are `CacheSettings`' fields).
    """
    settings = CacheSettings(model=model, corpus=corpus, hooks=list(hooks), context_length=context_length,
                             max_tokens=max_tokens, batch_size=batch_size, dtype=dtype, fragments=fragments,
                             device=device, out=str(out), overwrite=overwrite, pool=pool, text_column=text_column,
                             max_documents=max_documents, encoding=encoding)
    return write_cache(settings, progress=progress)


def write_cache(settings: CacheSettings, progress: bool = True) -> CacheResult:
    """Cache activations as `settings` say; resumes a killed run of the same settings.

    Everything that can be checked without the model is checked first, before
    the (slow) model load and before any file is created: the numbers, the
    device, that --out can be written, the corpus, the hook names, and an
    existing file's settings. From the check of --out on, this process holds
    it (`claim_output`): a second `cache` into the same file is refused.
    Under `torchrun` (WORLD_SIZE > 1) each rank caches every N-th context
    into a shard file, joined by the main file (see `activations.shards`).
    """
    settings.validate()
    check_device(settings.device)
    out = check_output_file(settings.out)
    launch = launch_from_env()
    if launch.distributed:  # under torchrun: this rank writes its shard (see activations.shards)
        from activations.shards import write_cache_distributed

        return write_cache_distributed(settings, out, launch, progress)
    with claim_output(out, None, settings.overwrite, folder=False, read=recorded_settings, what="cache") as claim:
        return _write_cache_locked(settings, claim, progress)


def _write_cache_locked(settings: CacheSettings, claim: Claim, progress: bool) -> CacheResult:
    """`write_cache` once this process holds --out: no other writer can change the file from here on."""
    out = claim.path
    resolved = resolve_corpus(settings.corpus, settings.text_column, settings.encoding)
    settings.check_hooks()
    if settings.pool is not None:
        from activations.pooled import write_pooled

        return write_pooled(settings, resolved, claim, progress)
    record = settings.record(resolved.describe())
    done, complete = resume_point(claim, record)
    if complete is not None:
        return complete

    loaded = load_model(settings.model, device=settings.device)
    hook_points = validate_hooks(loaded.model, settings.hooks)
    check_context_length(loaded, settings.context_length)
    # Widths in the user's order: that is the order of /acts in the file.
    widths = {h: hook_width(loaded.model, next(p for p in hook_points if p.name == h)) for h in settings.hooks}
    tokens, stats = build_contexts(resolved.documents(), loaded.tokenizer, settings.context_length,
                                   settings.max_tokens // settings.context_length, fragments=settings.fragments)
    if len(tokens) < settings.max_tokens // settings.context_length:  # the file records both (n_contexts, settings)
        print(clipped_line("--max-tokens", settings.max_tokens, tokens.size,
                           f"tokens the corpus gives ({len(tokens)} contexts of {settings.context_length})"))
    if done is None:
        create_token_file(out, settings, record, loaded, tokens, widths, stats)
        done = 0
    return write_batches(out, settings, loaded.model, tokens, done, progress)


