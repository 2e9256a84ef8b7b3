"""Errors of the training package; each says what to do next."""

from __future__ import annotations


class TrainError(ValueError):
    """Base class for training errors that the user can fix."""


class TrainConfigError(TrainError):
    """A training config with unknown keys, wrong types or impossible values."""


class ResumeError(TrainError):
    """A checkpoint that cannot be resumed by this run (other architecture, damaged files)."""


class CheckpointWriteError(TrainError):
    """A checkpoint that could not be written (full disk, permissions); older ones are intact."""
