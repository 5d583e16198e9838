"""Per-embodiment knowledge that is not configuration: kinematics and unit conversions."""
