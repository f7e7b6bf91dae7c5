"""The error raised when a data file is there but cannot be read as what it claims to be."""

from __future__ import annotations


class CorruptDataError(ValueError, RuntimeError):
    """A data file is damaged (truncated, garbage, or not the official release); the message names
    the file and how to get a good copy.

    A ``ValueError`` (what our readers raised for malformed files before) and a ``RuntimeError``
    (what torchvision raises for a failed checksum), so callers catching either still catch it.
    """
