"""uss-bench: the evaluation harness for universal source separation (USS).

Stages (see DESIGN.md §1): corpora on disk → ``build-mixtures`` → evaluation sets →
``eval`` (a baseline or a separator checkpoint) → ``items.parquet`` → ``report`` / ``compare``.
"""

__version__ = "0.1.0"

SAMPLE_RATE = 32000
"""Sample rate of every evaluation set and of the upstream models (Hz)."""

SEGMENT_SECONDS = 2.0
"""Length of an evaluation segment and of a separator chunk (s); paper §4.1."""

SEGMENT_SAMPLES = int(SAMPLE_RATE * SEGMENT_SECONDS)
"""64,000 samples at 32 kHz."""
