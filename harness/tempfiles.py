"""Stale temporary files of killed runs: found by the PID in their name, removed on the next start.

Every atomic write of the harness goes through a temporary name beside its final name that carries the
writer's PID (``harness.datasets.store``): ``.<name>.tmp-<PID>`` (files: ``items.parquet``,
``run.json``, parts), ``.<name>.tmp-<PID>-<random>`` (a set being built, ``atomic_dir``) and
``.<name>.old-<PID>`` (the previous set during its replacement). A run killed with SIGKILL (or by the
OOM killer, or a power cut) leaves them behind, up to a whole ``mixtures.h5`` (issue 15 #15).
:func:`remove_stale_temps` removes those whose PID is no longer alive on this machine.

Scope: the PID is checked on *this* host. A folder shared by several hosts that write into it at once
needs a run lock as well (``--out`` has one); two hosts building the same set at once are not supported.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[^/]*)?$")
"""A temporary name: ``.<name>.tmp-<PID>``, ``.<name>.tmp-<PID>-<suffix>`` or ``.<name>.old-<PID>``."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (``kill(pid, 0)``; a process of another user
    counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders of dead writers directly in ``folder`` (not recursive).

    A name matching :data:`TEMP_RE` whose PID is not alive (and is not this process) is removed
    (``rmtree`` for a folder). A ``.<name>.old-<PID>`` is removed only when ``<name>`` exists: without it
    the old copy is the only one left (the writer died between its two renames) and it is kept, with a
    warning naming it. A folder that does not exist has nothing to clean.

    Returns:
        the paths removed (each also logged at INFO).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        m = TEMP_RE.match(path.name)
        if not m or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not (folder / m["name"]).exists():
            log.warning("%s is the only copy of %s (its writer died while replacing it); rename it back",
                        path, folder / m["name"])
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove the stale temporary %s (%s)", path, exc)
            continue
        log.info("removed %s, left by process %s that no longer runs", path, m["pid"])
        removed.append(path)
    return removed
