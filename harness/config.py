"""Dataset declarations: ``datasets/<name>.toml`` (protocol constants, rules for small classes).

The TOML files are data, not code (DESIGN §2): changing a protocol constant is a reviewed change of a
declaration, and every build records the declaration it used in ``build.json``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, check_choice

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout (or source tree) holding ``datasets/``, ``models/`` and ``reports/``."""

DATASETS_DIR = REPO_ROOT / "datasets"

DATASET_NAMES = ("audioset", "fsdkaggle2018", "fsd50k", "musdb18", "slakh2100", "voicebank-demand")
"""Dataset names on the command line, in the paper's Table 2 order."""


def load_dataset_config(name: str) -> dict[str, Any]:
    """Read ``datasets/<name>.toml``.

    Returns:
        The parsed table (keys as in the file: ``sample_rate`` Hz, ``segment_seconds`` s,
        ``items_per_class``, ``seed``, ``metrics``, ``aggregate``, ``[mixing]``, ``[small_classes]``…).

    Raises:
        ConfigError: unknown dataset name, missing or malformed TOML.
    """
    check_choice("dataset", name, DATASET_NAMES)
    path = DATASETS_DIR / f"{name}.toml"
    cfg = read_toml(path, f"dataset declaration {path} is missing; is the checkout complete?")
    if cfg.get("name") != name:
        raise ConfigError(f"{path}: name = {cfg.get('name')!r}, expected {name!r}")
    return cfg


def read_toml(path: Path, missing: str) -> dict:
    """Parse a TOML file.

    Args:
        path: the file.
        missing: the error message when the file does not exist (say what to do).

    Raises:
        ConfigError: ``missing`` when the file is absent; the file and the parser's message when it is not
            valid TOML.
    """
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
