"""The chunk gate: the controller's action-chunk subscription, in a process of its own.

``python -m qwen_vla_ros.nodes.chunk_gate`` is started by the controller node
(:func:`start_gate_process`), never by hand. It joins the same ROS domain with the same DDS
profile (it inherits the controller's environment), subscribes to the chunk topic
serialized, refuses a message longer than ``--max-bytes`` by its length, keeps only the
newest of the rest, and decodes one only when the controller grants a credit (once a control
period), handing it over on the connection it inherited as ``--fd``
(:mod:`qwen_vla_ros.gate` frames). Receiving a 15 MB message costs this process
hundreds of ms with its GIL held; the controller's interpreter never sees those bytes
(docs/architecture.md, chunk intake).

Under SROS2 it joins the controller's enclave (:func:`enclave_args`). It exits when the
controller does: the kernel sends it SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), and the connection's end (EOF) stops it too.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory

from qwen_vla_ros.contract import ACTION_CHUNK
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.gate import FrameKind, GateFrame, GateProcess, GateSupervisor, NewestChunk, encode_frame
from qwen_vla_ros.nodes.common import keep_large_buffers, spin_until_shutdown
from qwen_vla_ros.nodes.ros_contract import SUBSCRIPTION_QOS, decode_chunk_message
from qwen_vla_ros.ros_env import apply_dds_profile, security_problem

PR_SET_PDEATHSIG = 1
GATE_READY_TIMEOUT_S = 30.0  # the gate imports rclpy in a fresh interpreter: seconds on a loaded machine
REPORT_EVERY_S = 0.5  # counters go out at least this often, so the controller can tell a live gate from a hung one


def enclave_args(argv: Sequence[str]) -> list[str]:
    """The ``--enclave`` of this process's ``--ros-args``, for the gate: under SROS2 it joins the
    controller's enclave, whose permissions already allow subscribing to the chunk topic."""
    if "--ros-args" not in argv:
        return []
    ros_args = list(argv[argv.index("--ros-args") + 1:])
    for flag in ("--enclave", "-e"):
        if flag in ros_args[:-1]:
            return ["--ros-args", "--enclave", ros_args[ros_args.index(flag) + 1]]
    return []


def start_gate_process(topic: str, max_bytes: int, default_dt: float, node_name: str) -> GateProcess:
    """Start the gate for ``topic`` (resolved: remappings and namespace applied) with a connection to it."""
    parent_end, child_end = socket.socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "qwen_vla_ros.nodes.chunk_gate", "--fd", str(child_end.fileno()),
             "--parent", str(os.getpid()), "--topic", topic, "--max-bytes", str(max_bytes),
             "--default-dt", repr(default_dt), "--name", node_name, *enclave_args(sys.argv)],
            pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
        )
    except OSError:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return GateProcess(process, Connection(parent_end.detach()))


def start_chunk_gate(node: Node, max_bytes: int, default_dt: float, deliver: Callable[[GateFrame], None],
                     period_s: float) -> GateSupervisor:
    """The controller's side: its gate on ``contract.ACTION_CHUNK`` (resolved against the node's namespace
    and remappings), started and supervised; frames go to ``deliver``."""
    topic = node.resolve_topic_name(ACTION_CHUNK.name)
    gate = GateSupervisor(partial(start_gate_process, topic, max_bytes, default_dt, f"{node.get_name()}_chunk_gate"),
                          deliver, node.get_logger(), period_s=period_s)
    gate.start()
    return gate


def wait_for_gate(node: Node, gate: GateSupervisor) -> None:
    """Wait until the gate has subscribed; past ``GATE_READY_TIMEOUT_S`` say so at ERROR, since a
    controller that commands without taking chunks in would look alive."""
    if not gate.ready.wait(GATE_READY_TIMEOUT_S):
        node.get_logger().error(f"chunk gate not subscribed to {node.resolve_topic_name(ACTION_CHUNK.name)} after "
                                f"{GATE_READY_TIMEOUT_S:g} s: no chunks are taken in until it is")


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM when the parent dies; exit now if it already has (it died before prctl took effect).

    Linux sends it when the *thread* that started the gate ends: the controller's main thread
    (the first gate) or the supervisor's reader (restarts), both of which live as long as the
    node; on a clean stop the node ends the gate itself first."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit(0)


def _hand_over(connection: Connection, outbox: NewestChunk, default_dt: float, context: rclpy.context.Context) -> None:
    """One frame per credit: READY first, then a notice, the newest chunk decoded, or counters."""
    try:
        connection.recv_bytes()
        connection.send_bytes(encode_frame(FrameKind.READY, outbox.snapshot()))
        while True:
            connection.recv_bytes()
            item = outbox.take(REPORT_EVERY_S)
            if item is None:
                frame = encode_frame(FrameKind.COUNTERS, outbox.snapshot())
            elif isinstance(item, bytes):
                try:
                    frame = encode_frame(FrameKind.CHUNK, outbox.snapshot(),
                                         chunk=decode_chunk_message(item, default_dt))
                except MalformedMessageError as exc:
                    kind, detail, _ = outbox.malformed(str(exc))
                    frame = encode_frame(kind, outbox.snapshot(), detail=detail)
            else:
                kind, detail, size = item
                frame = encode_frame(kind, outbox.snapshot(), detail=detail, size_bytes=size)
            connection.send_bytes(frame)
    except (EOFError, OSError):
        pass  # the controller is gone or stopped the gate
    finally:
        context.try_shutdown()


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--default-dt", type=float, required=True)
    parser.add_argument("--name", required=True)
    argv = list(sys.argv[1:] if args is None else args)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    options = parser.parse_args(argv[:len(argv) - len(ros_args)])
    _die_with_parent(options.parent)
    connection = Connection(options.fd)
    apply_dds_profile()
    insecure = security_problem()
    if insecure:  # fail closed like every node (run_node); the controller itself refuses first
        print(f"error: DDS security was asked for but would not hold, so the chunk gate does not start: {insecure}",
              file=sys.stderr)
        return 2
    keep_large_buffers()  # the 15 MB copies are this process's now: keep them cheap for it too
    context = rclpy.context.Context()
    rclpy.init(args=["chunk_gate", *ros_args], context=context)
    node = rclpy.create_node(options.name, context=context)
    outbox = NewestChunk()
    node.create_subscription(JointTrajectory, options.topic, lambda data: outbox.offer(data, options.max_bytes),
                             SUBSCRIPTION_QOS[ACTION_CHUNK.qos], raw=True)
    threading.Thread(target=_hand_over, args=(connection, outbox, options.default_dt, context), name="hand-over",
                     daemon=True).start()
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        spin_until_shutdown(executor, context)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
