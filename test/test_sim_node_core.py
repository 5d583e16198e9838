"""The sim node's decisions without ROS: which topics command which arm (sim.commands.command_routes),
the resets and the randomisation asked for (sim.resets), and the physics' health (SimLoop.health).

Expected topics are the Interbotix driver's and ros2_control's own names with the arm namespaces
of config/aloha.yaml (follower_left, follower_right), written out here, not read from the code."""
from __future__ import annotations

import json

import pytest

from qwen_vla_ros.config import ConfigError, load_embodiment
from qwen_vla_ros.health import Level
from qwen_vla_ros.sim.commands import command_routes
from qwen_vla_ros.sim.loop import SimLoop
from qwen_vla_ros.sim.pacing import Pacer
from qwen_vla_ros.sim.resets import Resets
from qwen_vla_ros.sim.world import Simulation

FORWARD = "outputs=[{adapter: forward_command, arms: [left, right]}]"


def test_interbotix_outputs_route_group_and_gripper_commands_of_each_arm() -> None:
    routes = command_routes(load_embodiment("aloha"), interbotix=True)
    assert {(r.topic, r.arm.name, r.interface, r.name) for r in routes} == {
        ("/follower_left/commands/joint_group", "left", "joint_group", "arm"),
        ("/follower_left/commands/joint_single", "left", "joint_single", "gripper"),
        ("/follower_right/commands/joint_group", "right", "joint_group", "arm"),
        ("/follower_right/commands/joint_single", "right", "joint_single", "gripper"),
    }


def test_without_the_interbotix_messages_the_error_names_the_override_that_works() -> None:
    with pytest.raises(ConfigError) as refused:
        command_routes(load_embodiment("aloha"), interbotix=False)
    assert "['left', 'right'] have no command interface" in str(refused.value)
    assert FORWARD in str(refused.value)


def test_forward_command_outputs_need_no_interbotix() -> None:
    config = load_embodiment("aloha", {"outputs": [{"adapter": "forward_command", "arms": ["left", "right"]}]})
    routes = command_routes(config, interbotix=False)
    assert [(r.topic, r.interface) for r in routes] == [
        ("/follower_left/forward_position_controller/commands", "forward_command"),
        ("/follower_right/forward_position_controller/commands", "forward_command"),
    ]


@pytest.fixture(scope="module")
def aloha_sim() -> Simulation:
    """Real MuJoCo physics, no renderer: the randomisation only exists for the MuJoCo cell."""
    import os

    os.environ.setdefault("MUJOCO_GL", "disable")
    return Simulation(load_embodiment("aloha"))


def test_randomisation_fields_apply_from_the_next_reset_which_echoes_them(aloha_sim: Simulation) -> None:
    resets = Resets(aloha_sim, seed=5)
    fields = {"object_x": [-0.05, -0.04], "distractor": True}
    assert resets.vary(json.dumps(fields))
    ok, message = resets.reset()
    report = json.loads(message)
    assert ok and report["seed"] == 5 and report["reset"] == 1 and report["randomization"] == fields
    assert -0.05 <= report["object_pose"][0] <= -0.04 and "distractor_xy" in report


def test_bad_fields_are_refused_and_resets_fail_with_the_reason_until_good_ones_come(aloha_sim: Simulation) -> None:
    resets = Resets(aloha_sim, seed=1)
    for bad, reason in (('{"object_colour": [1, 0, 0]}', "object_colour"), ("[1, 2]", "JSON object"),
                        ("not json", "refused")):
        assert not resets.vary(bad)
        ok, message = resets.reset()
        assert not ok and "/qwen_vla/sim/randomization" in message and reason in message, message
    assert resets.count == 0
    assert resets.vary("{}")
    ok, message = resets.reset()
    assert ok and json.loads(message)["randomization"] == {} and resets.count == 1


def test_a_kinematic_sim_has_no_randomisation_to_vary() -> None:
    resets = Resets(Simulation(load_embodiment("widowx")), seed=0)
    assert not resets.vary('{"object_x": [0, 0.1]}') and "no randomization" in str(resets.error)


def test_health_is_an_error_once_physics_stopped_and_a_warning_behind_real_time() -> None:
    sim = Simulation(load_embodiment("widowx"))
    loop = SimLoop(sim, Pacer(period_ns=20_000_000, realtime=True), lambda _: None, 0)
    behind = {"wall_time_s": 10.0, "real_time_factor": 0.5}
    assert loop.health(behind)[0] == Level.ERROR, "a loop that never started (or stopped) is not running"
    loop.start()
    try:
        level, message = loop.health(behind)
        assert level == Level.WARN and "0.50" in message
        assert loop.health({"wall_time_s": 10.0, "real_time_factor": 1.0}) == (Level.OK, "running")
        assert loop.health({"wall_time_s": 1.0, "real_time_factor": 0.5})[0] == Level.OK, "start-up is slower"
    finally:
        loop.stop()
    assert loop.health({"wall_time_s": 10.0, "real_time_factor": 1.0})[0] == Level.ERROR
