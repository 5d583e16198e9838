"""ALOHA in MuJoCo: gym-aloha's MJCF driven through the ``mujoco`` API, not the gym env.

Owning the MjModel/MjData directly puts the physics rate (the control period, split into
the MJCF's substeps) and the camera rate and resolution under our control. Each config arm
maps to an MJCF joint prefix (``sim.mjcf_arms``) and each config camera to an MJCF camera
(``sim.camera_map``). The gripper is commanded as the driver's motor angle and reported
like the Interbotix driver: motor angle -> normalised opening -> the MJCF finger actuator,
and back from the MJCF finger position to the config's finger metres and motor angle.
"""
from __future__ import annotations

import importlib.util
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must precede the mujoco import
import mujoco  # noqa: E402

from qwen_vla_ros.config.embodiment import EmbodimentConfig  # noqa: E402
from qwen_vla_ros.config.hardware import Arm, Gripper  # noqa: E402
from qwen_vla_ros.config.loader import ConfigError  # noqa: E402
from qwen_vla_ros.config.sim import AlohaRandomization, MujocoAlohaSim  # noqa: E402
from qwen_vla_ros.embodiments.gripper import (  # noqa: E402
    joint_to_normalized,
    lerp,
    normalized_to_finger,
    normalized_to_joint,
    unlerp,
)
from qwen_vla_ros.sim.commands import INTERBOTIX_FINGERS, ArmCommand, ArmState, state_joint_names  # noqa: E402


@dataclass(frozen=True)
class TransferCubeTask:
    """gym-aloha's TransferCubeTask contact logic, in MJCF names (gym_aloha/tasks/sim.py)."""

    object_joint: str = "red_box_joint"
    object_geom: str = "red_box"
    table_geom: str = "table"
    lift_finger_geom: str = "vx300s_right/10_right_gripper_finger"
    receive_finger_geom: str = "vx300s_left/10_left_gripper_finger"
    distractor_geom: str = "distractor"  # added at load (hidden until a randomisation asks for it)


TASKS = {"transfer_cube": TransferCubeTask()}


def gym_aloha_assets() -> Path:
    """gym_aloha/assets without importing gym_aloha (which pulls in gymnasium and dm_control)."""
    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("sim.mjcf", ["gym-aloha is not installed: pip install gym-aloha (the 'sim' extra)"])
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def resolve_mjcf(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = gym_aloha_assets() / name
    if not path.is_file():
        raise ConfigError("sim.mjcf", [f"MJCF file {path} does not exist"])
    return path


DISTRACTOR_HALF_HEIGHT_M = 0.03


def _load_with_distractor(path: Path, geom_name: str) -> mujoco.MjModel:
    """The MJCF plus a static green cylinder, hidden and non-colliding below the floor until a
    reset shows it: a distractor object without a second MJCF file to maintain."""
    spec = mujoco.MjSpec.from_file(str(path))
    spec.worldbody.add_geom(
        name=geom_name, type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.025, DISTRACTOR_HALF_HEIGHT_M, 0.0],
        pos=[0.0, 0.0, -1.0], rgba=[0.1, 0.7, 0.2, 0.0], contype=0, conaffinity=0,
    )
    return spec.compile()


def _id(model: mujoco.MjModel, kind: mujoco.mjtObj, name: str, what: str) -> int:
    index = mujoco.mj_name2id(model, kind, name)
    if index < 0:
        raise ConfigError("sim", [f"the MJCF has no {what} {name!r}"])
    return index


@dataclass(frozen=True)
class _MjArm:
    """Where one config arm lives in the MJCF: qpos/qvel addresses and actuator ids."""

    arm: Arm
    gripper: Gripper  # the arm's, which every ALOHA MJCF arm has
    qpos: np.ndarray
    qvel: np.ndarray
    actuators: np.ndarray
    lower: np.ndarray  # config joint limits, which commands are clipped to
    upper: np.ndarray
    finger_qpos: tuple[int, int]
    finger_qvel: tuple[int, int]
    finger_actuators: tuple[int, int]
    finger_close: float  # MJCF left-finger travel, from its actuator's ctrlrange (metres)
    finger_open: float


def _actuator_for(model: mujoco.MjModel, joint_id: int, joint_name: str) -> int:
    hits = np.flatnonzero((model.actuator_trntype == mujoco.mjtTrn.mjTRN_JOINT) & (model.actuator_trnid[:, 0] == joint_id))
    if len(hits) != 1:
        raise ConfigError("sim", [f"the MJCF joint {joint_name!r} needs exactly one actuator, found {len(hits)}"])
    return int(hits[0])


def _map_arm(model: mujoco.MjModel, arm: Arm, prefix: str) -> _MjArm:
    if arm.gripper is None:
        raise ConfigError("sim", [f"arm {arm.name!r} has no gripper; the ALOHA MJCF arms all have one"])
    joint_ids = [_id(model, mujoco.mjtObj.mjOBJ_JOINT, f"{prefix}/{j}", "joint") for j in arm.joint_names]
    left_name, right_name = INTERBOTIX_FINGERS
    left, right = (_id(model, mujoco.mjtObj.mjOBJ_JOINT, f"{prefix}/{f}", "joint") for f in (left_name, right_name))
    finger_actuators = (_actuator_for(model, left, left_name), _actuator_for(model, right, right_name))
    close, open_ = model.actuator_ctrlrange[finger_actuators[0]]
    return _MjArm(
        arm=arm,
        gripper=arm.gripper,
        qpos=np.array([model.jnt_qposadr[j] for j in joint_ids]),
        qvel=np.array([model.jnt_dofadr[j] for j in joint_ids]),
        actuators=np.array([_actuator_for(model, j, n) for j, n in zip(joint_ids, arm.joint_names, strict=True)]),
        lower=np.array([j.limits.lower for j in arm.joints]),
        upper=np.array([j.limits.upper for j in arm.joints]),
        finger_qpos=(int(model.jnt_qposadr[left]), int(model.jnt_qposadr[right])),
        finger_qvel=(int(model.jnt_dofadr[left]), int(model.jnt_dofadr[right])),
        finger_actuators=finger_actuators,
        finger_close=float(close),
        finger_open=float(open_),
    )


class MujocoAloha:
    """The physics of one ALOHA cell; not thread-safe (the caller serialises access).

    ``model_lock`` guards the MjModel fields that reset randomises (lights, colours), which
    the render thread reads while building its scene.
    """

    def __init__(self, config: EmbodimentConfig, control_period_s: float) -> None:
        if not isinstance(config.sim, MujocoAlohaSim):
            raise ConfigError("sim", [f"embodiment {config.name!r} has no mujoco_aloha sim section"])
        self.config = config
        self.settings: MujocoAlohaSim = config.sim
        self.task = TASKS[self.settings.task]
        self.model = _load_with_distractor(resolve_mjcf(self.settings.mjcf), self.task.distractor_geom)
        self.data = mujoco.MjData(self.model)
        self.model_lock = threading.Lock()
        # Split the control period into whole physics steps of about the MJCF's timestep.
        self.substeps = max(1, round(control_period_s / self.model.opt.timestep))
        self.model.opt.timestep = control_period_s / self.substeps
        self.period_s = control_period_s
        self.arms = {a.name: _map_arm(self.model, a, self.settings.mjcf_arms[a.name]) for a in config.arms}
        self.cameras = {
            name: _id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, mjcf_name, "camera")
            for name, mjcf_name in self.settings.camera_map.items()
        }
        task = self.task
        self._object_joint = _id(self.model, mujoco.mjtObj.mjOBJ_JOINT, task.object_joint, "joint")
        self._object_geom = _id(self.model, mujoco.mjtObj.mjOBJ_GEOM, task.object_geom, "geom")
        self._table_geom = _id(self.model, mujoco.mjtObj.mjOBJ_GEOM, task.table_geom, "geom")
        self._lift_finger = _id(self.model, mujoco.mjtObj.mjOBJ_GEOM, task.lift_finger_geom, "geom")
        self._receive_finger = _id(self.model, mujoco.mjtObj.mjOBJ_GEOM, task.receive_finger_geom, "geom")
        self._nominal_light_diffuse = self.model.light_diffuse.copy()
        self._nominal_headlight = (self.model.vis.headlight.ambient.copy(), self.model.vis.headlight.diffuse.copy())
        self._nominal_table_rgba = self.model.geom_rgba[self._table_geom].copy()
        self._nominal_object_rgba = self.model.geom_rgba[self._object_geom].copy()
        self._distractor_geom = _id(self.model, mujoco.mjtObj.mjOBJ_GEOM, task.distractor_geom, "geom")
        self._snapshot = mujoco.MjData(self.model)

    # --- commands and state -------------------------------------------------------------

    def command(self, arm_name: str, command: ArmCommand) -> None:
        mj = self.arms[arm_name]
        for name, value in command.joints.items():
            index = mj.arm.joint_names.index(name)
            self.data.ctrl[mj.actuators[index]] = np.clip(value, mj.lower[index], mj.upper[index])
        if command.gripper_angle is not None:
            opening = float(np.clip(joint_to_normalized(command.gripper_angle, mj.gripper), 0.0, 1.0))
            finger = lerp(mj.finger_close, mj.finger_open, opening)
            self.data.ctrl[mj.finger_actuators[0]] = finger
            self.data.ctrl[mj.finger_actuators[1]] = -finger

    def step(self) -> None:
        """Advance one control period."""
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    def gripper_openings(self, arm_name: str) -> tuple[float, float]:
        """Normalised opening of the left and right MJCF fingers (the right one slides on -y)."""
        mj = self.arms[arm_name]
        left, right = (self.data.qpos[i] for i in mj.finger_qpos)
        return unlerp(mj.finger_close, mj.finger_open, left), unlerp(mj.finger_close, mj.finger_open, -right)

    def state(self, arm_name: str) -> ArmState:
        mj = self.arms[arm_name]
        gripper = mj.gripper
        left, right = self.gripper_openings(arm_name)
        travel = mj.finger_open - mj.finger_close
        left_rate = self.data.qvel[mj.finger_qvel[0]] / travel  # opening per second
        right_rate = -self.data.qvel[mj.finger_qvel[1]] / travel
        finger_span = gripper.finger_open - gripper.finger_close
        position = [
            *self.data.qpos[mj.qpos],
            normalized_to_joint(left, gripper),
            normalized_to_finger(left, gripper),
            -normalized_to_finger(right, gripper),
        ]
        velocity = [
            *self.data.qvel[mj.qvel],
            left_rate * (gripper.joint_open - gripper.joint_close),
            left_rate * finger_span,
            -right_rate * finger_span,
        ]
        forces = self.data.actuator_force
        effort = [*forces[mj.actuators], forces[mj.finger_actuators[0]], *forces[list(mj.finger_actuators)]]
        return ArmState(state_joint_names(mj.arm), np.array(position), np.array(velocity), np.array(effort))

    # --- task ---------------------------------------------------------------------------

    def contacts(self) -> set[tuple[int, int]]:
        pairs = self.data.contact.geom[: self.data.ncon]
        return {(int(a), int(b)) for a, b in pairs} | {(int(b), int(a)) for a, b in pairs}

    def reward(self) -> int:
        """gym-aloha's TransferCubeTask.get_reward: 1 touched, 2 lifted, 3 transfer attempted, 4 transferred."""
        contacts = self.contacts()
        touch_lift = (self._object_geom, self._lift_finger) in contacts
        touch_receive = (self._object_geom, self._receive_finger) in contacts
        touch_table = (self._object_geom, self._table_geom) in contacts
        reward = 0
        if touch_lift:
            reward = 1
        if touch_lift and not touch_table:
            reward = 2
        if touch_receive:
            reward = 3
        if touch_receive and not touch_table:
            reward = 4
        return reward

    def success(self) -> bool:
        contacts = self.contacts()
        finger = self._lift_finger if self.settings.success == "lifted" else self._receive_finger
        return (self._object_geom, finger) in contacts and (self._object_geom, self._table_geom) not in contacts

    def object_position(self) -> np.ndarray:
        address = self.model.jnt_qposadr[self._object_joint]
        return self.data.qpos[address : address + 3].copy()

    # --- reset and randomisation --------------------------------------------------------

    def reset(self, rng: np.random.Generator, randomization: AlohaRandomization | None = None) -> dict[str, Any]:
        """Start pose from the MJCF keyframe, arms holding it, and freshly drawn conditions
        (from ``randomization``, default the config's: an evaluation protocol's level swaps it).

        Returns the conditions drawn, for the trial record.
        """
        model, data = self.model, self.data
        if model.nkey:
            mujoco.mj_resetDataKeyframe(model, data, 0)
        else:
            mujoco.mj_resetData(model, data)
        # Position actuators hold the start pose (a keyframe without ctrl would drive them to 0).
        data.ctrl[:] = data.qpos[model.jnt_qposadr[model.actuator_trnid[:, 0]]]
        randomization = randomization or self.settings.randomization
        x = rng.uniform(randomization.object_x.lower, randomization.object_x.upper)
        y = rng.uniform(randomization.object_y.lower, randomization.object_y.upper)
        yaw = rng.uniform(randomization.object_yaw.lower, randomization.object_yaw.upper)
        address = model.jnt_qposadr[self._object_joint]
        z = float(data.qpos[address + 2])
        data.qpos[address : address + 7] = [x, y, z, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        conditions: dict[str, Any] = {"object_pose": [round(v, 6) for v in (x, y, z, yaw)]}
        light_scale = 1.0
        table_rgb = self._nominal_table_rgba[:3].copy()
        if randomization.light_scale is not None:
            light_scale = rng.uniform(randomization.light_scale.lower, randomization.light_scale.upper)
            conditions["light_scale"] = round(light_scale, 6)
        if randomization.table_rgb is not None:
            table_rgb = np.array([rng.uniform(c.lower, c.upper) for c in randomization.table_rgb])
            conditions["table_rgb"] = [round(float(c), 6) for c in table_rgb]
        object_rgb = self._nominal_object_rgba[:3].copy()
        if randomization.object_rgb is not None:
            object_rgb = np.array([rng.uniform(c.lower, c.upper) for c in randomization.object_rgb])
            conditions["object_rgb"] = [round(float(c), 6) for c in object_rgb]
        distractor = self._place_distractor(rng, (x, y)) if randomization.distractor else None
        if distractor is not None:
            conditions["distractor_xy"] = [round(v, 6) for v in distractor]
        with self.model_lock:
            model.light_diffuse[:] = np.clip(self._nominal_light_diffuse * light_scale, 0.0, 1.0)
            ambient, diffuse = self._nominal_headlight
            model.vis.headlight.ambient[:] = np.clip(ambient * light_scale, 0.0, 1.0)
            model.vis.headlight.diffuse[:] = np.clip(diffuse * light_scale, 0.0, 1.0)
            model.geom_rgba[self._table_geom, :3] = table_rgb
            model.geom_rgba[self._object_geom, :3] = object_rgb
            shown = distractor is not None
            model.geom_rgba[self._distractor_geom, 3] = 1.0 if shown else 0.0
            model.geom_contype[self._distractor_geom] = model.geom_conaffinity[self._distractor_geom] = int(shown)
            model.geom_pos[self._distractor_geom] = (
                [*distractor, DISTRACTOR_HALF_HEIGHT_M] if distractor is not None else [0.0, 0.0, -1.0]
            )
        mujoco.mj_forward(model, data)
        return conditions

    @staticmethod
    def _place_distractor(rng: np.random.Generator, cube_xy: tuple[float, float]) -> tuple[float, float]:
        """A spot on the table at least 12 cm from the cube, in the arms' shared workspace."""
        for _ in range(100):
            x, y = rng.uniform(-0.2, 0.2), rng.uniform(0.35, 0.65)
            if math.hypot(x - cube_xy[0], y - cube_xy[1]) >= 0.12:
                return float(x), float(y)
        return float(cube_xy[0] - 0.15), float(cube_xy[1])

    # --- rendering ----------------------------------------------------------------------

    def snapshot(self) -> mujoco.MjData:
        """A copy of the current state for the renderer, valid until the next call."""
        mujoco.mj_copyData(self._snapshot, self.model, self.data)
        return self._snapshot

    def make_renderer(self, width: int, height: int) -> MujocoRenderer:
        """Call on the thread that will render: the GL context is bound to it."""
        return MujocoRenderer(self, width, height)


class MujocoRenderer:
    """Renders the mapped cameras offscreen (EGL on llvmpipe when headless) at one resolution."""

    def __init__(self, sim: MujocoAloha, width: int, height: int) -> None:
        model = sim.model
        settings = sim.settings
        with sim.model_lock:
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, height)
            model.vis.quality.offsamples = settings.multisample
            if not settings.shadows:
                model.vis.quality.shadowsize = 0
            self._renderer = mujoco.Renderer(model, height, width)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = settings.shadows
        self._sim = sim
        encodings = {c.name: c.encoding for c in sim.config.cameras}
        self._cameras = [(name, camera_id, encodings[name]) for name, camera_id in sim.cameras.items()]

    def render(self, snapshot: mujoco.MjData) -> dict[str, np.ndarray]:
        frames = {}
        for name, camera_id, encoding in self._cameras:
            with self._sim.model_lock:
                self._renderer.update_scene(snapshot, camera_id)
            image = self._renderer.render()
            frames[name] = np.ascontiguousarray(image[..., ::-1]) if encoding == "bgr8" else image
        return frames

    def close(self) -> None:
        self._renderer.close()
