"""Exceptions raised for bad user input.

Each carries a message that names the offending thing (file, class name, checkpoint key, ...).
They subclass ``ValueError`` so callers that catch ``ValueError`` keep working.
"""
from __future__ import annotations


class PartCLIPSegError(ValueError):
    """Base class of every error this package raises on bad input."""


class ImageError(PartCLIPSegError):
    """An image could not be read or has an unusable shape or mode."""


class VocabularyError(PartCLIPSegError):
    """A class name or vocabulary is malformed (no "'s", empty part, duplicate, empty list)."""


class CheckpointError(PartCLIPSegError):
    """A checkpoint file is unreadable, or its keys/shapes do not fit the model."""


class ConfigError(PartCLIPSegError):
    """A configuration is inconsistent or has unknown fields."""


class DownloadError(CheckpointError):
    """A named model could not be fetched (offline, server error, size or hash mismatch).

    The message says what to fetch by hand and where to put it."""


class OutputError(PartCLIPSegError):
    """An output location is unwritable, full, a file where a folder is needed, or already occupied."""
