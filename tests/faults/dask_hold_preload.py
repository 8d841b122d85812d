"""A ``dask worker --preload`` for the fault suite: it makes the kill of a worker deterministic.

The worker's role comes from ``USS_FAULT_ROLE`` and its marker folder from ``USS_FAULT_MARKERS``:

- ``hold``: at its first scoring task (:func:`harness.scoring.score_task`) the worker writes
  ``<markers>/started`` (its PID) and then holds the task forever, until the test SIGKILLs it: a worker
  that has demonstrably started a task and dies in the middle of it;
- ``wait``: before its first task the worker waits (at most ``USS_FAULT_WAIT_S`` s, 120) until
  ``<markers>/started`` exists, so that it cannot score every task before the other one got one.

A task reaches a worker pickled by reference (``harness.scoring.score_packed``), which calls the
module's ``score_task`` by name: patching that attribute here changes what every task runs on this
worker. Not a test module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import harness.scoring as scoring

# the worker may import this file twice (``distributed`` reloads a preload given as a path): keep the
# original function, never wrap the wrapper
_real = getattr(scoring, "_unpatched_score_task", scoring.score_task)
scoring._unpatched_score_task = _real
_markers = Path(os.environ["USS_FAULT_MARKERS"])
_role = os.environ["USS_FAULT_ROLE"]
_wait_s = float(os.environ.get("USS_FAULT_WAIT_S", 120))


def score_task(*args, **kwargs):
    """The role's behaviour, then (``wait`` only) the real task."""
    started = _markers / "started"
    if _role == "hold":
        tmp = _markers / f".started.{os.getpid()}"
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, started)
        while True:  # until SIGKILL
            time.sleep(1)
    t0 = time.monotonic()
    while not started.exists() and time.monotonic() - t0 < _wait_s:
        time.sleep(0.1)
    return _real(*args, **kwargs)


scoring.score_task = score_task
