"""Hostile chunks against the control core: whatever arrives, every command stays finite and inside
its position, velocity and acceleration limits.

Chunks are drawn from a seeded generator: valid ones with random jumps across the whole
range, NaN, +-inf, values at 100x the limits, wrong widths and names, empty chunks, zero,
negative, tiny and huge dt, future, stale and missing stamps, duplicates, reordering and
very long chunks, actions spaced unlike control.action_dt. Feedback and the policy's heartbeat
drop out now and then and the e-stop is pressed and reset.
The robot follows the commands (helpers.robots.FollowingRobot).

The control clock can be jittered too: periods late by up to 1.5 periods, early ones and
extra steps a fraction of a period after the last (a takeover served at once). Limits are
then checked over each step's real duration, capped at a period as the controller does.

The one exemption from the rate limits is documented behaviour: when the controller stops
(trajectory ran out, stale feedback, e-stop) a base's (v, omega) goes to zero at once.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers.robots import (
    T0_NS,
    FollowingRobot,
    limits_of,
    make_controller,
    rate_limit_violations,
)

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.control import Controller

KINDS = (
    "valid", "valid", "valid", "nan", "inf", "huge", "wrong_width", "wrong_names", "empty", "bad_dt", "tiny_dt",
    "huge_dt", "future", "stale", "unstamped", "duplicate", "reordered", "long", "off_spacing",
    "long_in_time",
)


def hostile_chunk(rng: np.random.Generator, controller: Controller, now_ns: int, sent: list[ActionChunk]) -> ActionChunk:
    names = controller.policy.names
    lower, upper = controller.policy.lower, controller.policy.upper
    config = controller.config.control
    horizon = int(rng.integers(1, 2 * config.chunk_length + 1))
    actions = rng.uniform(lower, upper, size=(horizon, len(names)))
    stamp = now_ns - int(rng.uniform(0.0, 0.3) * NS_PER_S)
    dt = config.action_dt
    kind = KINDS[rng.integers(len(KINDS))]
    if kind == "nan":
        actions[rng.integers(horizon), rng.integers(len(names))] = np.nan
    elif kind == "inf":
        actions[rng.integers(horizon), rng.integers(len(names))] = rng.choice([np.inf, -np.inf])
    elif kind == "huge":
        actions = rng.uniform(-100, 100, size=actions.shape) * np.maximum(np.abs(lower), np.abs(upper))
    elif kind == "wrong_width":
        width = int(rng.choice([w for w in range(1, 2 * len(names)) if w != len(names)]))
        actions = rng.uniform(-1, 1, size=(horizon, width))
    elif kind == "wrong_names":
        names = tuple(rng.permutation(names)) if rng.random() < 0.5 else tuple(f"x{i}" for i in range(len(names)))
    elif kind == "empty":
        actions = actions[:0]
    elif kind == "bad_dt":
        dt = float(rng.choice([0.0, -dt, -1.0, np.nan, np.inf]))
    elif kind == "tiny_dt":
        dt = 1e-9
    elif kind == "huge_dt":
        dt = 1e3
    elif kind == "future":
        stamp = now_ns + int(rng.uniform(0.06, 100.0) * NS_PER_S)
    elif kind == "stale":
        stamp = now_ns - int(rng.uniform(1.0, 1000.0) * NS_PER_S)
    elif kind == "unstamped":
        stamp = None
    elif kind == "duplicate" and sent:
        return sent[int(rng.integers(len(sent)))]
    elif kind == "reordered" and sent:
        stamp = (sent[-1].stamp_ns or now_ns) - int(rng.uniform(0.001, 0.2) * NS_PER_S)
    elif kind == "long":
        actions = rng.uniform(lower, upper, size=(1000, len(names)))
    elif kind == "long_in_time":  # few enough actions, but spanning more than safety.max_chunk_duration_s
        count = min(int(controller.config.safety.max_chunk_duration_s / dt) + 2, controller.config.safety.max_chunk_actions)
        actions = rng.uniform(lower, upper, size=(count, len(names)))
    elif kind == "off_spacing":
        dt *= float(rng.choice([0.5, 0.9, 1.1, 2.0, 500.0]))
    return ActionChunk(actions, names, dt, stamp)


def assert_commands_safe(controller: Controller, positions: np.ndarray, modes: list[str], stamps_ns: np.ndarray) -> None:
    """Judged against the YAML file, the URDF and the reviewed envelope (helpers.limits)."""
    limits = limits_of(controller)
    assert np.all(np.isfinite(positions)), "non-finite command"
    assert np.all(positions >= limits.lower) and np.all(positions <= limits.upper), "command outside position limits"
    too_fast, too_sharp = rate_limit_violations(limits, positions, stamps_ns, controller.period_s)
    # Exempt: a velocity channel (base) dropping to exactly zero when the controller stops.
    stopping = np.array([mode != "running" for mode in modes])[:, None] & (positions == 0.0) & controller.layout.velocity_channel
    too_fast &= ~stopping[1:]
    too_sharp &= ~(stopping[2:] | stopping[1:-1])
    assert not too_fast.any(), f"{int(too_fast.sum())} velocity violations, first at period {np.argwhere(too_fast)[0]}"
    assert not too_sharp.any(), f"{int(too_sharp.sum())} acceleration violations, first at {np.argwhere(too_sharp)[0]}"


def next_step_ns(rng: np.random.Generator, now_ns: int, period_ns: int, jitter: bool) -> int:
    """The next control step: one period on, or with ``jitter`` now and then late, early or almost at once."""
    if not jitter:
        return now_ns + period_ns
    kind = rng.random()
    scale = 1.0 if kind < 0.7 else rng.uniform(0.05, 1.0) if kind < 0.8 else rng.uniform(1.0, 2.5) if kind < 0.9 else rng.uniform(0.001, 0.05)
    return now_ns + max(1, round(scale * period_ns))


def fuzz(embodiment: str, chunks: int, seed: int, jitter: bool = False, **runtime) -> Controller:
    rng = np.random.default_rng(seed)
    controller = make_controller(embodiment, **runtime)
    robot = FollowingRobot(controller, controller.layout.clamp(np.zeros(len(controller.layout))))
    sent: list[ActionChunk] = []
    positions, modes, stamps = [], [], []
    silent_until = estop_since = policy_silent_until = -1
    period, now, remaining = 0, T0_NS - controller.period_ns, chunks
    while remaining > 0:
        now = next_step_ns(rng, now, controller.period_ns, jitter)
        if period > silent_until:
            robot.publish(now)
            if rng.random() < 0.003:
                silent_until = period + int(rng.integers(1, 40))  # feedback drops out
        if period > policy_silent_until:
            controller.policy_heartbeat(now)
            if rng.random() < 0.003:
                policy_silent_until = period + int(rng.integers(1, 60))  # the policy's heartbeat drops out
        if estop_since < 0 and rng.random() < 0.002:
            controller.engage_estop()
            estop_since = period
        elif estop_since >= 0 and period - estop_since > 20 and rng.random() < 0.05:
            controller.reset_estop()  # after the arms have braked to rest, as an operator would
            estop_since = -1
        for _ in range(int(rng.integers(0, 6))):
            chunk = hostile_chunk(rng, controller, now, sent)
            outcome = controller.submit(chunk, now)
            if outcome.accepted:
                sent.append(chunk)
            remaining -= 1
        output = controller.step(now)
        robot.follow(output)
        if output is not None:
            positions.append(output.positions)
            modes.append(output.mode)
            stamps.append(output.stamp_ns)
        if period % 10 == 0:
            committed, limits = controller.committed(now), limits_of(controller)
            assert committed is None or (np.all(np.isfinite(committed)) and np.all(committed >= limits.lower)
                                         and np.all(committed <= limits.upper))
        period += 1
    assert_commands_safe(controller, np.array(positions), modes, np.array(stamps))
    status = controller.status(now)
    assert status["chunks_accepted"] > chunks // 20, status
    assert status["chunks_rejected"] > chunks // 3, status
    return controller


@pytest.mark.slow
def test_ten_thousand_hostile_chunks_never_produce_an_unsafe_command() -> None:
    controller = fuzz("aloha_mobile", 10_000, seed=1)
    status = controller.status(0)
    for reason in ("non_finite", "wrong_names", "wrong_shape", "bad_dt", "future_stamp", "stale", "unstamped",
                   "duplicate", "out_of_order", "bad_spacing", "too_long_duration", "estop", "policy_lost"):
        assert status[f"rejected_{reason}"] > 0, f"the fuzz never exercised {reason}"
    assert status["clamped_actions"] > 0 and status["velocity_limited"] > 0 and status["acceleration_limited"] > 0


@pytest.mark.parametrize(
    "embodiment, chunks, runtime",
    [
        ("aloha", 2000, {"blending.method": "temporal_ensemble"}),
        ("aloha", 2000, {"blending.method": "latest"}),
        ("mobile_base", 2000, {}),
        ("widowx", 400, {}),
    ],
)
def test_hostile_chunks_other_embodiments_and_blendings(embodiment: str, chunks: int, runtime: dict) -> None:
    fuzz(embodiment, chunks, seed=2, **runtime)


@pytest.mark.parametrize("embodiment", ["aloha_mobile", "widowx"])
def test_hostile_chunks_on_a_jittered_clock_stay_within_limits_over_real_time(embodiment: str) -> None:
    fuzz(embodiment, 2000 if embodiment == "aloha_mobile" else 400, seed=3, jitter=True)
