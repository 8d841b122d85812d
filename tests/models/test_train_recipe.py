"""The paper's full training recipe on the formula checkpoints: SED-mined anchors (Cnn14_DecisionLevelMax)
and the at_soft condition of a frozen Cnn14, on the demo AudioSet train split (3 clips, 5 classes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.anchors import best_anchor_centre
from harness.audio import fix_length
from harness.models import load_separator_and_query_net
from harness.models.panns import Cnn14
from harness.train import TrainConfig, _sed_anchor_by_label, resolve_source_roots, train

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

RECIPE = """
name = "recipe"
[model]
channels = [2, 2, 2, 2, 2, 2]
n_fft = 384
[query]
net = "cnn14"
condition = "at_soft"
checkpoint = "{query}"
[data]
sources = [{{ dataset = "audioset", split = "train", root = "datasets/demo/audioset" }}]
anchor = "sed"
sed_checkpoint = "{sed}"
[optim]
batch_size = 2
warm_up_steps = 1
[run]
steps = 2
checkpoint_every = 2
validate_every = 2
val_items = 2
log_every = 1
"""


def test_sed_anchor_of_training_is_the_build_rule(dlm_pth, sed):
    """A training anchor is the segment whose centre maximises the box-filtered framewise probability."""
    rng = np.random.default_rng(3)
    x = (0.01 * rng.standard_normal(320000)).astype(np.float32)
    x[200000:264000] += np.sin(np.arange(64000) * 0.05).astype(np.float32)  # a loud tone from 6.25 s
    anchor = _sed_anchor_by_label(str(dlm_pth), torch.device("cpu"))
    segment = anchor(x, "Speech", "clip", 64000)
    with torch.inference_mode():
        framewise = sed(torch.from_numpy(x)[None])["framewise_output"][0].numpy()
    # same weights, same thread count (the SED rule runs on one thread) and kernels: the same framewise bits
    centre = best_anchor_centre(framewise, 0, 100, 900)
    begin = (centre - 100) * 320
    np.testing.assert_array_equal(segment, fix_length(x, 320000, mode="pad")[begin:begin + 64000])
    assert anchor(x, "Speech", "clip", 64000) is not segment  # cached start, fresh copy


def test_full_recipe_trains_with_sed_anchors_and_at_soft(tmp_path, at_soft_ckpt, dlm_pth):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(query=at_soft_ckpt, sed=dlm_pth))
    cfg = TrainConfig.from_toml(path)
    result = train(cfg, resolve_source_roots(cfg, []), tmp_path / "run", progress=False)
    assert np.isfinite(result.final_loss)
    separator, query_net = load_separator_and_query_net(result.model)
    assert separator.condition_type == "at_soft" and separator.condition_size == 527
    assert isinstance(query_net, Cnn14)  # the frozen query net travels with the model, for embed-queries
