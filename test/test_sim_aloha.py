"""The MuJoCo ALOHA cell (no ROS): physics, command tracking, the gripper mapping, task success,
randomisation and rendering, all on gym-aloha's real MJCF."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; read when mujoco is first imported
pytest.importorskip("mujoco", reason="mujoco is not installed: pip install '.[sim]'")
pytest.importorskip("gym_aloha", reason="gym-aloha (the MJCF assets) is not installed: pip install '.[sim]'")

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.embodiments.gripper import joint_to_normalized, normalized_to_finger  # noqa: E402
from qwen_vla_ros.sim import scripted  # noqa: E402
from qwen_vla_ros.sim.commands import ArmCommand  # noqa: E402
from qwen_vla_ros.sim.world import Simulation  # noqa: E402

INTERBOTIX_LAYOUT = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper",
                     "left_finger", "right_finger")


def make(overrides: dict | None = None, seed: int = 0) -> Simulation:
    sim = Simulation(load_embodiment("aloha", overrides))
    sim.reset(np.random.default_rng(seed))
    return sim


def run(sim: Simulation, seconds: float) -> None:
    for _ in range(round(seconds / sim.period_s)):
        sim.step()


def test_physics_steps_the_control_period_in_mjcf_substeps() -> None:
    sim = make()
    cell = sim.mujoco
    assert cell.substeps * cell.model.opt.timestep == pytest.approx(0.02)
    assert cell.substeps == 10  # 50 Hz control over the MJCF's 2 ms timestep
    run(sim, 0.5)
    assert cell.data.time == pytest.approx(0.5)
    assert sim.time_s == pytest.approx(0.5)
    # The cube was placed 3 cm above the table and has fallen onto it.
    assert cell.object_position()[2] == pytest.approx(0.02, abs=2e-3)


def test_other_control_rates_keep_whole_substeps() -> None:
    sim = Simulation(load_embodiment("aloha"), rate_hz=30.0)
    assert sim.mujoco.substeps * sim.mujoco.model.opt.timestep == pytest.approx(1 / 30)


def test_joint_states_use_the_interbotix_layout() -> None:
    states = make().arm_states()
    assert set(states) == {"left", "right"}
    for state in states.values():
        assert state.names == INTERBOTIX_LAYOUT
        assert len(state.position) == len(state.velocity) == len(state.effort) == 9
        np.testing.assert_allclose(state.position[:6], [0, -0.96, 1.16, 0, -0.3, 0], atol=1e-6)  # the MJCF keyframe
        assert state.position[8] == pytest.approx(-state.position[7])


def test_commanded_poses_are_tracked_within_bounded_error() -> None:
    sim = make()
    targets = {"left": [0.3, -0.5, 0.8, 0.2, -0.2, 0.4], "right": [-0.4, -0.3, 0.5, -0.3, 0.4, -0.6]}
    for arm, target in targets.items():
        names = sim.config.arm(arm).joint_names
        sim.command_arm(arm, ArmCommand(dict(zip(names, target))))
    run(sim, 2.0)
    for arm, target in targets.items():
        error = np.abs(sim.arm_states()[arm].position[:6] - target)
        assert error.max() < 0.02, f"{arm} tracking error {error.round(4)}"


def test_commands_outside_the_config_limits_are_clipped() -> None:
    sim = make()
    shoulder = sim.config.arm("left").joints[1].limits
    sim.command_arm("left", ArmCommand({"shoulder": shoulder.upper + 1.0}))
    run(sim, 1.5)
    assert sim.arm_states()["left"].position[1] <= shoulder.upper + 0.01


@pytest.mark.parametrize("angle", [0.8, 1.0, 1.3, 1.6214])
def test_gripper_motor_angle_round_trips_through_the_mjcf_fingers(angle: float) -> None:
    """motor angle -> normalised -> MJCF finger actuator -> finger position -> published angle and metres.

    Fully closed is left out: the two MJCF fingers meet before their actuator range ends.
    """
    sim = make()
    gripper = sim.config.arm("left").gripper
    sim.command_arm("left", ArmCommand(gripper_angle=angle))
    run(sim, 2.0)
    state = sim.arm_states()["left"]
    assert state.position[6] == pytest.approx(angle, abs=0.01)
    expected_finger = normalized_to_finger(joint_to_normalized(angle, gripper), gripper)
    assert state.position[7] == pytest.approx(expected_finger, abs=3e-4)
    assert state.position[8] == pytest.approx(-expected_finger, abs=3e-4)


def test_success_is_false_at_reset_and_true_once_the_right_gripper_lifts_the_cube() -> None:
    sim = make(seed=3)
    cell = sim.mujoco
    run(sim, 0.2)
    assert sim.success() is False
    assert cell.reward() == 0
    resting_height = cell.object_position()[2]
    for command in scripted.commands(cell, scripted.pick_plan(cell, "right")):
        sim.command_arm("right", command)
        sim.step()
    assert cell.object_position()[2] > resting_height + 0.1
    assert cell.reward() == 2  # gym-aloha: lifted by the right gripper, not yet transferred
    assert sim.success() is True


def test_transferred_success_needs_the_left_gripper() -> None:
    sim = make({"sim.success": "transferred"}, seed=3)
    cell = sim.mujoco
    for command in scripted.commands(cell, scripted.pick_plan(cell, "right")):
        sim.command_arm("right", command)
        sim.step()
    assert cell.reward() == 2
    assert sim.success() is False


RANDOMIZED = {
    "sim.randomization.light_scale": [0.4, 1.6],
    "sim.randomization.table_rgb": [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],
    "sim.randomization.object_yaw": [-0.5, 0.5],
}


def test_reset_applies_the_conditions_it_reports() -> None:
    sim = Simulation(load_embodiment("aloha", RANDOMIZED))
    cell = sim.mujoco
    nominal_light = cell.model.light_diffuse.copy()
    conditions = sim.reset(np.random.default_rng(7))
    x, y, z, yaw = conditions["object_pose"]
    np.testing.assert_allclose(cell.object_position(), [x, y, z], atol=1e-6)
    address = cell.model.jnt_qposadr[cell.model.joint("red_box_joint").id]
    np.testing.assert_allclose(cell.data.qpos[address + 3 : address + 7], [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], atol=1e-6)
    assert 0.0 <= x <= 0.2 and 0.4 <= y <= 0.6 and -0.5 <= yaw <= 0.5
    np.testing.assert_allclose(cell.model.light_diffuse, np.clip(nominal_light * conditions["light_scale"], 0, 1), atol=1e-6)
    np.testing.assert_allclose(cell.model.geom_rgba[cell.model.geom("table").id, :3], conditions["table_rgb"], atol=1e-6)


def test_randomisation_is_seeded_and_changes_between_resets() -> None:
    first, second = (Simulation(load_embodiment("aloha", RANDOMIZED)) for _ in range(2))
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    draws_a = [first.reset(rng_a) for _ in range(3)]
    draws_b = [second.reset(rng_b) for _ in range(3)]
    assert draws_a == draws_b
    for key in ("object_pose", "light_scale", "table_rgb"):
        assert len({str(d[key]) for d in draws_a}) == 3, f"{key} did not change between resets"
    np.testing.assert_array_equal(first.mujoco.model.geom_rgba, second.mujoco.model.geom_rgba)


def test_unset_factors_keep_the_mjcf_values() -> None:
    sim = Simulation(load_embodiment("aloha"))
    cell = sim.mujoco
    light, table = cell.model.light_diffuse.copy(), cell.model.geom_rgba[cell.model.geom("table").id].copy()
    conditions = sim.reset(np.random.default_rng(5))
    assert set(conditions) == {"object_pose"}
    np.testing.assert_array_equal(cell.model.light_diffuse, light)
    np.testing.assert_array_equal(cell.model.geom_rgba[cell.model.geom("table").id], table)


@pytest.mark.slow
def test_cameras_render_the_mapped_views_and_show_the_table_colour() -> None:
    overrides = {**RANDOMIZED, "sim.render_width": 160, "sim.render_height": 120}
    sim = Simulation(load_embodiment("aloha", overrides))
    renderer = sim.make_renderer()
    try:
        sim.reset(np.random.default_rng(1))
        first = renderer.render(sim.snapshot())
        sim.reset(np.random.default_rng(2))
        second = renderer.render(sim.snapshot())
    finally:
        renderer.close()
    assert set(first) == {"cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"}
    for image in first.values():
        assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    assert len({image.tobytes() for image in first.values()}) == 4, "each camera must show its own view"
    # cam_high looks down at the table, whose colour was redrawn between the resets.
    assert np.abs(first["cam_high"].astype(int) - second["cam_high"].astype(int)).mean() > 5


def test_randomisation_levels_colour_the_cube_and_show_a_distractor() -> None:
    """An evaluation level swaps the config's randomisation for one reset: the cube's colour is
    drawn from its ranges, and the distractor appears on the table, colliding, only when asked."""
    from qwen_vla_ros.config.sim import AlohaRandomization

    sim = Simulation(load_embodiment("aloha"))
    cell = sim.mujoco
    blue = AlohaRandomization.model_validate({"object_rgb": [[0.0, 0.1], [0.0, 0.1], [0.8, 1.0]], "distractor": True})
    conditions = sim.reset(np.random.default_rng(1), blue)
    rgba = cell.model.geom_rgba[cell._object_geom]
    assert rgba[2] >= 0.8 and rgba[0] <= 0.1 and conditions["object_rgb"] == pytest.approx(rgba[:3].tolist(), abs=1e-6)
    distractor = cell.model.geom("distractor")
    assert distractor.rgba[3] == 1.0 and distractor.contype[0] == 1
    x, y = conditions["distractor_xy"]
    cube = cell.object_position()
    assert np.hypot(x - cube[0], y - cube[1]) >= 0.12
    assert cell.data.geom_xpos[distractor.id][2] > 0  # standing on the table
    plain = sim.reset(np.random.default_rng(1))
    assert "object_rgb" not in plain and "distractor_xy" not in plain
    assert cell.model.geom_rgba[cell._object_geom].tolist() == [1.0, 0.0, 0.0, 1.0]  # the MJCF's red
    assert distractor.rgba[3] == 0.0 and distractor.contype[0] == 0 and cell.data.geom_xpos[distractor.id][2] < 0
