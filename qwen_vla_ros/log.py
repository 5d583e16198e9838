"""What a core module needs of a logger (rclpy's node logger and ``logging.Logger`` both fit), and a throttle for it."""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from qwen_vla_ros.chunk import NS_PER_S


class Logger(Protocol):
    def info(self, message: str) -> Any: ...
    def warning(self, message: str) -> Any: ...
    def error(self, message: str) -> Any: ...


class KeyedThrottle:
    """Lets one message per key through every ``period_s``, so a warning that names a camera
    is not drowned by another camera's, and neither floods the log."""

    def __init__(self, period_s: float) -> None:
        self.period_ns = round(period_s * NS_PER_S)
        self._last: dict[Hashable, int] = {}

    def ready(self, key: Hashable, now_ns: int) -> bool:
        last = self._last.get(key)
        if last is not None and now_ns - last < self.period_ns:
            return False
        self._last[key] = now_ns
        return True
