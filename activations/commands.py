"""CLI entry points of the activations stage: each takes its settings object (see `activations.settings`)."""

from __future__ import annotations

from activations.settings import CacheSettings, HooksSettings


def cache_command(settings: CacheSettings):
    """`cli.py cache`: returns the `CacheResult` (path, contexts, tokens written, seconds)."""
    from activations.cache_writer import write_cache

    return write_cache(settings)


def hooks_command(settings: HooksSettings) -> None:
    from activations.hooks import list_hooks
    from activations.models import load_model

    loaded = load_model(settings.model)
    config = loaded.model.config
    print(f"{settings.model} ({config.model_type}, {loaded.source}): d_model {config.hidden_size}")
    for name, width in list_hooks(loaded.model):
        print(f"{name}\t{width}")
