"""Issue 9's GPU figures from one model build: torch + CUDA graphs against torch eager.

    python -m bench.gpu [--size full] [--device cuda] [--runs 20]

Building the full-size model (random weights, about 10 GB in bf16) takes longer than timing
it, and device time is scarce, so one process times every case the issue asks for on the
same policy: 1 and 3 cameras, and 3 cameras with real-time chunking. Each case is the
``qwen-vla-ros bench --compare torch`` report, printed as one JSON line. ``--size tiny
--device cpu`` runs the same code (eager on both sides) where there is no GPU.
"""
from __future__ import annotations

import argparse
import json

from qwen_vla_ros.model.bench import bench_embodiment, run_bench
from qwen_vla_ros.model.build import INSTRUCTIONS, SIZES, build_policy

CASES = ((1, 0), (3, 0), (3, 10))  # (cameras, real-time-chunking delay steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=SIZES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--embodiment", default="aloha")
    parser.add_argument("--instruction", default=INSTRUCTIONS[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    policy = build_policy(args.size, device=args.device)
    for cameras, rtc_delay in CASES:
        report = run_bench(policy, bench_embodiment(args.embodiment, cameras), args.instruction, runs=args.runs,
                           warmup=args.warmup, compare="torch", rtc_delay=rtc_delay)
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
