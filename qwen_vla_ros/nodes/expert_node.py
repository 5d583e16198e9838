"""expert_node: the scripted transfer-cube expert as a command source of the graph.

It stands where policy_node stands: it publishes action chunks on the policy's topic, and
the controller judges, limits and executes them exactly as it does a policy's. Commands come
as JSON on ``/qwen_vla/expert/command`` (``home``: back to the start pose; ``plan``: one
episode from the cube position the sim's reset reported; ``play``: start the planned episode,
or plan and start one given ``object_position``); the latched
``/qwen_vla/expert/status`` says when each is running, done or refused. The planning and the
chunking are plain Python (``sim.scripted``, ``sim.playback``); this node only times them.

    python -m qwen_vla_ros.nodes.expert_node --ros-args -p config:=aloha
"""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.contract import ACTION_CHUNK, EXPERT_COMMAND, EXPERT_STATUS
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.nodes.common import declare_configs, run_node
from qwen_vla_ros.nodes.heartbeat import PolicyHeartbeat
from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory, create_publisher, create_subscription
from qwen_vla_ros.sim.playback import TrajectoryPlayer
from qwen_vla_ros.sim.scripted import ArmFrames, Trajectory, UnreachablePoseError, home_trajectory, plan_transfer


def parse_command(text: str) -> dict[str, Any]:
    """The JSON object of an expert command; MalformedMessageError for anything else."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessageError(f"not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise MalformedMessageError(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def command_duration_s(command: dict[str, Any], default_s: float = 2.0) -> float:
    """``duration_s`` of a ``home`` command: a positive finite number of seconds."""
    value = command.get("duration_s", default_s)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise MalformedMessageError(f"duration_s must be a positive number of seconds, got {value!r}")
    return float(value)


def command_object_position(command: dict[str, Any]) -> np.ndarray:
    """``object_position`` of a ``plan``/``play`` command: 3 finite numbers (metres, world frame)."""
    value = command.get("object_position")
    if not isinstance(value, list) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise MalformedMessageError(f"object_position must be 3 finite numbers, got {value!r}")
    position = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(position)):
        raise MalformedMessageError(f"object_position must be 3 finite numbers, got {value!r}")
    return position


class ExpertNode(Node):
    def __init__(self) -> None:
        super().__init__("expert_node")
        config, _ = declare_configs(self, "aloha")
        if config.sim is None or config.sim.type != "mujoco_aloha":
            raise ConfigError(config.name, [
                "expert_node plays the MuJoCo ALOHA transfer-cube expert; the embodiment needs a mujoco_aloha sim section"
            ])
        self.publish_period_s = float(self.declare_parameter("publish_period_s", 0.2).value)
        self.config = config
        period_s = config.control.action_dt  # the plan is cut on the chunks' own time grid
        self.period_s = period_s
        from qwen_vla_ros.sim.aloha import MujocoAloha  # the MJCF gives the arms' bases and keyframe

        cell = MujocoAloha(config, period_s)
        cell.reset(np.random.default_rng(0))
        self.frames = ArmFrames.of(cell)
        self.horizon = config.control.chunk_length
        self.lock = threading.Lock()
        self.player: TrajectoryPlayer | None = None
        self.current: dict[str, Any] | None = None
        self.planned: Trajectory | None = None
        self.last_action = home_trajectory(config, period_s, np.zeros(len(config.action.names)),
                                           self.frames, period_s).actions[-1]
        self.chunks = create_publisher(self, ACTION_CHUNK)
        # In the policy's place, so the controller's watchdog hears it as it would the policy.
        self.liveness = PolicyHeartbeat(self, config.safety.policy_timeout_s)
        self.status = create_publisher(self, EXPERT_STATUS)
        commands = MutuallyExclusiveCallbackGroup()  # planning takes seconds; chunks keep flowing meanwhile
        create_subscription(self, EXPERT_COMMAND, self._on_command, callback_group=commands)
        self.create_timer(self.publish_period_s, self._tick, callback_group=MutuallyExclusiveCallbackGroup())
        self._report({"id": None, "command": None}, "ready")
        self.get_logger().info(f"transfer-cube expert ready: chunks of {self.horizon} every {self.publish_period_s:g} s")

    def _report(self, command: dict[str, Any], state: str, detail: str = "") -> None:
        self.status.publish(String(data=json.dumps({"id": command.get("id"), "command": command.get("command"),
                                                    "state": state, "detail": detail})))

    def _on_command(self, message: String) -> None:
        command: dict[str, Any] = {}
        try:
            command = parse_command(message.data)
            trajectory = self._plan(command)
        except (MalformedMessageError, UnreachablePoseError) as exc:
            self.get_logger().error(f"{EXPERT_COMMAND.name}: refused {message.data!r}: {exc}")
            self._report(command, "error", str(exc))
            return
        if command.get("command") == "plan":
            self.planned = trajectory  # played by the next bare "play", once the recorder has started
            self._report(command, "done", f"planned {trajectory.duration_s:.2f} s")
            return
        with self.lock:
            self.player = TrajectoryPlayer(trajectory, self.get_clock().now().nanoseconds, self.horizon)
            self.current = command
        self._report(command, "running", f"{trajectory.duration_s:.2f} s")
        self._tick()

    def _plan(self, command: dict[str, Any]) -> Trajectory:
        kind = command.get("command")
        if kind == "home":
            return home_trajectory(self.config, self.period_s, self.last_action, self.frames, command_duration_s(command))
        if kind == "play" and "object_position" not in command:
            if self.planned is None:
                raise MalformedMessageError("'play' without object_position needs a 'plan' first")
            planned, self.planned = self.planned, None
            return planned
        if kind in ("plan", "play"):
            return plan_transfer(self.config, self.period_s, command_object_position(command), self.frames)
        raise MalformedMessageError(f"unknown command {kind!r}; use 'home', 'plan' or 'play'")

    def _tick(self) -> None:
        with self.lock:
            player, command = self.player, self.current
            if player is None or command is None:  # set together under the lock: both or neither
                return
            now_ns = self.get_clock().now().nanoseconds
            chunk = player.chunk(now_ns)
            if chunk is not None:  # None: this grid time was already sent
                self.chunks.publish(chunk_to_trajectory(chunk))
                self.last_action = chunk.actions[0]
            if player.done(now_ns):
                self.last_action = player.trajectory.actions[-1]
                self.player = None  # the controller holds the last chunk's final pose
                self._report(command, "done")


    def destroy_node(self) -> None:
        liveness = getattr(self, "liveness", None)  # absent when a bad config stopped the constructor before it
        if liveness is not None:
            liveness.stop()
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    return run_node(ExpertNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
