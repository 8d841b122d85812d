"""Run ``uss-bench ARGS`` and SIGKILL the process at a chosen point (the fault suite's injector).

    python tests/faults/kill_driver.py POINT N -- ARGS...

POINT is one of

- ``before-rename:GLOB``: at the N-th (1-based) ``os.replace`` whose destination's name matches GLOB, after
  the temporary file is complete and before the rename (the file is still under its temporary name);
- ``after-rename:GLOB``: right after that rename;
- ``call:MODULE:ATTR``: at the N-th call of ``MODULE.ATTR`` (e.g. ``harness.evaluate:_separate``: in the
  middle of a unit, its rows not yet flushed); ATTR may be dotted, ``CLASS.METHOD`` (e.g.
  ``harness.mixtures:_RowWriter.__call__``: the N-th row written into ``mixtures.h5``).

SIGKILL cannot be caught: nothing of the harness's cleanup runs, as when the OOM killer or a scheduler
ends a job. Not a test module (no ``test_`` prefix): the fault tests start it in a subprocess.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, n: int) -> None:
    """Patch the point so that its ``n``-th hit kills this process."""
    hits = [0]
    kind, _, where = point.partition(":")
    if kind in ("before-rename", "after-rename"):
        real = os.replace

        def replace(src, dst, *a, **k):
            if fnmatch.fnmatch(Path(dst).name, where):
                hits[0] += 1
                if hits[0] == n and kind == "before-rename":
                    _die()
                real(src, dst, *a, **k)
                if hits[0] == n:
                    _die()
                return None
            return real(src, dst, *a, **k)

        os.replace = replace
    elif kind == "call":
        module, _, attr = where.partition(":")
        mod = importlib.import_module(module)
        *outer, attr = attr.split(".")
        for name in outer:  # CLASS.METHOD: patch the method on its class
            mod = getattr(mod, name)
        real_fn = getattr(mod, attr)

        def wrapper(*a, **k):
            hits[0] += 1
            if hits[0] == n:
                _die()
            return real_fn(*a, **k)

        setattr(mod, attr, wrapper)
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    point, n, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: kill_driver.py POINT N -- ARGS..."
    install(point, int(n))
    from harness.cli import main

    main(args)
