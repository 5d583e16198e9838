"""The ``ros2 launch`` side of the graph description (``launch/*.launch.py`` call :func:`generate`).

``launch`` and ``launch_ros`` are imported only here and only when a launch file runs, so the
package imports on machines without them. The launch arguments are the graph's
``LAUNCH_ARGUMENTS``; an ``OpaqueFunction`` resolves them and turns each process of
:func:`~qwen_vla_ros.bringup.graph.build_graph` into a ``launch_ros`` ``Node``, the same
processes ``qwen-vla-ros up`` starts.
"""
from __future__ import annotations

import os
from typing import Any

from qwen_vla_ros.bringup.graph import LAUNCH_ARGUMENTS, BringupOptions, ProcessSpec, build_graph, graph_environment


def generate(embodiment: str) -> Any:
    """The LaunchDescription of one embodiment."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.substitutions import EnvironmentVariable

    actions: list[Any] = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in LAUNCH_ARGUMENTS.items()
    ]
    # The shipped FastDDS profile (shared memory for camera frames), unless the user set their own.
    actions += [SetEnvironmentVariable(key, EnvironmentVariable(key, default_value=value))
                for key, value in graph_environment().items()]
    actions.append(OpaqueFunction(function=nodes, args=[embodiment]))
    return LaunchDescription(actions)


def nodes(context: Any, embodiment: str) -> list[Any]:
    """Resolve the launch arguments and build the graph's Node actions."""
    from launch.substitutions import LaunchConfiguration

    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    graph = build_graph(BringupOptions.from_launch_arguments(embodiment, values))
    environment = getattr(context, "environment", os.environ)
    return [node_action(spec, environment) for spec in graph.processes]


def node_action(spec: ProcessSpec, environment: Any = os.environ) -> Any:
    """One launch_ros Node; a required process ends the launch when it exits, like the runner."""
    from launch.actions import Shutdown
    from launch_ros.actions import Node

    return Node(
        package=spec.package,
        executable=spec.executable,
        name=spec.ros_name,
        namespace=spec.namespace,
        parameters=[spec.parameters],
        remappings=list(spec.remappings),
        additional_env={key: environment.get(key, value) for key, value in spec.environment.items()},
        output="screen",
        on_exit=Shutdown(reason=f"{spec.name} exited and is required") if spec.required else None,
    )
