"""Errors of the LLM layer.

`LLMError` is a *run-time* failure of one LLM request (retries exhausted, a
refused request, an answer without the digits we need). The pipeline catches
exactly this type and records the feature as ``failed`` with the message; it
must never be turned into a score of 0. Mistakes the user can fix (a bad
backend string, a missing API key) are `BackendConfigError`, a `UserError`.
"""

from __future__ import annotations

from activations.errors import UserError


class LLMError(RuntimeError):
    """An LLM request failed or returned an unusable answer; record the item as failed."""


class BackendConfigError(UserError):
    """A backend cannot be built from what the user passed; the message says what to pass."""
