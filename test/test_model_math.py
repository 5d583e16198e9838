"""Torch-free model math: normalisation round trips and the real-time-chunking schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qwen_vla_ros.config import EMBODIMENTS, load_embodiment
from qwen_vla_ros.config.spaces import MeanStd, Quantiles
from qwen_vla_ros.model.normalization import ChannelNormalizer, from_padded, mask_vector, to_padded
from qwen_vla_ros.model.rtc import guidance_weight, handover_weights, prefix_weights

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_normalisation_round_trip_is_exact_for_every_shipped_embodiment(name: str) -> None:
    config = load_embodiment(name)
    rng = np.random.default_rng(0)
    for part, stats in (("action", config.normalization.action), ("state", config.normalization.state)):
        normalizer = ChannelNormalizer.from_stats(stats)
        values = rng.normal(size=(50, len(stats))) * 3.0
        np.testing.assert_allclose(normalizer.unnormalize(normalizer.normalize(values)), values, rtol=0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (7,), elements=finite), arrays(np.float64, (7,), elements=st.floats(1e-3, 1e3)))
def test_mean_std_round_trip(values: np.ndarray, std: np.ndarray) -> None:
    normalizer = ChannelNormalizer.from_stats(MeanStd(mean=list(values / 2), std=list(std)))
    np.testing.assert_allclose(normalizer.unnormalize(normalizer.normalize(values)), values, rtol=1e-12, atol=1e-9)


def test_mean_std_and_quantile_conventions() -> None:
    mean_std = ChannelNormalizer.from_stats(MeanStd(mean=[1.0, -2.0], std=[2.0, 0.5]))
    np.testing.assert_allclose(mean_std.normalize([3.0, -2.5]), [1.0, -1.0])
    quantile = ChannelNormalizer.from_stats(Quantiles(q01=[-0.03, 0.0], q99=[0.03, 1.0]))
    np.testing.assert_allclose(quantile.normalize([[-0.03, 0.0], [0.03, 1.0], [0.0, 0.5]]), [[-1, -1], [1, 1], [0, 0]])


def test_padding_places_channels_at_their_mask_indices() -> None:
    values = np.arange(1.0, 4.0)
    padded = to_padded(values, [5, 0, 2], 8)
    assert padded.tolist() == [2.0, 0, 3.0, 0, 0, 1.0, 0, 0]
    assert from_padded(padded, [5, 0, 2]).tolist() == values.tolist()
    assert mask_vector([5, 0, 2], 8).tolist() == [1, 0, 1, 0, 0, 1, 0, 0]


def test_prefix_weights_freeze_decay_and_release() -> None:
    weights = prefix_weights(delay_steps=3, overlap=10, horizon=16)
    assert weights[:3].tolist() == [1.0, 1.0, 1.0]
    assert np.all(weights[10:] == 0.0)
    decay = weights[3:10]
    assert np.all((decay > 0) & (decay < 1)) and np.all(np.diff(decay) < 0)
    c = (10 - 3) / (10 - 3 + 1)
    assert weights[3] == pytest.approx(c * math.expm1(c) / math.expm1(1.0))


def test_handover_weights_keep_the_first_action_after_the_delay() -> None:
    weights = handover_weights(delay_steps=3, overlap=10, horizon=16)
    assert weights[:4].tolist() == [1.0] * 4
    assert 0 < weights[4] < 1 and np.all(weights[10:] == 0)
    assert handover_weights(10, 10, 16)[:10].tolist() == [1.0] * 10


@pytest.mark.parametrize(("delay", "overlap", "horizon"), [(-1, 5, 10), (6, 5, 10), (2, 11, 10)])
def test_prefix_weights_reject_impossible_spans(delay: int, overlap: int, horizon: int) -> None:
    with pytest.raises(ValueError, match="delay_steps"):
        prefix_weights(delay, overlap, horizon)


def test_guidance_weight_schedule() -> None:
    assert guidance_weight(0.0, 10.0, steps=10) == 10.0
    assert guidance_weight(0.0, 10.0, steps=4) == 4.0  # one Euler step never overshoots
    assert guidance_weight(0.5, 10.0, steps=10) == pytest.approx(2.0)  # (1-tau)/(tau r^2) at tau=1/2
    assert guidance_weight(1.0, 10.0, steps=10) == 0.0
    assert guidance_weight(0.01, 5.0, steps=10) == 5.0


def test_guidance_weight_without_the_step_cap_is_the_reference_beta() -> None:
    """``rtc.guidance_limit: beta``: the first step's weight is beta_max (10 at the shipped
    defaults, K = 4), as in Black et al.'s reference implementation; later steps follow the
    same (1 - tau) / (tau r^2) schedule, capped at beta_max."""
    assert guidance_weight(0.0, 10.0, steps=4, cap_at_steps=False) == 10.0
    assert guidance_weight(0.0, 10.0, steps=4, cap_at_steps=True) == 4.0
    assert guidance_weight(0.25, 10.0, steps=4, cap_at_steps=False) == pytest.approx(0.75 / (0.25 * 0.9))
    assert guidance_weight(0.25, 10.0, steps=4) == pytest.approx(0.75 / (0.25 * 0.9))  # at K = 4 only step 1 differs
