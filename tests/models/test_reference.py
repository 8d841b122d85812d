"""Our models against the upstream's outputs for the formula weights (reference/public/README.md).

Acceptance: per array ``max|y − ref| ≤ 1e-4·max|ref|`` and ``‖y − ref‖ ≤ 1e-4·‖ref‖``; anchors exactly;
log-mel intermediates within 0.05 dB. Every model runs on the CPU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from harness.anchors import anchor_scores, find_anchor
from harness.models import embed, load_query_net, load_sed, separate
from harness.models.fast import prepare_for_inference

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

LOGMEL_TOLERANCE_DB = 0.05

SEPARATOR_SETS = {
    527: ("separator_527", "ss_at_soft_527.npz", "ss527"),
    2048: ("separator_2048", "ss_emb_2048.npz", "ss2048"),
}


@pytest.fixture(params=[527, 2048], ids=["at_soft_527", "emb_2048"])
def separator_case(request, reference_outputs):
    """(condition size, loaded separator, reference arrays keyed without their ``ssD_`` prefix)."""
    fixture, file_name, prefix = SEPARATOR_SETS[request.param]
    arrays = {key.removeprefix(prefix + "_"): value for key, value in reference_outputs(file_name).items()}
    return request.param, request.getfixturevalue(fixture), arrays


_PREPARED: dict[int, torch.nn.Module] = {}


@pytest.fixture(params=["plain", "prepared"])
def run_case(request, separator_case):
    """``separator_case`` through the plain module and through the fast path's prepared model
    (harness.models.fast: folded BatchNorm, fused FiLM, channels-last), prepared once per size."""
    size, separator, ref = separator_case
    if request.param == "prepared":
        if size not in _PREPARED:
            _PREPARED[size] = prepare_for_inference(separator)
        separator = _PREPARED[size]
    return size, separator, ref


def test_separator_condition_type(separator_case):
    size, separator, _ = separator_case
    assert (separator.condition_size, separator.condition_type) == (size, {527: "at_soft", 2048: "emb"}[size])
    assert not separator.training


def test_separator_single_calls(run_case, assert_matches):
    size, separator, ref = run_case
    mixture, condition = torch.from_numpy(ref["mixture"]), torch.from_numpy(ref["condition"])
    with torch.inference_mode():
        for i in range(2):
            for j in range(2):
                output = separator(mixture[i : i + 1], condition[j : j + 1])
                assert_matches(f"ss{size}_output[{i},{j}]", output[0], ref["output"][i, j])


def test_separator_batch_of_three(run_case, assert_matches):
    size, separator, ref = run_case
    pairs = ref["b3_pairs"]
    with torch.inference_mode():
        output = separator(
            torch.from_numpy(ref["mixture"][pairs[:, 0]]), torch.from_numpy(ref["condition"][pairs[:, 1]])
        )
    assert_matches(f"ss{size}_b3_output", output, ref["b3_output"])


def test_separator_mask_logits(run_case, assert_matches):
    size, separator, ref = run_case
    with torch.inference_mode():
        mag, _, _ = separator.spectrum(torch.from_numpy(ref["mixture"][0:1, 0]))
        logits = separator.mask_logits(mag, torch.from_numpy(ref["condition"][0:1]))
    assert_matches(f"ss{size}_after_conv_m0c0", logits, ref["after_conv_m0c0"])


def test_separator_film_offsets(separator_case, assert_matches):
    """The 32 FiLM layers used in the forward pass; the 6 unused ``decoder_blockN->beta2`` are dropped."""
    size, separator, ref = separator_case
    with torch.inference_mode():
        offsets = separator.film_offsets(torch.from_numpy(ref["condition"][0:1]))
    ours, reference, start = [], [], 0
    for entry in ref["film_beta_layout"]:
        name, width = str(entry).rsplit(":", 1)
        values = ref["film_beta_c0"][start : start + int(width)]
        start += int(width)
        if re.fullmatch(r"decoder_block[1-6]->beta2", name):
            assert name not in offsets
            continue
        ours.append(offsets.pop(name)[0].numpy())
        reference.append(values)
    assert (start, len(ours), offsets) == (9856, 32, {})
    assert_matches(f"ss{size}_film_beta_c0 (32 used layers)", np.concatenate(ours), np.concatenate(reference))


@pytest.mark.parametrize("size", [527, 2048])
def test_long_separation(size, request, reference_outputs, assert_matches):
    """Three non-overlapping 2-s chunks, the last zero-padded, one broadcast condition (SEMANTICS §7)."""
    ref = reference_outputs("long_separation.npz")
    assert int(ref["long_segment_samples"]) == 64000
    separator = request.getfixturevalue(SEPARATOR_SETS[size][0])
    output = separate(separator, ref["long_mixture"], ref[f"long{size}_condition"])
    assert output.dtype == np.float32 and output.shape == ref["long_mixture"].shape
    assert_matches(f"long{size}_output", output, ref[f"long{size}_output"])


def test_cnn14(query_net, reference_outputs, assert_matches):
    ref = reference_outputs("cnn14_query.npz")
    waveform = torch.from_numpy(ref["cnn14_input"])
    with torch.inference_mode():
        output = query_net(waveform)
        logmel = query_net.log_mel(waveform)
    assert_matches("cnn14_clipwise_output", output["clipwise_output"], ref["cnn14_clipwise_output"])
    assert_matches("cnn14_embedding", output["embedding"], ref["cnn14_embedding"])
    assert np.abs(logmel.numpy() - ref["cnn14_logmel"]).max() <= LOGMEL_TOLERANCE_DB


def test_embed_of_one_chunk_is_the_query_net_output(query_net, reference_outputs, assert_matches):
    """A 2-s query is one chunk, so ``embed`` returns the Cnn14 output the condition types name."""
    ref = reference_outputs("cnn14_query.npz")
    for k in range(2):
        assert_matches(
            f"embed_at_soft[{k}]",
            embed(query_net, ref["cnn14_input"][k], "at_soft"),
            ref["cnn14_clipwise_output"][k],
        )
        assert_matches(
            f"embed_emb[{k}]", embed(query_net, ref["cnn14_input"][k], "emb"), ref["cnn14_embedding"][k]
        )


@pytest.mark.parametrize("ckpt", ["at_soft_ckpt", "emb_ckpt"])
def test_lightning_query_net_and_sed_equal_the_panns_files(ckpt, request, query_net, sed):
    path = request.getfixturevalue(ckpt)
    for ours, theirs in ((load_query_net(path), query_net), (load_sed(path), sed)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_decision_level_max(sed, reference_outputs, assert_matches):
    ref = reference_outputs("dlm_anchor.npz")
    waveform = torch.from_numpy(ref["dlm_input"])
    with torch.inference_mode():
        output = sed(waveform)
        logmel = sed.log_mel(waveform)
    assert_matches("dlm_framewise_output", output["framewise_output"], ref["dlm_framewise_output"])
    assert_matches("dlm_clipwise_output", output["clipwise_output"], ref["dlm_clipwise_output"])
    assert np.abs(logmel.numpy() - ref["dlm_logmel"]).max() <= LOGMEL_TOLERANCE_DB


def test_anchors(sed, reference_outputs, assert_matches):
    """Anchors from our SED output equal the upstream's exactly; scores match to float rounding."""
    ref = reference_outputs("dlm_anchor.npz")
    with torch.inference_mode():
        framewise = sed(torch.from_numpy(ref["dlm_input"]))["framewise_output"][0]
    for k, class_id in enumerate(ref["anchor_class_ids"].tolist()):
        # Ours is the exact 201-frame mean rounded once to float32; the upstream's a float32 conv1d: 201
        # products with a rounded 1/201 tap and a 201-term float32 sum, in an order its CPU kernel chooses.
        # Every term is positive, so each score is off by at most (201 + 2)·2⁻²⁴ of itself, plus our own
        # final rounding (2⁻²⁴): an elementwise bound that holds for any summation order.
        np.testing.assert_allclose(anchor_scores(ref["dlm_framewise_output"][0], class_id),
                                   ref["anchor_scores"][k], rtol=204 * 2.0**-24, atol=0)
        scores = anchor_scores(framewise, class_id)
        assert_matches(f"anchor_scores[{class_id}]", scores, ref["anchor_scores"][k])
        assert int(np.argmax(scores)) == ref["anchor_argmax"][k]
        begin, end = find_anchor(framewise, class_id)
        assert (begin, end) == (ref["anchor_bgn_sample"][k], ref["anchor_end_sample"][k])
        assert begin // 320 + 100 == ref["anchor_index"][k]
        assert find_anchor(ref["dlm_framewise_output"][0], class_id) == (begin, end)
