"""The one error the data pipeline raises: bad input, with what to do about it."""

from __future__ import annotations


class DataError(ValueError):
    """A corpus, data directory or setting that the data pipeline cannot use."""
