"""User-fixable errors of the dictionary stage (all print as one CLI line)."""

from __future__ import annotations

from common.errors import UserError


class DictionaryError(UserError):
    """A dictionary folder that is missing, malformed, or does not fit the data it is used on."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept on disk."""
