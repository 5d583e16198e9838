"""trial_recorder: records evaluation trials to rosbag2 (MCAP) and labels them.

Thin shell over :class:`qwen_vla_ros.recording.session.TrialSession`. Subscriptions are
raw (``raw=True``): the callback receives the serialised CDR bytes and only enqueues them,
so nothing is deserialised or re-serialised on the way to the bag. The few topics the
bookkeeping reads (mode, instruction, sim success) are decoded from those same bytes.
Topics are subscribed once a publisher appears, with QoS matched to the publishers.
"""
from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from qwen_vla_ros.config import EMBODIMENTS, ConfigError, EmbodimentConfig, RuntimeConfig
from qwen_vla_ros.contract import (
    INSTRUCTION,
    MODE,
    NEXT_CONDITION,
    SIM_SUCCESS,
    START_POSE,
    TRIAL_EVENT,
    TRIAL_SERVICES,
)
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.fingerprint import checkpoint_fingerprint
from qwen_vla_ros.nodes.common import declare_configs, run_node, string_list_parameter
from qwen_vla_ros.nodes.ros_contract import create_publisher, create_service, message_class
from qwen_vla_ros.recording.bag import bag_writer_factory
from qwen_vla_ros.recording.protocol import load_protocol, parse_condition
from qwen_vla_ros.recording.session import RecorderIdentity, SessionSettings, TrialError, TrialSession
from qwen_vla_ros.recording.topics import TopicTypeMismatchError, check_types, recorded_topics, subscription_qos
from qwen_vla_ros.recording.trial import Outcome, TrialRecord, TrialStore

OUTCOMES: dict[str, Outcome | None] = {  # by trial service: None starts a trial
    "trial_start": None,
    "trial_success": "success",
    "trial_failure": "failure",
    "trial_abort": "aborted",
}


class TrialRecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("trial_recorder")
        embodiment, runtime = declare_configs(self, "aloha")
        param = self._parameter
        param("operator", "")
        param("condition", "")
        self._discovery_period_s = param("discovery_period_s", 0.5)
        self._qos_depth = param("qos_depth", 1000)
        protocol_path = param("protocol", "")
        protocol = load_protocol(protocol_path) if protocol_path else None
        output_dir = Path(param("output_dir", "~/qwen_vla_trials")).expanduser()
        try:
            settings = SessionSettings(
                queue_bytes=int(param("queue_max_mb", 512.0) * 1024 * 1024),
                flush_period_s=param("flush_period_s", 1.0),
                auto_label_success=param("auto_label_success", False),
                trial_timeout_s=param("trial_timeout_s", 0.0),
            )
            open_writer = bag_writer_factory(param("writer", "auto"), param("fsync", True))
            self._wanted = recorded_topics(
                embodiment, string_list_parameter(self, "topics"), string_list_parameter(self, "exclude_topics")
            )
            store = TrialStore(output_dir)
        except (InvalidArgumentError, OSError) as exc:
            raise ConfigError("trial_recorder parameters", [str(exc)]) from exc
        self.session = TrialSession(store, self._identity(embodiment, runtime), protocol, open_writer, settings,
                                    expected_topics=self._wanted)
        for record in self.session.recover():
            self.get_logger().warning(f"{record.id} was interrupted and is marked incomplete: {record.notes[-1]}")
        for damaged in store.damaged():
            self.get_logger().error(f"{damaged.path.name} is damaged and left alone: {damaged.reason}")

        self._subscribed: dict[str, Any] = {}
        self._unrecordable: set[str] = set()
        self._decoders: dict[str, Callable[[bytes, int], None]] = {
            MODE.name: lambda data, now: self.session.on_mode(deserialize_message(data, String).data, now),
            INSTRUCTION.name: lambda data, now: self.session.on_instruction(deserialize_message(data, String).data, now),
            SIM_SUCCESS.name: self._on_sim_success,
            START_POSE.name: lambda data, now: self.session.on_start_pose(deserialize_message(data, String).data),
        }
        self._next_condition = create_publisher(self, NEXT_CONDITION)
        self._trial_event = create_publisher(self, TRIAL_EVENT)  # the controller holds the arms when a trial ends
        for event, outcome in OUTCOMES.items():
            create_service(self, TRIAL_SERVICES[event], self._service(outcome))
        self.create_timer(self._discovery_period_s, self._tick)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.get_logger().info(
            f"recording {len(self._wanted)} topics into {output_dir}"
            + (f" for protocol {self.session.protocol.name!r}" if self.session.protocol else "")
        )
        try:
            self._announce(self._condition_override())
        except InvalidArgumentError as exc:
            raise ConfigError("parameter condition", [str(exc)]) from exc
        self._tick()

    def _parameter(self, name: str, default: Any) -> Any:
        return self.declare_parameter(name, default).value

    def _identity(self, embodiment: EmbodimentConfig, runtime: RuntimeConfig) -> RecorderIdentity:
        source = str(self.get_parameter("config").value)
        fingerprint = None
        if runtime.checkpoint:
            try:
                fingerprint = checkpoint_fingerprint(runtime.checkpoint)
            except FileNotFoundError as exc:
                self.get_logger().error(f"trials will record no checkpoint hash: {exc}")
        return RecorderIdentity(
            embodiment=embodiment.name,
            robot=embodiment.robot.model,
            config=source if source in EMBODIMENTS else str(Path(source).expanduser().resolve()),
            config_overrides=tuple(t for t in self.get_parameter("config_overrides").value if t),
            backend=runtime.backend,
            checkpoint=str(Path(runtime.checkpoint).expanduser().resolve()) if runtime.checkpoint else None,
            checkpoint_sha256=fingerprint,
            instruction=runtime.instruction,
            logs=self._parameter("log_dir", "") or None,
        )

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _condition_override(self, text: str | None = None) -> dict[str, str]:
        text = self.get_parameter("condition").value if text is None else text
        return self.session.check_condition(parse_condition(text)) if text.strip() else {}

    def _announce(self, override: dict[str, str]) -> None:
        text = self.session.announcement(override or None)
        self._next_condition.publish(String(data=text))
        self.get_logger().info(f"next trial: {text}")

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "condition":
                try:
                    override = self._condition_override(str(parameter.value))
                except InvalidArgumentError as exc:
                    return SetParametersResult(successful=False, reason=f"condition rejected: {exc}")
                self._announce(override)
        return SetParametersResult(successful=True)

    def _service(self, outcome: Outcome | None) -> Callable[[Trigger.Request, Trigger.Response], Trigger.Response]:
        def handle(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            try:
                if outcome is None:
                    record = self.session.start(
                        self._now(), self.get_parameter("operator").value, self._condition_override()
                    )
                    response.message = f"{record.id} recording; condition {record.condition}"
                else:
                    record = self.session.stop(outcome, self._now())
                    response.message = self._summary(record)
            except (TrialError, InvalidArgumentError) as exc:
                response.success, response.message = False, str(exc)
                self.get_logger().warning(response.message)
                return response
            response.success = True
            if outcome is None:
                self.get_logger().info(response.message)
                self._publish_event(record)
            else:
                self._ended(record)
            return response

        return handle

    @staticmethod
    def _summary(record: TrialRecord) -> str:
        written = sum(t.messages for t in record.topics.values())
        dropped = sum(t.dropped for t in record.topics.values())
        return (
            f"{record.id} {record.outcome} after {record.duration_s:.1f} s: {written} messages, {dropped} dropped, "
            f"{len(record.interventions)} interventions"
        )

    def _publish_event(self, record: TrialRecord) -> None:
        change = "started" if record.outcome is None else "ended"
        self._trial_event.publish(String(data=json.dumps({"trial": record.id, "change": change,
                                                          "outcome": record.outcome})))

    def _ended(self, record: TrialRecord) -> None:
        """A trial ended, by a service, its success label or its timeout: say so, and announce the next condition."""
        self.get_logger().info(self._summary(record))
        self._publish_event(record)
        self._announce(self._condition_override())

    def _on_sim_success(self, data: bytes, now_ns: int) -> None:
        record = self.session.on_sim_success(deserialize_message(data, Bool).data, now_ns)
        if record is not None:
            self._ended(record)

    def _tick(self) -> None:
        record = self.session.check_timeout(self._now())
        if record is not None:
            self._ended(record)
        self._discover()

    def _discover(self) -> None:
        """Subscribe to each wanted topic once it has publishers, with QoS that matches them."""
        advertised = dict(self.get_topic_names_and_types())
        for topic in self._wanted:
            if topic in self._subscribed or topic in self._unrecordable or topic not in advertised:
                continue
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            try:
                msgtype = check_types(self._wanted, topic, advertised[topic])
                message_type = message_class(msgtype)
            except (TopicTypeMismatchError, ImportError) as exc:  # ImportError: a type not installed here
                self._unrecordable.add(topic)
                self.get_logger().error(f"not recording {topic}: {exc}")
                continue
            reliable, latched = subscription_qos(
                [
                    (p.qos_profile.reliability == ReliabilityPolicy.RELIABLE,
                     p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL)
                    for p in publishers
                ]
            )
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=1 if latched else self._qos_depth,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
            )
            self._subscribed[topic] = self.create_subscription(
                message_type, topic, self._receiver(topic, msgtype, latched), qos, raw=True
            )
            self.get_logger().info(
                f"recording {topic} ({msgtype}, {'reliable' if reliable else 'best effort'}"
                f"{', transient local' if latched else ''})"
            )

    def _receiver(self, topic: str, msgtype: str, latched: bool) -> Callable[[bytes], None]:
        decode = self._decoders.get(topic)

        def receive(data: bytes) -> None:
            now = self._now()
            self.session.offer(topic, msgtype, now, data, latched)
            if decode is not None:
                try:
                    decode(data, now)
                except Exception:  # noqa: BLE001 - the message is already queued for the bag; whatever its
                    # decoding for the session's bookkeeping raises (rclpy's RMWError for bytes that are not
                    # CDR, or a bug) must not end the recording and lose the trial: logged with its traceback
                    self.get_logger().error(f"cannot decode {topic}:\n{traceback.format_exc()}",
                                            throttle_duration_sec=5.0)

        return receive

    def close(self) -> None:
        record = self.session.close(self._now())
        if record is not None:
            self.get_logger().warning(self._summary(record))


def main(args: list[str] | None = None) -> int:
    # Callbacks only enqueue: one thread (docs/architecture.md, "Executors and timing").
    return run_node(TrialRecorderNode, args, executor_factory=SingleThreadedExecutor)


if __name__ == "__main__":
    sys.exit(main())
