"""A lock on an eval run folder (``--out``), so that two evals cannot write into one folder at once.

Without it a second ``eval`` into a running one's folder removed the first's parts at its start and the
first failed at its merge after doing all its work (issue 15 #5: data loss).

The lock is the file ``<out>/eval.lock``, created exclusively (``O_CREAT | O_EXCL``, atomic on local
file systems and NFSv3+), holding JSON ``{"pid", "host", "boot_id", "start_ticks", "started", "command"}`` of its owner, and
removed when the owner's run ends (also on an error or Ctrl-C). A lock left by a killed run is *stale*
when its host is this host and its PID is no longer running; it is reported, and broken by
``--break-lock``, or by ``--resume`` (which keeps the killed run's rows: the usual way to continue it).
The lock also records the boot id and the owner's start time (Linux ``/proc``), so that a PID reused by
another process after the owner died does not keep the lock alive. A lock of another host cannot be checked from here: ``--break-lock`` breaks it too
(the user vouches that the run there is gone). A lock whose owner is alive on this host is never broken.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import UssBenchError
from harness.tempfiles import pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = "eval.lock"


class RunLocked(UssBenchError):
    """The run folder is locked by another eval (alive, or stale and not broken)."""


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    ``None`` where ``/proc`` cannot tell (not Linux, no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    """This boot's id (Linux ``/proc/sys/kernel/random/boot_id``), or ``None``."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def read_lock(path: Path) -> dict[str, Any]:
    """The owner recorded in a lock file; ``{}`` for an unreadable or half-written one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _owner_text(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown owner (the lock file is unreadable)"
    return f"PID {owner.get('pid')} on host {owner.get('host')} (since {owner.get('started')})"


def lock_state(owner: dict[str, Any]) -> str:
    """``"alive"``: owner running on this host; ``"stale"``: its PID is gone from this host;
    ``"foreign"``: another host, or an unreadable lock (cannot be checked)."""
    if not owner or owner.get("host") != socket.gethostname():
        return "foreign"
    try:
        pid = int(owner.get("pid"))
    except (TypeError, ValueError):
        return "foreign"
    if not pid_alive(pid):
        return "stale"
    # the PID runs, but it may be another process that got the number (after a reboot, or much later)
    if owner.get("boot_id") and boot_id() and owner["boot_id"] != boot_id():
        return "stale"
    start = process_start(pid)
    if owner.get("start_ticks") is not None and start is not None and int(owner["start_ticks"]) != start:
        return "stale"
    return "alive"


def acquire(out: Path, break_lock: bool = False, resume: bool = False) -> Path:
    """Create ``<out>/eval.lock`` for this process.

    Args:
        out: the run folder (created when absent).
        break_lock: remove a stale lock (or one of another host) first.
        resume: the run continues the folder's parts (``--resume``): a stale lock (its PID gone from this
            host: the run being resumed was killed) is reported and broken without ``break_lock``, as
            the rows it wrote are kept. Without ``resume`` the run would start the folder over, so a
            stale lock needs ``break_lock``.

    Returns:
        the lock file's path.

    Raises:
        RunLocked: the folder is locked by a running eval (names its PID and host), or by a stale or
            unverifiable one and ``break_lock`` is not set (says so, and how to break it).
        UssBenchError: the folder cannot be created or written.
    """
    out = Path(out)
    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from harness.errors import os_error_message

        raise UssBenchError(os_error_message(exc) or f"cannot create the run folder {out}: {exc.strerror or exc}"
                            ) from exc
    me = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(), "start_ticks": process_start(os.getpid()),
          "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "command": sys.argv}
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_lock(path)
            state = lock_state(owner)
            if state == "alive":
                raise RunLocked(f"--out {out} is in use by another eval: {_owner_text(owner)} holds {path}; "
                                "wait for it to finish, or use another --out") from None
            if not (break_lock or (resume and state == "stale")):
                why = ("its process is no longer running (a killed run)" if state == "stale"
                       else "it cannot be checked from this host")
                raise RunLocked(f"--out {out} has a stale lock {path} left by {_owner_text(owner)}: {why}. "
                                "If no eval is writing there, rerun with --resume to continue it (keeps its "
                                "rows), or with --break-lock to start over") from None
            log.warning("breaking the stale lock %s of %s (%s)", path, _owner_text(owner),
                        "--break-lock" if break_lock else "its process is gone; --resume keeps its rows")
            path.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise UssBenchError(f"cannot create the lock {path}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me) + "\n")
        return path
    raise RunLocked(f"--out {out}: another eval took the lock {path} while this one broke the stale one; "
                    "use another --out")


def release(path: Path) -> None:
    """Remove the lock file if this process still owns it."""
    if read_lock(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(out: Path, break_lock: bool = False, ranks: Any = None, resume: bool = False) -> Iterator[Path | None]:
    """Hold ``<out>/eval.lock`` for the block (rank 0 takes it; every rank learns whether it got it).

    Under torchrun the other ranks are told through ``ranks.gather`` and raise the same error, so that
    no rank waits at a barrier for a rank 0 that gave up.

    Raises:
        RunLocked, UssBenchError: see :func:`acquire`.
    """
    is_main = ranks is None or ranks.is_main
    path, error = None, None
    if is_main:
        try:
            path = acquire(out, break_lock, resume)
        except UssBenchError as exc:
            error = exc
    if ranks is not None and ranks.world_size > 1:
        message = ranks.gather(str(error) if error else None)[0]
        if message and error is None:
            error = RunLocked(message)
    if error is not None:
        raise error
    try:
        yield path
    finally:
        if path is not None:
            release(path)
