"""``python -m harness`` = ``uss-bench`` (also the entry point for ``torchrun -m harness``)."""

from harness.cli import main

main()
