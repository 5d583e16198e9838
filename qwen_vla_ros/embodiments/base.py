"""Planar geometry of a differential-drive base and the waypoint follower that turns a path into (v, omega).

Poses are (x, y, yaw) in the odometry frame. Yaw is kept continuous (unwrapped) so that
paths from successive chunks can be blended without a 2*pi jump; only errors are wrapped.
"""
from __future__ import annotations

import math

import numpy as np

from qwen_vla_ros.config.hardware import PathTracker as PathTrackerSettings


def wrap_angle(angle: float) -> float:
    """Into [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """The heading of a planar pose given as a unit quaternion (odometry)."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def local_to_world(origin: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Waypoints (N x 3, robot frame at ``origin``) into the frame ``origin`` is expressed in.

    The yaw of the result is continuous with ``origin``'s yaw (no wrapping).
    """
    x0, y0, yaw0 = (float(v) for v in origin)
    cos, sin = math.cos(yaw0), math.sin(yaw0)
    local = np.atleast_2d(np.asarray(local, dtype=float))
    world = np.empty_like(local)
    world[:, 0] = x0 + cos * local[:, 0] - sin * local[:, 1]
    world[:, 1] = y0 + sin * local[:, 0] + cos * local[:, 1]
    world[:, 2] = yaw0 + np.unwrap(local[:, 2])
    return world


class PathTracker:
    """Pure-pursuit-style follower: steer at the point ``lookahead_s`` ahead on the path.

    Speed is the distance to that point over the lookahead time, scaled by the cosine of
    its bearing, so the base turns in place towards a point beside it and reverses to one
    behind it. At the end of the path, within ``goal_tolerance_m``, it only aligns its yaw.
    Limits are not applied here; the controller's safety stage owns them.
    """

    def __init__(self, settings: PathTrackerSettings):
        self.settings = settings

    def command(self, pose: np.ndarray, target: np.ndarray, final: bool) -> tuple[float, float]:
        x, y, yaw = (float(v) for v in pose)
        tx, ty, tyaw = (float(v) for v in target)
        dx, dy = tx - x, ty - y
        forward = math.cos(yaw) * dx + math.sin(yaw) * dy
        left = -math.sin(yaw) * dx + math.cos(yaw) * dy
        distance = math.hypot(forward, left)
        gain = self.settings.heading_gain
        if distance < self.settings.goal_tolerance_m:
            return 0.0, (gain * wrap_angle(tyaw - yaw) if final else 0.0)
        bearing = math.atan2(left, forward)
        linear = distance / self.settings.lookahead_s * math.cos(bearing)
        heading_error = bearing if forward >= 0.0 else wrap_angle(bearing - math.pi)
        return linear, gain * heading_error
