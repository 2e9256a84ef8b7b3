"""Errors raised while bringing weights into lmscope."""

from __future__ import annotations


class ZooError(ValueError):
    """Base class: weights or configs that lmscope cannot turn into a canonical model."""


class UnsupportedModelError(ZooError):
    """A model family or feature the converters do not handle."""


class ConversionError(ZooError):
    """A Hugging Face state dict that does not fit its config (missing, extra or odd tensors)."""


class DeviceError(ZooError):
    """A device torch cannot use on this machine."""


class CheckpointError(ZooError):
    """An lmscope checkpoint that is missing, corrupt, truncated or does not fit its config."""
