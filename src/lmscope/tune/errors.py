"""The one error a user can cause in `lmscope tune`: a bad search file, storage or study."""

from __future__ import annotations


class TuneError(ValueError):
    """A search file, storage URL or study that cannot be used as given; the message says what
    was wrong and what to do."""
