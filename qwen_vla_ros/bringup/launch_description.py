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
from qwen_vla_ros.ros_env import dds_environment


def generate(embodiment: str) -> Any:
    """The LaunchDescription of one embodiment."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.substitutions import EnvironmentVariable

    from launch import LaunchDescription

    actions: list[Any] = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in LAUNCH_ARGUMENTS.items()
    ]
    # The RMW the shipped FastDDS profiles are for, unless the user set their own; each Node
    # gets its DDS profile and discovery range from the mode (multi_host) in node_action.
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
    """One launch_ros Node; a required process ends the launch when it exits, like the runner.

    Its environment is resolved as the runner resolves a child's (``runner.child_environment``):
    defaults the user did not set, the required DDS mode and SROS2 variables, and the DDS
    profile and discovery range of that mode.
    """
    from launch.actions import Shutdown
    from launch_ros.actions import Node

    additional = {key: environment.get(key, value) for key, value in spec.environment.items()}
    additional |= spec.required_environment
    additional |= dds_environment({**environment, **additional})
    return Node(
        package=spec.package,
        executable=spec.executable,
        name=spec.ros_name,
        namespace=spec.namespace,
        parameters=[spec.parameters],
        remappings=list(spec.remappings),
        ros_arguments=spec.security_arguments(),
        additional_env=additional,
        output="screen",
        on_exit=Shutdown(reason=f"{spec.name} exited and is required") if spec.required else None,
    )
