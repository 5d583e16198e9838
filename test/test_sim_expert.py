"""The scripted transfer-cube expert on gym-aloha's real MJCF, physics only (no ROS, no rendering):
it lifts and hands the cube over on seeded random starts, and its actions stay inside the limits
the controller would enforce (read from the YAML itself), so the same actions survive the graph."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco", reason="mujoco is not installed: pip install '.[sim]'")
pytest.importorskip("gym_aloha", reason="gym-aloha (the MJCF assets) is not installed: pip install '.[sim]'")

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.sim import scripted
from qwen_vla_ros.sim.world import Simulation

ALOHA_YAML = Path(__file__).resolve().parents[1] / "config" / "aloha.yaml"


def transfer_sim() -> Simulation:
    return Simulation(load_embodiment("aloha", {"sim.success": "transferred"}))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_expert_lifts_then_hands_the_cube_to_the_left_arm(seed: int) -> None:
    sim = transfer_sim()
    result = scripted.run_transfer_episode(sim, seed)
    cell = sim.mujoco
    assert result.lifted, "stage 1: the right gripper never held the cube off the table"
    assert result.success, f"stage 2 failed: final gym-aloha reward {result.final_reward}"
    # Independently of success(): the cube is in the air and the right hand has let go.
    contacts = cell.contacts()
    assert cell.object_position()[2] > 0.1
    assert (cell._object_geom, cell._lift_finger) not in contacts


def test_expert_actions_stay_within_the_yaml_limits() -> None:
    channels = yaml.safe_load(ALOHA_YAML.read_text())["action"]["channels"]
    sim = transfer_sim()
    sim.reset(np.random.default_rng(5))
    trajectory = scripted.transfer_trajectory(sim.mujoco)
    assert list(trajectory.channel_names) == [c["name"] for c in channels]
    period = trajectory.period_s
    velocity = np.abs(np.diff(trajectory.actions, axis=0)) / period
    acceleration = np.abs(np.diff(trajectory.actions, n=2, axis=0)) / period**2
    for index, channel in enumerate(channels):
        limits = channel["limits"]
        assert trajectory.actions[:, index].min() >= limits["lower"], channel["name"]
        assert trajectory.actions[:, index].max() <= limits["upper"], channel["name"]
        assert velocity[:, index].max() <= limits["velocity"], channel["name"]
        assert acceleration[:, index].max() <= limits["acceleration"], channel["name"]


def test_unreachable_meeting_point_is_refused_with_the_pose() -> None:
    sim = transfer_sim()
    sim.reset(np.random.default_rng(0))
    with pytest.raises(scripted.UnreachablePoseError, match="out of the arm's reach"):
        scripted.transfer_trajectory(sim.mujoco, scripted.TransferSettings(meet=(0.0, 0.5, 1.5)))


def test_player_cuts_chunks_on_the_trajectory_grid_and_holds_the_end() -> None:
    from qwen_vla_ros.sim.playback import TrajectoryPlayer

    actions = np.arange(10.0)[:, None] * np.ones((1, 2))
    trajectory = scripted.Trajectory(actions, ("a", "b"), 0.02, {})
    player = TrajectoryPlayer(trajectory, start_ns=1_000_000_000, horizon=4)
    first = player.chunk(1_000_000_000 + 45_000_000)  # 45 ms in: grid index 2
    assert first.stamp_ns == 1_040_000_000
    np.testing.assert_array_equal(first.actions[:, 0], [2, 3, 4, 5])
    assert player.chunk(1_000_000_000 + 55_000_000) is None  # same grid time: not sent twice
    tail = player.chunk(1_000_000_000 + 180_000_000)  # index 9: the last action, repeated
    np.testing.assert_array_equal(tail.actions[:, 0], [9, 9, 9, 9])
    assert not player.done(1_000_000_000 + 199_000_000) and player.done(1_000_000_000 + 200_000_000)


@pytest.mark.parametrize(("text", "words"), [
    ("not json", "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"command": "home", "duration_s": "2"}', "duration_s must be a positive number"),
    ('{"command": "home", "duration_s": -1}', "duration_s must be a positive number"),
    ('{"command": "plan"}', "object_position must be 3 finite numbers, got None"),
    ('{"command": "plan", "object_position": [0.1, "x", 0.0]}', "object_position must be 3 finite"),
    ('{"command": "plan", "object_position": [0.1, 0.2]}', "object_position must be 3 finite"),
])
def test_expert_commands_that_cannot_be_used_are_malformed_messages(text: str, words: str) -> None:
    """The expert node refuses exactly these (and reports them on its status); anything else it raises is a bug."""
    from qwen_vla_ros.errors import MalformedMessageError
    from qwen_vla_ros.nodes.expert_node import command_duration_s, command_object_position, parse_command

    with pytest.raises(MalformedMessageError, match=words):
        command = parse_command(text)
        if command.get("command") == "home":
            command_duration_s(command)
        else:
            command_object_position(command)


def test_expert_command_fields_are_read_as_sent() -> None:
    from qwen_vla_ros.nodes.expert_node import command_duration_s, command_object_position, parse_command

    assert command_duration_s(parse_command('{"command": "home"}')) == 2.0
    assert command_duration_s(parse_command('{"command": "home", "duration_s": 3}')) == 3.0
    position = command_object_position(parse_command('{"command": "plan", "object_position": [0.1, -0.2, 0.02]}'))
    np.testing.assert_array_equal(position, [0.1, -0.2, 0.02])
