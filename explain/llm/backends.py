"""Choose an LLM backend by one string: `local:<hub id|folder|default>` or `openai:<model>`.

This is the entry point the pipeline uses::

    from explain.llm.backends import make_backend, LLMError
    from explain.llm.cache import LLMCache

    cache = LLMCache(out_dir / "llm_cache.sqlite")
    backend = make_backend("local:default", cache=cache)           # or
    backend = make_backend("openai:gpt-4o-mini", base_url=None, concurrency=4, cache=cache)

Create one backend per distinct spec and reuse it for the explainer and the
simulator when both specs are equal (a local model is loaded once per
backend). Any `LLMError` raised by a backend is a failed request: record the
feature as ``failed`` with the message. `BackendConfigError` (a `UserError`)
is a mistake in the arguments. The `tokens` explainer/simulator is not an LLM
backend and is handled by the pipeline before calling this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from explain.llm.base import DigitReadout, LLMBackend
from explain.llm.errors import BackendConfigError, LLMError
from explain.llm.cache import LLMCache

__all__ = ["make_backend", "parse_spec", "LLMBackend", "DigitReadout", "LLMError", "BackendConfigError", "LLMCache"]

KINDS = ("local", "openai")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split "kind:target" and check it; both parts are required (`local:default` is the offline model)."""
    kind, sep, target = spec.partition(":")
    if not sep or kind not in KINDS:
        raise BackendConfigError(
            f"unknown LLM backend {spec!r}: use tokens (no LLM), local:<hub id|folder|default> or openai:<model>"
        )
    if kind == "local" and not target.strip():
        raise BackendConfigError(f"{spec!r} names no model: use local:default for the offline model, "
                                 "or local:<hub id|folder>")
    if kind == "openai" and not target.strip():
        raise BackendConfigError(f"{spec!r} names no model: use openai:<model>, e.g. openai:gpt-4o-mini")
    return kind, target


def make_backend(
    spec: str,
    *,
    base_url: str | None = None,
    concurrency: int = 4,
    cache: LLMCache | str | Path | None = None,
    **options: Any,
) -> LLMBackend:
    """Build the backend named by `spec`; `options` go to `LocalBackend` / `OpenAIBackend`.

    `cache` may be an `LLMCache`, a path to one (created if missing) or None
    (no caching). `base_url` only applies to `openai:`; `concurrency` bounds
    in-flight requests of `openai:` (a local model runs one batch at a time).
    """
    kind, target = parse_spec(spec)
    if not isinstance(cache, LLMCache):
        cache = LLMCache(cache)
    if kind == "local":
        if base_url:
            raise BackendConfigError("--base-url only applies to openai:<model> backends; drop it for local:")
        from explain.llm.local import LocalBackend

        return LocalBackend.from_spec(target, cache=cache, **options)
    from explain.llm.remote import OpenAIBackend

    return OpenAIBackend(target, base_url=base_url, concurrency=concurrency, cache=cache, **options)


def check_local_paths(specs: list[str | None], embedder: str | None = None) -> None:
    """Refuse a `local:<folder>` backend or an embedder folder that does not exist, before a command writes
    anything: the check `load_model` makes when it loads them, done early so that a typo fixed on the rerun is
    not then refused as "other settings" of a folder the failed run started."""
    from activations.models import check_local_path

    for spec in specs:
        kind, _, target = (spec or "").partition(":")
        if kind == "local" and target != "default":
            check_local_path(target, default_hint="local:default")
    if embedder and embedder != "default":
        check_local_path(embedder, default_hint="default")
