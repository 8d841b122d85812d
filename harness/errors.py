"""Errors raised on bad input. The CLI turns every :class:`UssBenchError` into exit code 2."""

from __future__ import annotations


class UssBenchError(Exception):
    """Base class: a problem with the user's input that a message can explain (exit code 2)."""


class AudioError(UssBenchError):
    """An audio file is missing, unreadable, corrupt, or has NaN/inf samples."""


class LayoutError(UssBenchError):
    """A corpus root does not have the layout of the corpus it was given for."""


class MetadataError(UssBenchError):
    """A metadata file is malformed, names an unknown label, or lists a file that is absent."""


class CheckpointError(UssBenchError):
    """A checkpoint cannot be loaded: wrong format, keys or shapes, or it needs unsafe unpickling."""


class ConfigError(UssBenchError):
    """A configuration value (TOML, option, environment variable) is invalid."""
