"""The sim sections of the embodiment configs: the runner's override, and bad values named by field."""
from __future__ import annotations

import pytest

from qwen_vla_ros.config import ConfigError, load_embodiment, parse_override
from qwen_vla_ros.config.hardware import ForwardCommandOutput
from qwen_vla_ros.config.sim import KinematicBaseSim, MujocoAlohaSim


def test_the_runner_override_switches_the_arms_to_forward_command() -> None:
    """What a runner passes as ``config_overrides`` on a machine without interbotix_xs_msgs."""
    override = dict([parse_override("outputs=[{adapter: forward_command, arms: [left, right]}]")])
    config = load_embodiment("aloha", override)
    (output,) = config.outputs
    assert isinstance(output, ForwardCommandOutput) and output.arms == ["left", "right"]
    assert output.topic.format(namespace=config.arm("left").namespace) == "/follower_left/forward_position_controller/commands"
    mobile = load_embodiment("aloha_mobile", dict([parse_override(
        "outputs=[{adapter: forward_command, arms: [left, right]}, {adapter: twist, topic: /cmd_vel}]")]))
    assert [o.adapter for o in mobile.outputs] == ["forward_command", "twist"]


def test_shipped_sim_sections() -> None:
    aloha = load_embodiment("aloha").sim
    assert isinstance(aloha, MujocoAlohaSim)
    assert (aloha.render_width, aloha.render_height, aloha.camera_rate_hz) == (320, 240, 10.0)
    assert not aloha.shadows and aloha.multisample == 0
    assert (aloha.randomization.object_x.lower, aloha.randomization.object_x.upper) == (0.0, 0.2)
    assert isinstance(load_embodiment("aloha_mobile").sim, MujocoAlohaSim)
    base = load_embodiment("mobile_base").sim
    assert isinstance(base, KinematicBaseSim) and base.cmd_vel_timeout_s == 0.3


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"sim.randomization.light_scale": [1.5, 0.5]}, ["sim.randomization.light_scale", "must not exceed"]),
        ({"sim.randomization.object_x": [0.1]}, ["sim.randomization.object_x", "[lower, upper]"]),
        ({"sim.randomization.table_rgb": [[0, 1], [0, 1], [0, 2]]}, ["table_rgb", "[0, 1]"]),
        ({"sim.mjcf_arms": {"left": "vx300s_left"}}, ["sim.mjcf_arms", "'right'"]),
        ({"sim.camera_map": {"cam_side": "top"}}, ["camera_map", "cam_side"]),
        ({"sim.success": "stacked"}, ["sim.success", "'stacked'"]),
    ],
)
def test_bad_sim_settings_name_the_field(override: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        load_embodiment("aloha", override)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_kinematic_initial_joints_must_match_the_arm() -> None:
    with pytest.raises(ConfigError, match="has 3 values but the arm has 6 joints"):
        load_embodiment("widowx", {"sim.initial_joints": {"arm": [0.0, 0.0, 0.0]}})
    with pytest.raises(ConfigError, match="unknown arm 'left'"):
        load_embodiment("widowx", {"sim.initial_joints": {"left": [0.0] * 6}})
