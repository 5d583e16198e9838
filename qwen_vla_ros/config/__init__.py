"""Typed configuration: embodiment descriptions and runtime settings, loaded from YAML."""
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.loader import (
    EMBODIMENTS,
    ConfigError,
    load_embodiment,
    load_runtime,
    parse_override,
    validate_config,
)
from qwen_vla_ros.config.runtime import RuntimeConfig

__all__ = [
    "EMBODIMENTS",
    "ConfigError",
    "EmbodimentConfig",
    "RuntimeConfig",
    "load_embodiment",
    "load_runtime",
    "parse_override",
    "validate_config",
]
