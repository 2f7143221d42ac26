"""CLI entry points of the activations stage (called by cli.py)."""

from __future__ import annotations

from activations.cache_writer import cache_activations


def cache_command(**kwargs) -> None:
    cache_activations(**kwargs)


def hooks_command(model: str) -> None:
    from activations.hooks import list_hooks
    from activations.models import load_model

    loaded = load_model(model)
    config = loaded.model.config
    print(f"{model} ({config.model_type}, {loaded.source}): d_model {config.hidden_size}")
    for name, width in list_hooks(loaded.model):
        print(f"{name}\t{width}")
