"""Success rate of the scripted transfer-cube expert over randomised starts, physics only.

    python -m bench.expert [--episodes 50] [--seed 0] [--success transferred|lifted]

Prints one JSON object: episodes, successes, success_rate, its Wilson 95% interval, the stage-1
(lift) rate, the failed seeds, seconds, and the load average while it ran.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.recording.report import wilson_interval  # noqa: E402
from qwen_vla_ros.sim import scripted  # noqa: E402
from qwen_vla_ros.sim.world import Simulation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="first seed; episode i uses seed + i")
    parser.add_argument("--success", choices=["transferred", "lifted"], default="transferred")
    args = parser.parse_args()
    sim = Simulation(load_embodiment("aloha", {"sim.success": args.success}))
    started = time.perf_counter()
    results = [scripted.run_transfer_episode(sim, args.seed + i) for i in range(args.episodes)]
    successes = sum(r.success for r in results)
    print(json.dumps({
        "episodes": args.episodes,
        "successes": successes,
        "success_rate": successes / args.episodes,
        "wilson_95": list(wilson_interval(successes, args.episodes)),
        "lift_rate": sum(r.lifted for r in results) / args.episodes,
        "failed_seeds": [r.seed for r in results if not r.success],
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
