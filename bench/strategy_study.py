"""The execution-strategy study (issue 20 §4): each strategy at each added inference delay, through ``qwen-vla-ros eval``.

    python -m bench.strategy_study --checkpoint CKPT --trials 20 [--strategies synchronous hard_switch ...]
        [--delays-ms 0 100 200 400] [--protocol config/protocols/aloha_sim_in_distribution.yaml]
        [--output DIR] [--timeout 30] [--success lifted] [--backend torch]

The experiment of Black et al.'s real-time chunking paper, run through this runtime. Each
strategy is a set of runtime-config overrides (``STRATEGIES``), each delay the policy node's
study tool ``study.added_delay_s``, which holds every chunk back after inference as a slower
model would; one ``eval`` run (the whole ROS graph in MuJoCo, its own output folder) per
strategy and delay. From each run: success rate with its Wilson 95% interval, the 99th
percentile of the commands' jerk (read back from the trials' bags), chunks rejected, and the
median simulated time to success. Writes ``study.md`` (the table and the command) and
``study.png`` (success and jerk against delay) into ``--output`` and prints one JSON object
with the rows and the load average. See docs/evaluation.md for what each strategy means.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PROTOCOL = REPO / "config" / "protocols" / "aloha_sim_in_distribution.yaml"
DELAYS_MS = (0, 100, 200, 400)

# Runtime-config overrides per strategy: configuration of one runtime, not forks of its code.
STRATEGIES: dict[str, tuple[str, ...]] = {
    # stop, infer, execute: the next inference once the chunk has run out; each chunk runs from its arrival
    "synchronous": ("execution=synchronous", "blending.method=latest", "rtc.enabled=false"),
    # infer while executing; the new chunk replaces the old one at its arrival
    "hard_switch": ("execution=asynchronous", "blending.method=latest", "rtc.enabled=false"),
    # infer while executing; the old plan fades into the new over blending.crossfade_steps periods
    "crossfade": ("execution=asynchronous", "blending.method=crossfade", "rtc.enabled=false"),
    # infer while executing; the new chunk is inpainted from the committed actions, then switched to
    "rtc": ("execution=asynchronous", "blending.method=latest", "rtc.enabled=true", "rtc.guidance_limit=min(beta,K)"),
    # the same with the reference implementation's first-step guidance weight beta (no cap at K)
    "rtc_beta": ("execution=asynchronous", "blending.method=latest", "rtc.enabled=true", "rtc.guidance_limit=beta"),
}


@dataclass
class Row:
    strategy: str
    delay_ms: int
    trials: int = 0
    successes: int = 0
    success_rate: float | None = None
    wilson_95: list[float] | None = None
    jerk_p99: float | None = None  # rad/s^3, over every commanded channel and period of every trial
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    time_to_success_s: float | None = None  # median simulated seconds, successful trials only
    inference_ms_p50: float | None = None
    exit_code: int = 0
    output: str = ""
    problems: list[str] = field(default_factory=list)


def read_commands(bag: Path, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """(stamps in s, positions N x C) of the controller's commands recorded in ``bag``."""
    from rosbags.highlevel import AnyReader

    stamps: list[float] = []
    positions: list[np.ndarray] = []
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, _, raw in reader.messages(connections=connections):
            msg: Any = reader.deserialize(raw, connection.msgtype)
            stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            positions.append(np.asarray(msg.position, dtype=float))
    return np.asarray(stamps), np.asarray(positions).reshape(len(positions), -1)


def jerk(stamps_s: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """|d3 position / dt3| per interval and channel, by finite differences over the real stamp intervals."""
    if len(stamps_s) < 4:
        return np.empty((0, positions.shape[1] if positions.ndim == 2 else 0))
    derivative, times = positions, stamps_s
    for _ in range(3):
        spans = np.diff(times)[:, None]
        derivative = np.diff(derivative, axis=0) / spans
        times = (times[1:] + times[:-1]) / 2.0
    return np.abs(derivative)


def summarize(strategy: str, delay_ms: int, data: dict[str, Any], exit_code: int, output: Path,
              command_topic: str) -> Row:
    """One table row from an eval run's JSON and the bags of its trials."""
    from qwen_vla_ros.recording.trial import TrialStore

    row = Row(strategy, delay_ms, data.get("trials", 0), data.get("successes", 0), data.get("success_rate"),
              data.get("wilson_95"), None, data.get("chunks_accepted", 0), data.get("chunks_rejected", 0),
              None, data.get("inference_ms_p50"), exit_code, str(output), list(data.get("problems", [])))
    store = TrialStore(output)
    jerks, times = [], []
    for trial in data.get("per_trial", []):
        if trial.get("trial_id") is None or trial.get("problem"):
            continue
        if trial["success"]:
            times.append(trial["sim_time_s"])
        record = yaml.safe_load((store.trial_dir(trial["trial_id"]) / TrialStore.RECORD).read_text())
        bag = store.trial_dir(trial["trial_id"]) / record.get("bag", "bag")
        if not bag.exists():
            row.problems.append(f"{trial['trial_id']}: no bag at {bag}")
            continue
        stamps, positions = read_commands(bag, command_topic)
        jerks.append(jerk(stamps, positions).ravel())
    values = np.concatenate(jerks) if jerks else np.empty(0)
    row.jerk_p99 = float(np.percentile(values, 99)) if values.size else None
    row.time_to_success_s = float(np.median(times)) if times else None
    return row


def run_eval(args: argparse.Namespace, strategy: str, delay_ms: int, output: Path) -> tuple[dict[str, Any], int]:
    command = [sys.executable, "-m", "qwen_vla_ros.cli", "eval", "--checkpoint", str(args.checkpoint),
               "--protocol", str(args.protocol), "--trials", str(args.trials), "--timeout", str(args.timeout),
               "--output", str(output), "--seed", str(args.seed), "--json"]
    if args.success:
        command += ["--success", args.success]
    if args.backend:
        command += ["--backend", args.backend]
    for override in (*STRATEGIES[strategy], f"study.added_delay_s={delay_ms / 1000.0:g}"):
        command += ["-r", override]
    print(f"strategy_study: {strategy} at +{delay_ms} ms: {shlex.join(command)}", file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    (output / "eval.log").write_text(result.stderr)
    lines = result.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]), result.returncode
    except (IndexError, json.JSONDecodeError):
        return {"problems": [f"eval exited {result.returncode} without JSON: {result.stderr[-500:]}"]}, result.returncode


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, form)


def markdown(rows: list[Row], command: str, load: tuple[float, float, float]) -> str:
    lines = [
        "| strategy | added delay (ms) | success | Wilson 95% | jerk p99 (rad/s³) | chunks rejected | "
        "time to success (s) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        interval = f"{row.wilson_95[0]:.2f}–{row.wilson_95[1]:.2f}" if row.wilson_95 else "n/a"
        lines.append(f"| {row.strategy} | {row.delay_ms} | {row.successes}/{row.trials} | {interval} | "
                     f"{_number(row.jerk_p99, '.0f')} | {row.chunks_rejected} of "
                     f"{row.chunks_accepted + row.chunks_rejected} | {_number(row.time_to_success_s, '.1f')} |")
    lines += ["", f"Command: `{command}`", "",
              f"Load average while it ran (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}."]
    problems = [f"- {row.strategy} +{row.delay_ms} ms: {p}" for row in rows for p in row.problems]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Success (with Wilson intervals) and jerk p99 against the added delay, one line per strategy."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    success_axis, jerk_axis = figure.subplots(1, 2)
    for strategy in dict.fromkeys(row.strategy for row in rows):
        mine = [row for row in rows if row.strategy == strategy]
        delays = [row.delay_ms for row in mine]
        rates = [row.success_rate if row.success_rate is not None else math.nan for row in mine]
        low = [r - row.wilson_95[0] if row.wilson_95 else 0.0 for r, row in zip(rates, mine, strict=True)]
        high = [row.wilson_95[1] - r if row.wilson_95 else 0.0 for r, row in zip(rates, mine, strict=True)]
        success_axis.errorbar(delays, rates, yerr=[low, high], marker="o", capsize=3, label=strategy)
        jerk_axis.plot(delays, [row.jerk_p99 if row.jerk_p99 is not None else math.nan for row in mine],
                       marker="o", label=strategy)
    success_axis.set(xlabel="added inference delay (ms)", ylabel="success rate", ylim=(-0.05, 1.05),
                     title="success (Wilson 95%)")
    jerk_axis.set(xlabel="added inference delay (ms)", ylabel="command jerk p99 (rad/s³)", yscale="log",
                  title="smoothness")
    success_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--trials", type=int, required=True, help="trials per strategy and delay")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument("--delays-ms", nargs="+", type=int, default=list(DELAYS_MS),
                        help="added inference delays (ms; 0..2000, the runtime config's bound)")
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    parser.add_argument("--output", type=Path, default=Path("~/qwen_vla_trials/strategy_study"))
    parser.add_argument("--timeout", type=float, default=30.0, help="simulated seconds a trial may take")
    parser.add_argument("--success", choices=["lifted", "transferred"], default=None)
    parser.add_argument("--backend", default="", help="torch | onnxruntime | tensorrt (default: the runtime config's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.trials < 1 or any(not 0 <= d <= 2000 for d in args.delays_ms):
        parser.error("--trials must be >= 1 and --delays-ms within 0..2000")
    output = args.output.expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    from qwen_vla_ros.contract import COMMAND

    started = time.monotonic()
    rows = []
    for strategy in args.strategies:
        for delay_ms in args.delays_ms:
            run_output = output / f"{strategy}_{delay_ms}ms"
            run_output.mkdir(parents=True, exist_ok=True)
            data, exit_code = run_eval(args, strategy, delay_ms, run_output)
            rows.append(summarize(strategy, delay_ms, data, exit_code, run_output, COMMAND.name))
    load = os.getloadavg()
    command = "python -m bench.strategy_study " + shlex.join(argv if argv is not None else sys.argv[1:])
    table = output / "study.md"
    table.write_text(markdown(rows, command, load), encoding="utf-8")
    chart = output / "study.png"
    plot(rows, chart)
    print(json.dumps({"rows": [asdict(row) for row in rows], "table": str(table), "plot": str(chart),
                      "seconds": round(time.monotonic() - started, 1), "load_average": list(load),
                      "command": command}), flush=True)
    return 0 if all(row.exit_code == 0 and not row.problems for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
