"""Errors of the LLM layer.

`LLMError` is a *run-time* failure of one LLM request (retries exhausted, a
refused request, an answer without the digits we need). The pipeline catches
exactly this type and records the feature as ``failed`` with the message; it
must never be turned into a score of 0. Mistakes the user can fix (a bad
backend string, a missing API key) are `BackendConfigError`, a `UserError`;
an endpoint that does not answer at all is `EndpointUnreachable`, a
`UserError` that ends the run.
"""

from __future__ import annotations

from common.errors import UserError


class LLMError(RuntimeError):
    """An LLM request failed or returned an unusable answer; record the item as failed."""


class NoLogprobs(LLMError):
    """The server answers but returns no log-probabilities at all (transformers serve, some gateways).

    An `LLMError`, so where logprobs are required (`--score-mode logprobs`) the
    feature's scoring fails with this message; in `--score-mode auto` the
    scorers catch it and score from text answers instead (`explain.scorers.text_sim`).
    Also raised for a client error to a request carrying logprobs fields
    (`explain.llm.remote.refuses_logprobs`): today's `transformers serve`
    answers HTTP 400 to ``logprobs``/``top_logprobs`` instead of ignoring them,
    which says "no logprobs here", not "this request is wrong".
    """


class BackendConfigError(UserError):
    """A backend cannot be built from what the user passed; the message says what to pass."""


class EndpointUnreachable(UserError):
    """An LLM endpoint that does not answer at all (connection refused, no route, timeouts in a row).

    Not an `LLMError`: it is not one feature's failure but the run's, so it
    stops the run with one line naming the URL instead of turning every
    remaining feature into a `failed` record after the full retry schedule.
    """
