"""What a core module needs of a logger: rclpy's node logger and ``logging.Logger`` both fit."""
from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    def info(self, message: str) -> Any: ...
    def warning(self, message: str) -> Any: ...
    def error(self, message: str) -> Any: ...
