"""One-screen human summary of a validated config, printed by ``check-config``."""
from __future__ import annotations

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import InterbotixOutput, TwistOutput
from qwen_vla_ros.config.runtime import RuntimeConfig


def _output_topics(config: EmbodimentConfig) -> list[str]:
    lines = []
    for output in config.outputs:
        if isinstance(output, TwistOutput):
            lines.append(f"twist -> {output.topic}")
            continue
        for arm_name in output.arms:
            namespace = config.arm(arm_name).namespace
            if isinstance(output, InterbotixOutput):
                topics = [output.group_topic.format(namespace=namespace), output.single_topic.format(namespace=namespace)]
            else:
                topics = [output.topic.format(namespace=namespace)]
            lines.append(f"{output.adapter} [{arm_name}] -> {', '.join(topics)}")
    return lines


def summarize_embodiment(config: EmbodimentConfig) -> str:
    control = config.control
    channels = ", ".join(config.action.names)
    lines = [
        f"embodiment   {config.name}  ({config.robot.model})",
        f"action       {len(config.action.channels)}-D in padded {config.action.padded_dim}: {channels}",
        f"state        {len(config.state.channels)}-D, normalisation {config.normalization.mode}",
        f"timing       control {control.rate_hz:g} Hz, actions every {control.action_dt:g} s, "
        f"chunk {control.chunk_length}, {control.interpolation} interpolation",
    ]
    for camera in config.cameras:
        lines.append(
            f"camera       {camera.name}: {camera.topic} {camera.width}x{camera.height} "
            f"{camera.encoding} @ {camera.fps:g} Hz, source {camera.source.type}"
        )
    for arm in config.arms:
        mode = "ee_delta + IK" if arm.ee_delta else "joint positions"
        gripper = "gripper" if arm.gripper else "no gripper"
        lines.append(
            f"arm          {arm.name}: {len(arm.joints)} joints ({mode}), {gripper}, "
            f"state {arm.joint_state_topic}"
        )
    if config.base is not None:
        base = config.base
        lines.append(
            f"base         {base.mode} {base.channels}, |v| <= {base.max_linear:g} m/s, "
            f"|w| <= {base.max_angular:g} rad/s, odom {base.odom_topic}"
        )
    lines += [f"output       {line}" for line in _output_topics(config)]
    teleop = config.teleop
    drives = [name for name, on in (("base", teleop.base), (f"arm jog {teleop.arm.mode if teleop.arm else ''}", teleop.arm),
                                    ("leader arms", teleop.leader_follow.enabled)) if on]
    lines.append(
        f"teleop       {teleop.joy_topic}: deadman {teleop.buttons.deadman}, resume {teleop.buttons.resume_policy}, "
        f"e-stop {teleop.buttons.estop}, joy timeout {teleop.joy_timeout_s:g} s; drives {', '.join(drives) or 'nothing'}"
    )
    safety = config.safety
    lines.append(
        f"safety       future stamps <= {safety.future_stamp_tolerance_s:g} s, chunks stale after "
        f"{safety.max_chunk_age_s:g} s, joint states stale after {safety.joint_state_timeout_s:g} s, "
        f"ramp {safety.startup_ramp_s:g} s, at most {safety.max_chunk_actions} actions per chunk"
    )
    lines.append(
        f"             policy lost after {safety.policy_timeout_s:g} s without heartbeat, chunks spaced "
        f"{config.control.action_dt:g} s +- {safety.action_dt_tolerance_s:g} s spanning at most "
        f"{safety.max_chunk_duration_s:g} s; e-stop {safety.estop_topic}"
    )
    lines.append(f"sim          {config.sim.type if config.sim else 'none'}")
    return "\n".join(lines)


def summarize_runtime(config: RuntimeConfig) -> str:
    steps = config.denoising_steps if config.denoising_steps is not None else "checkpoint default"
    return "\n".join(
        [
            f"checkpoint   {config.checkpoint or '(none)'}",
            f"backend      {config.backend} on {config.device}, dtype {config.dtype or 'backend default'}",
            f"denoising    {steps} steps; RTC {'on' if config.rtc.enabled else 'off'}",
            f"blending     {config.blending.method} (crossfade {config.blending.crossfade_steps} periods, "
            f"ensemble decay {config.blending.ensemble_decay:g})",
            f"schedule     {config.schedule.trigger} (threshold {config.schedule.remaining_threshold_s:g} s, "
            f"replan {config.schedule.replan_hz:g} Hz)",
            f"instruction  {config.instruction!r}",
        ]
    )


def summarize(config: EmbodimentConfig | RuntimeConfig) -> str:
    if isinstance(config, EmbodimentConfig):
        return summarize_embodiment(config)
    return summarize_runtime(config)
