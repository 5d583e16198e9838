"""How far a simulated ALOHA joint swings past its limit when its servo error is released at once.

gym-aloha's position actuators are undamped springs (shoulder kp 1600, no kv, no joint
damping, only friction loss), and MuJoCo's joint range is a soft constraint. A contact that
holds an arm back while its command sits at a limit, then lets go, releases the whole servo
error at once; this measures the swing that follows, for the left shoulder at its lower limit.
It is the reason test_demo_e2e allows a measured joint past its limit only after such an
error (docs/architecture.md, How the tests judge). ``--margin`` commands the limit minus a
soft margin instead, the MoveIt ``joint_limit_margin`` idea; prints one JSON object.

    MUJOCO_GL=egl python bench/sim_servo_release.py
    MUJOCO_GL=egl python bench/sim_servo_release.py --margin 0.05
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.sim.aloha import MujocoAloha
from qwen_vla_ros.sim.commands import ArmCommand

FOLDED = [0.0, None, -1.7, 0.0, 2.2, 0.0]  # elbow and wrist folded: the shoulder swings free of the table
SETTLE_PERIODS = 100
WATCH_PERIODS = 100


def release(config, start: float, command: float, seed: int) -> float:
    """Hold the shoulder at ``start``, step its command to ``command``; the lowest shoulder angle seen."""
    sim = MujocoAloha(config, 1.0 / config.control.rate_hz)
    sim.reset(np.random.default_rng(seed))
    names = [j.name for j in config.arms[0].joints]
    pose = dict(zip(names, [start if v is None else v for v in FOLDED]))
    for _ in range(SETTLE_PERIODS):
        sim.command("left", ArmCommand(joints=pose))
        sim.step()
    pose["shoulder"] = command
    lowest = np.inf
    for _ in range(WATCH_PERIODS):
        sim.command("left", ArmCommand(joints=pose))
        sim.step()
        lowest = min(lowest, float(sim.state("left").position[1]))
    return lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=float, default=0.0, help="rad inside the lower limit to command (0)")
    parser.add_argument("--errors", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.25, 0.65, 1.25, 2.85],
                        help="servo errors released, rad")
    args = parser.parse_args()
    config = load_embodiment("aloha")
    limit = config.arms[0].joints[1].limits.lower
    command = limit + args.margin
    rows = []
    for error in args.errors:
        lowest = release(config, command + error, command, seed=0)
        rows.append({"error_rad": error, "lowest_rad": round(lowest, 4), "past_limit_rad": round(limit - lowest, 4)})
    print(json.dumps({"joint": "left shoulder", "limit_rad": limit, "commanded_rad": command, "releases": rows}))


if __name__ == "__main__":
    main()
