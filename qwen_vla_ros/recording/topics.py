"""Which topics a trial records, and with which QoS the recorder subscribes to them."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.contract import NodeRole, role_view
from qwen_vla_ros.errors import InvalidArgumentError, QwenVlaError


class TopicTypeMismatchError(QwenVlaError, ValueError):
    """A topic to record whose advertised type is missing, ambiguous or not the configured one:
    the recorder leaves that topic out and says why."""


def default_topics(config: EmbodimentConfig) -> dict[str, str]:
    """topic -> message type: the trial recorder's subscriptions in the graph contract.

    Topics that never get a publisher (``sim/success`` on a real robot) are simply never
    subscribed.
    """
    return {topic.name: topic.msg_type for topic in role_view(NodeRole.RECORDER, config).subscribes}


def parse_topic_spec(spec: str) -> tuple[str, str]:
    """'/name' or '/name:pkg/msg/Type' -> (name, type or '' to take it from the graph)."""
    name, _, msgtype = spec.strip().partition(":")
    if not name.startswith("/"):
        raise InvalidArgumentError(f"topic {name!r} must be absolute (start with '/')")
    if msgtype and len(msgtype.split("/")) != 3:
        raise InvalidArgumentError(f"message type {msgtype!r} of {name} must look like pkg/msg/Type")
    return name, msgtype


def recorded_topics(
    config: EmbodimentConfig, extra: Sequence[str] = (), exclude: Iterable[str] = ()
) -> dict[str, str]:
    """The default set plus ``extra`` specs, minus ``exclude`` names."""
    topics = default_topics(config)
    for spec in extra:
        name, msgtype = parse_topic_spec(spec)
        topics[name] = msgtype or topics.get(name, "")
    for name in exclude:
        topics.pop(name.strip(), None)
    return topics


def subscription_qos(offered: Sequence[tuple[bool, bool]]) -> tuple[bool, bool]:
    """(reliable, transient_local) that matches every publisher's (reliable, transient_local).

    Reliable only when every publisher is reliable (a reliable subscription never matches a
    best-effort publisher); transient-local only when every publisher keeps its last
    message for late joiners (so the recorder receives the current mode or e-stop state).
    """
    if not offered:
        raise ValueError("no publishers to match")
    return all(r for r, _ in offered), all(t for _, t in offered)


def check_types(wanted: Mapping[str, str], topic: str, advertised: Sequence[str]) -> str:
    """The type to subscribe ``topic`` with, or TopicTypeMismatchError when the graph disagrees with the config."""
    configured = wanted.get(topic, "")
    if not advertised:
        raise TopicTypeMismatchError(f"{topic} has no advertised type")
    if configured and configured not in advertised:
        raise TopicTypeMismatchError(f"{topic} is published as {list(advertised)}, not the configured {configured}")
    if not configured and len(advertised) > 1:
        raise TopicTypeMismatchError(f"{topic} is published with several types {list(advertised)}; configure one")
    return configured or advertised[0]
