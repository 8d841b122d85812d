"""Ontology roll-ups (issue 12 item 4) against a hand-worked ontology and item set.

The ontology (a DAG; classes 0..5)::

    R1 (root)          R2 (root)
    ├── A  (c0)        └── C  (c4)
    │   ├── A1 (c2)        └── D  (c5)   ← D is also a child of B
    │   └── A2 (c3)
    └── B  (c1)
        └── D  (c5)

Items (target class, interferer class, SDRi): c0/c4 1, c0/c4 3, c1/c0 4, c2/c4 0, c2/c5 10, c2/c0 2, c3/c4 6,
c4/c1 8, c5/c0 −2, c5/c4 0, and c3/c0 99 not ``ok`` (left out).

Class medians: c0 2, c1 4, c2 2, c3 6, c4 8, c5 −1. Roll-ups (median of the class medians of the node's
subtree): A {c0,c2,c3} → 2; A1 2; A2 6; B {c1,c5} → 1.5; D −1; R1 {c0,c1,c2,c3,c5} → 2; C {c4,c5} → 3.5;
R2 3.5. Levels (shallowest): R1 R2 1; A B C 2; A1 A2 D 3.

Matrix (target root × interferer root; c5 lies under both roots, so an item with c5 counts under each):
(R1, R1) items c1/c0, c2/c5, c2/c0, c5/c0 → [4, 10, 2, −2] → 3; (R1, R2) c0/c4 ×2, c2/c4, c2/c5, c3/c4, c5/c4
→ [1, 3, 0, 10, 6, 0] → 2; (R2, R1) c4/c1, c5/c0 → [8, −2] → 3; (R2, R2) c5/c4 → 0.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from harness.ontology import Ontology, OntologyNode
from harness.rollups import class_medians, dataset_rollups, extremes, interferer_matrix, markdown, rollup


@pytest.fixture
def onto() -> Ontology:
    mids = [f"/c/{i}" for i in range(6)]
    names = ["A", "B", "A1", "A2", "C", "D"]
    nodes = [
        OntologyNode("/r/1", "R1", ("/c/0", "/c/1"), (), None),
        OntologyNode("/c/0", "A", ("/c/2", "/c/3"), (), 0),
        OntologyNode("/c/1", "B", ("/c/5",), (), 1),
        OntologyNode("/c/2", "A1", (), (), 2),
        OntologyNode("/c/3", "A2", (), (), 3),
        OntologyNode("/r/2", "R2", ("/c/4",), (), None),
        OntologyNode("/c/4", "C", ("/c/5",), (), 4),
        OntologyNode("/c/5", "D", (), (), 5),
    ]
    return Ontology(nodes, mids, names)


ROWS = [(0, 4, 1.0), (0, 4, 3.0), (1, 0, 4.0), (2, 4, 0.0), (2, 5, 10.0), (2, 0, 2.0), (3, 4, 6.0), (4, 1, 8.0),
        (5, 0, -2.0), (5, 4, 0.0)]


@pytest.fixture
def items() -> pd.DataFrame:
    rows = ROWS + [(3, 0, 99.0)]
    return pd.DataFrame({"class_index": [float(t) for t, _, _ in rows],
                         "interferer_index": [float(i) for _, i, _ in rows],
                         "sdri": [v for *_, v in rows], "status": ["ok"] * len(ROWS) + ["ref_silent"]})


def test_rollup_hand_worked(onto, items):
    med = class_medians(items)
    assert med.to_dict() == {0: 2.0, 1: 4.0, 2: 2.0, 3: 6.0, 4: 8.0, 5: -1.0}
    nodes = rollup(med, onto).set_index("name")
    assert nodes["median"].to_dict() == {"R1": 2.0, "A": 2.0, "B": 1.5, "A1": 2.0, "A2": 6.0, "R2": 3.5, "C": 3.5,
                                         "D": -1.0}
    assert nodes["level"].to_dict() == {"R1": 1, "A": 2, "B": 2, "A1": 3, "A2": 3, "R2": 1, "C": 2, "D": 3}
    assert nodes["classes"].to_dict() == {"R1": 5, "A": 3, "B": 2, "A1": 1, "A2": 1, "R2": 2, "C": 2, "D": 1}


def test_extremes_order_and_ties(onto, items):
    nodes = rollup(class_medians(items), onto)
    hardest, easiest = extremes(nodes, k=3)
    assert hardest["name"].tolist() == ["D", "B", "R1"]  # 2.0 tie of R1, A, A1: shallowest first
    assert easiest["name"].tolist() == ["A2", "R2", "C"]  # 3.5 tie of R2 (level 1), C (level 2)
    h2, _ = extremes(nodes, k=10, max_level=2)
    assert "D" not in set(h2["name"]) and len(h2) == 5


def test_node_without_values_is_absent(onto):
    nodes = rollup({4: 1.0}, onto)
    assert set(nodes["name"]) == {"R2", "C"}


def test_interferer_matrix_hand_worked(onto, items):
    m = interferer_matrix(items, onto)
    assert list(m.index) == ["R1", "R2"] and list(m.columns) == ["R1", "R2"]
    np.testing.assert_array_equal(m.to_numpy(), [[3.0, 2.0], [3.0, 0.0]])
    np.testing.assert_array_equal(m.attrs["counts"].to_numpy(), [[4, 6], [2, 1]])


def test_dataset_rollups_read_labels_and_interferers(onto, tmp_path):
    """End to end from report inputs: item labels (display names) and the set's manifest interferer labels."""
    names = onto.class_names
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    ids = [f"it{k}" for k in range(len(ROWS))]
    pd.DataFrame({"item_id": ids, "interferer_label": [names[i] for _, i, _ in ROWS]}).to_parquet(
        set_dir / "manifest.parquet")
    (set_dir / "build.json").write_text(json.dumps({"corpus": {"root": str(tmp_path)}}))
    items = pd.DataFrame({"system": "sys", "dataset": "audioset", "condition": "oracle", "item_id": ids,
                          "label": [names[t] for t, _, _ in ROWS], "sdri": [v for *_, v in ROWS], "status": "ok"})

    class Src:
        sets = {"audioset": str(set_dir)}

    (block,) = dataset_rollups(items, "audioset", [Src()], onto)
    assert block["system"] == "sys" and block["condition"] == "oracle" and block["unmatched"] == []
    assert block["hardest"]["name"].tolist()[:2] == ["D", "B"]
    np.testing.assert_array_equal(block["matrix"].to_numpy(), [[3.0, 2.0], [3.0, 0.0]])
    md = "\n".join(markdown({"audioset": [block]}))
    assert "## AudioSet: ontology roll-ups" in md and "| **R1** | 3.00 (4) | 2.00 (6) |" in md

    class NoSet:
        sets = {}

    (block,) = dataset_rollups(items, "audioset", [NoSet()], onto)
    assert block["matrix"] is None and "manifest is not readable" in "\n".join(markdown({"audioset": [block]}))


def test_fsd50k_labels_map_through_vocabulary_mids(onto, tmp_path):
    """FSD50K labels are matched to AudioSet classes by the mid of vocabulary.csv, not by spelling."""
    from harness.rollups import label_index

    gt = tmp_path / "FSD50K.ground_truth"
    gt.mkdir()
    (gt / "vocabulary.csv").write_text("0,Spelt_otherwise,/c/4\n1,A2,/c/9\n")
    got = label_index("fsd50k", ["Spelt_otherwise", "A2", "Nothing"], onto, tmp_path)
    assert got == {"Spelt_otherwise": 4, "A2": 3}  # A2: unknown mid, matched by its name
    assert label_index("fsd50k", ["Spelt_otherwise"], onto, None) == {}


def test_audioset_section_of_the_report(dev_data, tmp_path):
    """eval on the dev AudioSet layout: the roll-ups appear in summary.md, in report.html's AudioSet section
    and as ontology_audioset.csv; a node's value is the median of its classes' medians of items.parquet."""
    import os
    import subprocess
    import sys

    from harness.mixtures import BuildOptions, build_mixtures

    build_mixtures(dev_data / "audioset", tmp_path, BuildOptions("audioset"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("USS_BENCH_")}, "CI": "true"}
    r = subprocess.run([sys.executable, "-m", "harness", "eval", "audioset", "--baseline", "oracle-irm", "--workdir",
                        str(tmp_path), "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    summary = (run / "summary.md").read_text()
    assert "## AudioSet: ontology roll-ups" in summary and "target \\ interferer" in summary
    html = (run / "report.html").read_text()
    section = html.split('<h3 id="audioset">')[1]
    assert "Ontology roll-ups (AudioSet" in section and "target (row) × interferer (column)" in section
    nodes = pd.read_csv(run / "ontology_audioset.csv")
    items = pd.read_parquet(run / "items.parquet")
    onto = Ontology.load()
    ok = items[items["status"] == "ok"]
    per_class = ok.groupby("class_id")["sdri"].median()
    animal = onto.find("Animal")
    want = float(np.median([per_class[i] for i in onto.class_ids(animal.id) if i in per_class.index]))
    got = nodes.loc[nodes["node_id"] == animal.id, "median"].iloc[0]
    assert got == pytest.approx(want, rel=1e-5)  # the CSV's 6 significant digits
