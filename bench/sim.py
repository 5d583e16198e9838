"""Simulation speed: physics real-time headroom, camera render cost, and a real-time run with cameras.

    python -m bench.sim [--seconds 10] [--render-frames 10]

Prints one JSON object. Figures are recorded in docs/benchmarks.md with the machine they came from.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.sim import scripted  # noqa: E402
from qwen_vla_ros.sim.loop import FrameGrabber, SimLoop  # noqa: E402
from qwen_vla_ros.sim.pacing import Pacer  # noqa: E402
from qwen_vla_ros.sim.world import Simulation  # noqa: E402


def physics_headroom(seconds: float) -> dict[str, float]:
    """Free-running physics while the scripted pick makes contacts: how much faster than real time."""
    sim = Simulation(load_embodiment("aloha"))
    sim.reset(np.random.default_rng(3))
    cell = sim.mujoco
    plan = scripted.commands(cell, scripted.pick_plan(cell, "right"))
    steps = round(seconds / sim.period_s)
    started = time.perf_counter()
    for _ in range(steps):
        command = next(plan, None)
        if command is not None:
            sim.command_arm("right", command)
        sim.step()
    wall = time.perf_counter() - started
    return {
        "sim_s": steps * sim.period_s,
        "wall_s": wall,
        "real_time_factor_max": steps * sim.period_s / wall,
        "control_step_ms": 1000 * wall / steps,
        "substeps_per_control_step": cell.substeps,
        "lifted": bool(sim.success()),
    }


def render_cost(width: int, height: int, mjcf_quality: bool, frames: int) -> dict[str, float]:
    """Milliseconds to render all four ALOHA cameras once, after a warm-up frame."""
    overrides = {"sim.render_width": width, "sim.render_height": height}
    if mjcf_quality:  # what the MJCF asks for: 4096 shadow maps and 4x MSAA
        overrides |= {"sim.shadows": True, "sim.multisample": 4}
    sim = Simulation(load_embodiment("aloha", overrides))
    sim.reset(np.random.default_rng(0))
    renderer = sim.make_renderer()
    try:
        renderer.render(sim.snapshot())
        started = time.perf_counter()
        for _ in range(frames):
            sim.step()
            renderer.render(sim.snapshot())
        per_set = (time.perf_counter() - started) / frames
    finally:
        renderer.close()
    return {"width": width, "height": height, "mjcf_quality": mjcf_quality, "cameras": len(sim.camera_names),
            "ms_per_camera_set": 1000 * per_set, "ms_per_camera": 1000 * per_set / len(sim.camera_names)}


def realtime_run(seconds: float) -> dict[str, float]:
    """The node's configuration (aloha.yaml: 50 Hz physics, 4 cameras at 10 Hz, 320x240) in real time."""
    sim = Simulation(load_embodiment("aloha"))
    sim.reset(np.random.default_rng(0))
    frames: list[int] = []
    grabber = FrameGrabber(sim.make_renderer, lambda images, stamp: frames.append(stamp))
    grabber.start()
    camera_hz = sim.settings.camera_rate_hz
    loop = SimLoop(sim, Pacer(period_ns=round(sim.period_s * 1e9)), lambda stamp: None, 0, grabber,
                   round(1e9 / camera_hz))
    loop.start()
    time.sleep(seconds)
    figures = loop.report()
    loop.stop()
    figures["camera_rate_hz_achieved"] = figures["camera_frames"] / figures["wall_time_s"]
    figures["camera_rate_hz_configured"] = camera_hz
    return figures


def kinematic_rate(name: str, steps: int = 5000) -> dict[str, float]:
    sim = Simulation(load_embodiment(name))
    started = time.perf_counter()
    for _ in range(steps):
        sim.step()
    wall = time.perf_counter() - started
    return {"control_step_us": 1e6 * wall / steps, "real_time_factor_max": steps * sim.period_s / wall}


def node_cpu(seconds: float) -> dict[str, float | str]:
    """CPU cores the aloha sim_node process uses in steady state (no subscribers), from /proc."""
    override = "config_overrides:=['outputs=[{adapter: forward_command, arms: [left, right]}]']"
    child = subprocess.Popen(
        [sys.executable, "-m", "qwen_vla_ros.nodes.sim_node", "--ros-args", "-p", "config:=aloha", "-p", override],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"},
    )

    def cpu_s() -> float:
        with open(f"/proc/{child.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        time.sleep(5)  # start-up: imports, MJCF load, EGL context
        cpu_start, wall_start = cpu_s(), time.monotonic()
        time.sleep(seconds)
        cores = (cpu_s() - cpu_start) / (time.monotonic() - wall_start)
    finally:
        child.send_signal(signal.SIGINT)
        output = child.communicate(timeout=30)[0]
    return {"cpu_cores": cores, "node_summary": output.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="sim seconds for physics, wall seconds real time")
    parser.add_argument("--render-frames", type=int, default=10)
    args = parser.parse_args()
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "physics": physics_headroom(args.seconds),
        "render": [
            render_cost(320, 240, False, args.render_frames),
            render_cost(640, 480, False, args.render_frames),
            render_cost(320, 240, True, max(2, args.render_frames // 3)),
        ],
        "realtime": realtime_run(args.seconds),
        "kinematic": {name: kinematic_rate(name) for name in ("widowx", "mobile_base")},
    }
    if importlib.util.find_spec("rclpy") is not None:
        result["sim_node"] = node_cpu(args.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
