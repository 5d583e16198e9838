"""Which publishers on the e-stop topic could not stop the robot, and what to tell the operator.

The controller subscribes to the e-stop topic several times, with QoS whose union matches
any publisher (docs/safety.md). What can still go wrong is a publisher whose messages reach
none of those subscriptions (another message type on the topic, or QoS no subscription
accepts); the node lists the topic's publishers with their QoS verdicts and logs what this
returns at ERROR on every check, so an operator whose e-stop cannot work is told until it is
fixed, not once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ESTOP_TYPE = "std_msgs/msg/Bool"


@dataclass(frozen=True)
class EstopPublisher:
    node: str  # namespace/name of the publishing node
    msg_type: str  # as the graph reports it: pkg/msg/Type
    reachable: bool  # at least one of the controller's e-stop subscriptions matches its QoS
    qos: str  # the publisher's offered QoS, for the message


def estop_problems(topic: str, publishers: Sequence[EstopPublisher]) -> list[str]:
    """One line per publisher whose e-stop cannot reach the controller, naming it and what to change."""
    problems = []
    for publisher in publishers:
        if publisher.msg_type != ESTOP_TYPE:
            problems.append(
                f"publisher {publisher.node} on the e-stop topic {topic} sends {publisher.msg_type}, not {ESTOP_TYPE}: "
                "its messages can NOT stop the robot"
            )
        elif not publisher.reachable:
            problems.append(
                f"publisher {publisher.node} on the e-stop topic {topic} offers QoS ({publisher.qos}) that no e-stop "
                "subscription accepts: its messages can NOT stop the robot"
            )
    return problems
