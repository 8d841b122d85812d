"""Shared fixtures: the ``../shared`` folder beside the clone (CI always has it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (nox -s tests -- --slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _need(path: Path) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{path} is missing; CI must have ../shared beside the clone")
    pytest.skip(f"{path} absent (../shared is not beside this clone) and CI is unset")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (fails under CI when absent, skips otherwise)."""
    return _need(SHARED)


@pytest.fixture(scope="session")
def dev_data(shared_dir) -> Path:
    """``../shared/data/dev``: the six corpora's real layouts with real audio."""
    return _need(shared_dir / "data" / "dev")


@pytest.fixture(scope="session")
def build_dev_sets(dev_data, tmp_path_factory):
    """``build_dev_sets(datasets, name="work", **options)``: a new workdir with the evaluation set of each
    dataset built from its dev layout (``dev_data / dataset``) by ``build_mixtures(..., BuildOptions(dataset,
    **options))``; returns the workdir. Each call builds afresh (tests may write queries or tamper with it)."""
    from harness.mixtures import BuildOptions, build_mixtures

    def build(datasets, name: str = "work", **options) -> Path:
        wd = tmp_path_factory.mktemp(name)
        for dataset in datasets:
            build_mixtures(dev_data / dataset, wd, BuildOptions(dataset, **options))
        return wd

    return build


@pytest.fixture(scope="session")
def meta_dir(shared_dir) -> Path:
    """``../shared/data/meta``: ontology, class lists, split lists."""
    return _need(shared_dir / "data" / "meta")


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    """``../shared/reference``: manifests, formula generator, upstream outputs."""
    return _need(shared_dir / "reference")
