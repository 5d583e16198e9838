"""Interpolation, blending and rate limiting of the control core, each on its own."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.runtime import Blending
from qwen_vla_ros.control.blending import Blender
from qwen_vla_ros.control.interpolation import Trajectory
from qwen_vla_ros.control.limits import LimiterState, RateLimiter, braking_speed, stopping_point

DT = 0.1
START = 5 * NS_PER_S
KNOTS = np.array([[0.0, 1.0], [0.4, 0.5], [0.5, -0.2], [1.2, 0.0], [1.0, 0.3]])


def at(seconds: float) -> int:
    return START + round(seconds * NS_PER_S)


def derivatives(trajectory: Trajectory, seconds: float, side: int) -> np.ndarray:
    """Velocity and acceleration at ``seconds`` from the segment on one side (+1 right, -1 left).

    Six samples inside one segment determine a quintic (or lower) polynomial exactly, so
    a degree-5 fit recovers its derivatives without finite-difference error.
    """
    offsets = side * np.linspace(0.0, 0.5 * DT, 6)
    samples = np.array([trajectory.sample(at(seconds + o)) for o in offsets])
    fit = np.polyfit(offsets, samples, 5)  # columns: channels
    return np.array([fit[-2], 2 * fit[-3]])  # d/dt and d2/dt2 at offset 0


@pytest.mark.parametrize("method", ["linear", "cubic_hermite", "minimum_jerk"])
def test_every_method_passes_through_the_knots_and_holds_the_ends(method: str) -> None:
    trajectory = Trajectory(START, DT, KNOTS, method)
    for k, knot in enumerate(KNOTS):
        np.testing.assert_allclose(trajectory.sample(at(k * DT)), knot, atol=1e-12)
    np.testing.assert_allclose(trajectory.sample(at(-1.0)), KNOTS[0])
    np.testing.assert_allclose(trajectory.sample(at(10.0)), KNOTS[-1])
    assert trajectory.end_ns == at((len(KNOTS) - 1) * DT)


def test_linear_is_straight_between_knots_and_kinks_at_them() -> None:
    trajectory = Trajectory(START, DT, KNOTS, "linear")
    np.testing.assert_allclose(trajectory.sample(at(0.25 * DT)), 0.75 * KNOTS[0] + 0.25 * KNOTS[1])
    np.testing.assert_allclose(derivatives(trajectory, DT, -1)[0], (KNOTS[1] - KNOTS[0]) / DT, rtol=1e-6)
    np.testing.assert_allclose(derivatives(trajectory, DT, +1)[0], (KNOTS[2] - KNOTS[1]) / DT, rtol=1e-6)


def test_cubic_hermite_matches_central_difference_velocities_and_is_c1() -> None:
    trajectory = Trajectory(START, DT, KNOTS, "cubic_hermite")
    for k in (1, 2, 3):
        expected = (KNOTS[k + 1] - KNOTS[k - 1]) / (2 * DT)
        left, right = derivatives(trajectory, k * DT, -1), derivatives(trajectory, k * DT, +1)
        np.testing.assert_allclose(left[0], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(right[0], expected, rtol=1e-6, atol=1e-6)
    # Acceleration jumps at a knot: C1, not C2.
    assert not np.allclose(derivatives(trajectory, DT, -1)[1], derivatives(trajectory, DT, +1)[1], atol=1.0)


def test_minimum_jerk_matches_velocity_and_acceleration_and_is_c2() -> None:
    trajectory = Trajectory(START, DT, KNOTS, "minimum_jerk")
    velocities = np.gradient(KNOTS, DT, axis=0)
    velocities[-1] = 0
    accelerations = np.gradient(velocities, DT, axis=0)
    for k in (1, 2, 3):
        for side in (-1, +1):
            got = derivatives(trajectory, k * DT, side)
            np.testing.assert_allclose(got[0], velocities[k], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got[1], accelerations[k], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method", ["cubic_hermite", "minimum_jerk"])
def test_smooth_methods_end_at_rest(method: str) -> None:
    trajectory = Trajectory(START, DT, KNOTS, method)
    np.testing.assert_allclose(derivatives(trajectory, (len(KNOTS) - 1) * DT, -1)[0], 0.0, atol=1e-5)


def test_single_action_chunk_is_constant() -> None:
    trajectory = Trajectory(START, DT, KNOTS[:1], "minimum_jerk")
    np.testing.assert_allclose(trajectory.sample(at(0.5)), KNOTS[0])
    assert trajectory.end_ns == START


def constant(value: float, start_s: float, length_s: float) -> Trajectory:
    return Trajectory(at(start_s), length_s, np.array([[value], [value]]), "linear")


def test_latest_switches_at_once() -> None:
    blender = Blender(Blending(method="latest"), period_s=0.02)
    blender.add(constant(1.0, 0, 2), at(0), np.zeros(1))
    blender.add(constant(3.0, 0.5, 2), at(0.5), np.zeros(1))
    assert blender.sample(at(0.5))[0] == 3.0
    assert len(blender.layers) == 1


def test_crossfade_follows_cosine_weights_from_arrival() -> None:
    blender = Blender(Blending(method="crossfade", crossfade_steps=10), period_s=0.02)  # fade 0.2 s
    blender.add(constant(1.0, 0, 2), at(0), np.zeros(1))
    blender.add(constant(3.0, 0.3, 2), at(0.5), np.zeros(1))
    for elapsed in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3):
        weight = 0.5 - 0.5 * math.cos(math.pi * min(elapsed / 0.2, 1.0))
        assert blender.sample(at(0.5 + elapsed))[0] == pytest.approx((1 - weight) * 1.0 + weight * 3.0)
    blender.prune(at(0.75))
    assert len(blender.layers) == 1 and blender.sample(at(0.8))[0] == 3.0


def test_crossfade_chains_when_a_third_chunk_arrives_mid_fade() -> None:
    blender = Blender(Blending(method="crossfade", crossfade_steps=10), period_s=0.02)
    for value, arrival in ((0.0, 0.0), (1.0, 0.5), (5.0, 0.6)):
        blender.add(constant(value, arrival, 2), at(arrival), np.zeros(1))
    w1 = 0.5 - 0.5 * math.cos(math.pi * 0.15 / 0.2)
    w2 = 0.5 - 0.5 * math.cos(math.pi * 0.05 / 0.2)
    assert blender.sample(at(0.65))[0] == pytest.approx((1 - w2) * ((1 - w1) * 0.0 + w1 * 1.0) + w2 * 5.0)


def test_crossfade_starts_from_the_current_command_when_the_plan_ran_out() -> None:
    blender = Blender(Blending(method="crossfade", crossfade_steps=10), period_s=0.02)
    blender.add(constant(1.0, 0, 0.5), at(0), np.zeros(1))
    assert blender.sample(at(0.6)) is None and blender.exhausted(at(0.6))
    blender.add(constant(3.0, 0.6, 1), at(1.0), np.array([7.0]))
    assert blender.sample(at(1.0))[0] == pytest.approx(7.0)
    assert blender.sample(at(1.1))[0] == pytest.approx(5.0)


def test_temporal_ensemble_uses_act_weights_over_chunks_covering_t() -> None:
    decay = 0.3
    blender = Blender(Blending(method="temporal_ensemble", ensemble_decay=decay), period_s=0.02)
    blender.add(constant(1.0, 0.0, 1.0), at(0.0), np.zeros(1))
    blender.add(constant(2.0, 0.2, 1.0), at(0.2), np.zeros(1))
    blender.add(constant(4.0, 0.4, 1.0), at(0.4), np.zeros(1))
    weights = [math.exp(-decay * i) for i in range(3)]  # i = 0 is the oldest
    assert blender.sample(at(0.5))[0] == pytest.approx((1 * weights[0] + 2 * weights[1] + 4 * weights[2]) / sum(weights))
    # After the oldest chunk ends (t > 1.0) only two predictions remain, re-indexed from the oldest.
    assert blender.sample(at(1.1))[0] == pytest.approx((2 * weights[0] + 4 * weights[1]) / sum(weights[:2]))
    before = blender.sample(at(1.3))
    blender.prune(at(1.1))
    assert len(blender.layers) == 2 and blender.sample(at(1.3)) == pytest.approx(before)
    assert blender.sample(at(1.5)) is None


def test_braking_speed_solves_travel_plus_stop_equals_distance() -> None:
    distance, acceleration, period = np.array([0.0, 0.01, 0.3, 2.0]), np.full(4, 20.0), 0.02
    v = braking_speed(distance, 1 / acceleration, period)
    np.testing.assert_allclose(v * period + v**2 / (2 * acceleration), distance, atol=1e-12)
    np.testing.assert_allclose(braking_speed(distance, np.zeros(4), period), distance / period)


def test_stopping_point_matches_braking_step_by_step() -> None:
    period, acceleration = 0.02, 20.0
    for speed in (0.0, 0.05, 0.4, 1.0, -2.7):
        position, velocity = 0.3, speed
        while abs(velocity) > acceleration * period:
            velocity -= math.copysign(acceleration * period, velocity)
            position += velocity * period
        expected = position
        got = stopping_point(np.array([0.3]), np.array([speed]), np.array([acceleration]), period)[0]
        assert got == pytest.approx(expected, abs=1e-12)


def limiter(n: int = 1, lower: float = -1.0, upper: float = 1.0, velocity: float = 2.0, acceleration: float = 20.0) -> RateLimiter:
    return RateLimiter(np.full(n, lower), np.full(n, upper), np.full(n, velocity), np.full(n, acceleration), 0.02)


def test_limiter_tracks_a_feasible_trajectory_exactly() -> None:
    rate = limiter()
    times = np.arange(200) * 0.02
    targets = 0.5 * np.sin(2 * times)  # |v| <= 1 < 2, |a| <= 2 < 20
    state = LimiterState(np.array([targets[0]]), np.array([1.0]))  # already moving with it
    for k in range(1, len(targets)):
        state = rate.step(state, targets[k : k + 1], np.array([(targets[k] - targets[k - 1]) / 0.02]))
        assert state.position[0] == pytest.approx(targets[k], abs=1e-12)


def test_limiter_reaches_a_distant_target_without_overshoot() -> None:
    rate = limiter()
    state = LimiterState(np.array([-0.9]), np.array([0.0]))
    positions = []
    for _ in range(200):
        state = rate.step(state, np.array([0.8]), np.zeros(1))
        positions.append(state.position[0])
    assert positions[-1] == pytest.approx(0.8, abs=1e-9)
    assert max(positions) <= 0.8 + 1e-9
    assert np.all(np.diff(positions) >= -1e-12), "approached monotonically"


@settings(max_examples=200, deadline=None)
@given(
    limits=st.tuples(st.floats(0.1, 5.0), st.floats(0.05, 4.0), st.floats(0.5, 80.0)),
    start=st.floats(-1.0, 1.0),
    moves=st.lists(st.tuples(st.floats(-100, 100), st.integers(1, 30)), min_size=1, max_size=8),
)
def test_limiter_never_breaks_a_limit_whatever_the_target_does(limits, start, moves) -> None:
    half_range, velocity, acceleration = limits
    rate = limiter(lower=-half_range, upper=half_range, velocity=velocity, acceleration=acceleration)
    state = LimiterState(np.clip(np.array([start]), -half_range, half_range), np.zeros(1))
    previous_target = None
    history = [state]
    target = state.position
    for value, periods in moves:
        # The target travels to ``value`` at constant speed over ``periods``, then the next move starts.
        start, end = target, np.clip(np.array([value]), -half_range, half_range)
        for k in range(1, periods + 1):
            target = start + (end - start) * k / periods
            feedforward = np.zeros(1) if previous_target is None else (target - previous_target) / 0.02
            previous_target = target
            state = rate.step(state, target, feedforward)
            history.append(state)
    positions = np.array([s.position[0] for s in history])
    steps = np.diff(positions) / 0.02
    assert np.all(np.abs(positions) <= half_range + 1e-12)
    assert np.all(np.abs(steps) <= velocity * (1 + 1e-9) + 1e-12)
    assert np.all(np.abs(np.diff(np.concatenate([[0.0], steps]))) <= acceleration * 0.02 * (1 + 1e-9) + 1e-9)


@settings(max_examples=200, deadline=None)
@given(
    limits=st.tuples(st.floats(0.1, 5.0), st.floats(0.05, 4.0), st.floats(0.5, 80.0)),
    start=st.floats(-1.0, 1.0),
    steps=st.lists(st.tuples(st.floats(-100, 100), st.floats(1e-4, 1.0)), min_size=1, max_size=120),
)
def test_limiter_holds_its_limits_over_steps_of_any_length_up_to_a_period(limits, start, steps) -> None:
    """Steps shorter than the period (a takeover served at once, the period after a late one)
    move only what their real duration allows, and the bounds still hold with later full periods."""
    half_range, velocity, acceleration = limits
    rate = limiter(lower=-half_range, upper=half_range, velocity=velocity, acceleration=acceleration)
    state = LimiterState(np.clip(np.array([start]), -half_range, half_range), np.zeros(1))
    positions, durations = [state.position[0]], []
    for value, fraction in steps:
        dt = 0.02 * fraction
        state = rate.step(state, np.clip(np.array([value]), -half_range, half_range), np.zeros(1), dt_s=dt)
        positions.append(state.position[0])
        durations.append(dt)
    dt = np.array(durations)
    speeds = np.diff(positions) / dt
    assert np.all(np.abs(positions) <= half_range + 1e-12)
    assert np.all(np.abs(speeds) <= velocity * (1 + 1e-9) + 1e-9)
    assert np.all(np.abs(np.diff(np.concatenate([[0.0], speeds]))) <= acceleration * dt * (1 + 1e-9) + 1e-6)


def test_limiter_refuses_a_step_longer_than_its_period() -> None:
    with pytest.raises(ValueError, match="must last"):
        limiter().step(LimiterState(np.zeros(1), np.zeros(1)), np.ones(1), np.zeros(1), dt_s=0.03)
