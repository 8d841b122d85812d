"""Errors raised on bad input, and the exit codes of ``uss-bench``.

The CLI turns every :class:`UssBenchError` into :data:`EXIT_USAGE` with a one-line message (no traceback).
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable

EXIT_OK = 0
EXIT_REGRESSION = 1
"""``compare`` found a regression, the demo's numbers changed, or ``build-mixtures --verify`` failed."""
EXIT_USAGE = 2
"""Bad input or usage: unknown command or option, bad value, a file that is missing, malformed or corrupt."""
EXIT_INTERNAL = 3
"""An unexpected internal error (a bug): one line on the terminal, the traceback in a log file."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C / SIGINT), as a shell reports it (128 + 2)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib ratio ≥ 0.6), else ``""``."""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(what: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` when it is one of ``choices``.

    Raises:
        ConfigError: naming ``what``, the closest choice ("did you mean …") and the list.
    """
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}{did_you_mean(value, choices)} (choose from {', '.join(choices)})")
    return value


ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free some space or use another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or use another folder"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to, or fix its permissions"),
    errno.ENOTDIR: ("not a directory", "a file stands where a folder is needed: choose another path"),
    errno.EISDIR: ("is a directory", "a folder stands where a file is needed: choose another path"),
    errno.EEXIST: ("file exists", "a file stands where a folder is needed: choose another path"),
}
"""errno → (what, what to do) of the I/O errors that the user's environment causes, not a bug."""


def os_error_message(exc: OSError) -> str | None:
    """The one-line message of an :class:`OSError` the environment caused (full disk, read-only or
    forbidden folder, a file where a folder is needed), naming the file; ``None`` for any other errno.

    h5py raises such errors with ``errno`` set but no file name; its text is then kept (first line).
    """
    known = ENVIRONMENT_ERRNOS.get(exc.errno)
    if known is None:
        return None
    what, todo = known
    if exc.filename is not None:
        where = str(exc.filename) + (f" → {exc.filename2}" if exc.filename2 is not None else "")
    else:
        where = (str(exc).splitlines() or [""])[0][:200]
    return f"{what}: {where}; {todo}"


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
