"""Query-conditioned separators as evaluation systems (the checkpoint counterpart of the baselines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.evaluate import System
from harness.queries import load_queries

CONDITIONS = ("average", "oracle")
"""Query conditions of a :class:`CheckpointSystem` (``eval --condition``): eq. 9 and eq. 11."""

NO_QUERY = "no_query"
"""Status of an item whose class has no average query embedding (no clip of it in the query split)."""


class CheckpointSystem(System):
    """A ResUNet30 + FiLM checkpoint, conditioned on average (eq. 9) or oracle (eq. 11) query embeddings.

    With ``condition="average"`` (the default) AudioSet is evaluated under both conditions, as the
    paper's Table 2 reports both, and every other dataset under ``average``; ``condition="oracle"``
    evaluates every dataset with the target's own embedding. Fixed-length items are one 2-s chunk each
    and are separated in batches; whole tracks go through :func:`harness.models.separate` (2-s chunks,
    the upstream rule).

    Raises:
        CheckpointError: the checkpoint cannot be loaded (at construction).
        UssBenchError: ``prepare`` finds no average query set for a dataset.
    """

    def __init__(self, checkpoint: str | Path, workdir: str | Path, condition: str = "average",
                 device: str = "auto", batch_size: int = 16):
        from harness.errors import check_choice
        from harness.models import file_sha256, load_separator, resolve_device

        check_choice("--condition", condition, CONDITIONS)
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.separator = load_separator(checkpoint, self.device)
        self.condition_type = self.separator.condition_type
        self.checkpoint_sha256 = file_sha256(checkpoint)
        # An all-oracle run is named apart, so that it can sit beside the Table 2 run in one report.
        self.name = f"checkpoint:{self.checkpoint.name}" + ("[oracle]" if condition == "oracle" else "")
        self.workdir = Path(workdir)
        self.condition = condition
        self.batch_size = batch_size
        self._queries: dict[str, dict[str, np.ndarray]] = {}
        self._query_net = None

    def conditions(self, dataset: str) -> tuple[str, ...]:
        if self.condition == "oracle":
            return ("oracle",)
        return ("oracle", "average") if dataset == "audioset" else ("average",)

    def prepare(self, dataset: str) -> None:
        if "average" in self.conditions(dataset) and dataset not in self._queries:
            self._queries[dataset] = load_queries(self.workdir, dataset, self.checkpoint_sha256)[0]

    def unscorable(self, items: pd.DataFrame, condition: str) -> dict[str, str]:
        if condition != "average":
            return {}
        table = self._queries[items["dataset"].iloc[0]]
        return {i: NO_QUERY for i, label in zip(items["item_id"], items["label"], strict=True) if label not in table}

    def _oracle(self, target: np.ndarray, label: str) -> np.ndarray:
        from harness.models import embed, load_query_net
        from harness.models.querynets import OneHotQuery

        if self._query_net is None:
            self._query_net = load_query_net(self.checkpoint, self.device)
        if isinstance(self._query_net, OneHotQuery):  # the oracle of a label query is the label
            return self._query_net.condition([label]).numpy()
        return embed(self._query_net, target, self.condition_type)

    def separate(self, mixture, target, items, condition):
        from harness.models import separate, separate_batch

        if condition == "oracle":
            conds = np.stack([self._oracle(t, label) for t, label in zip(target, items["label"], strict=True)])
        else:
            table = self._queries[items["dataset"].iloc[0]]
            size = self.separator.condition_size
            conds = np.stack([table.get(label, np.zeros(size, np.float32)) for label in items["label"]])
        if mixture.shape[1] == 64000:
            return separate_batch(self.separator, mixture, conds, batch_size=self.batch_size)
        return np.stack([separate(self.separator, m, c, batch_size=self.batch_size)
                         for m, c in zip(mixture, conds, strict=True)])
