"""Observation sync: which camera frames and state readings form one observation.

An observation is built when every camera has a frame within ``sync_tolerance_s`` of the
others, every state reading (per arm joint states, base odometry) has a sample within
``state_tolerance_s`` of the observation, and nothing is older than ``max_age_s``. Its stamp
is the oldest chosen camera stamp: the robot's actions are due relative to the moment the
oldest image was taken. Anything short of that is a :class:`Skip` naming the camera or
reading at fault, which the node counts and warns about.

Frames are kept as opaque payloads (the node keeps the ROS messages, so pixels are read
zero-copy only when an observation is actually used). Thread-safe: callbacks add, the
inference thread assembles.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.runtime import ObservationSync as SyncSettings
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.perception.state import BASE, Odometry, StateAssembler

FRAMES_KEPT = 8  # per camera: enough to pair a 30 Hz camera with a slower one within tolerance
READINGS_KEPT = 64  # per arm/base: 0.6 s of 100 Hz joint states


class SkipReason(str, Enum):
    """Why the policy runner did not publish a chunk this time; the value is the text that
    diagnostics (``skipped.<reason>``) and logs show."""

    # the observation (ObservationSync): input faults, warnings
    CAMERA_MISSING = "camera_missing"
    CAMERA_STALE = "camera_stale"
    CAMERAS_UNSYNCED = "cameras_unsynced"
    STATE_MISSING = "state_missing"
    STATE_UNSYNCED = "state_unsynced"
    STATE_INVALID = "state_invalid"
    WAITING = "waiting"  # nothing newer than the last observation used: not a fault
    # the runner (inference.runner): errors
    BAD_IMAGE = "bad_image"
    INFERENCE_ERROR = "inference_error"
    NONFINITE_ACTIONS = "nonfinite_actions"

    def __str__(self) -> str:  # the text, also where Python 3.12's format() would print the member name
        return self.value


FAULTS = (
    SkipReason.CAMERA_MISSING, SkipReason.CAMERA_STALE, SkipReason.CAMERAS_UNSYNCED,
    SkipReason.STATE_MISSING, SkipReason.STATE_UNSYNCED, SkipReason.STATE_INVALID,
)


@dataclass(frozen=True)
class Sample:
    stamp_ns: int
    value: Any


@dataclass(frozen=True)
class Skip:
    reason: SkipReason
    subject: str  # the camera name, arm name or "base" at fault ("" when none)
    message: str


@dataclass(frozen=True)
class Observation:
    stamp_ns: int
    frames: dict[str, Any]  # camera -> payload, in the embodiment's camera order
    frame_stamps: dict[str, int]
    state: np.ndarray
    reading_stamps: dict[str, int]


def _seconds(ns: int) -> float:
    return ns / NS_PER_S


def _nearest(samples: Sequence[Sample], stamp_ns: int) -> Sample:
    """The sample closest in time; the newer one on a tie."""
    return min(reversed(samples), key=lambda s: abs(s.stamp_ns - stamp_ns))


class ObservationSync:
    def __init__(self, cameras: Sequence[str], assembler: StateAssembler, settings: SyncSettings) -> None:
        self.cameras = tuple(cameras)
        self.assembler = assembler
        self.sync_tolerance_ns = round(settings.sync_tolerance_s * NS_PER_S)
        self.state_tolerance_ns = round(settings.state_tolerance_s * NS_PER_S)
        self.max_age_ns = round(settings.max_age_s * NS_PER_S)
        self._frames: dict[str, deque[Sample]] = {c: deque(maxlen=FRAMES_KEPT) for c in self.cameras}
        self._readings: dict[str, deque[Sample]] = {r: deque(maxlen=READINGS_KEPT) for r in assembler.readings}
        self._lock = threading.Lock()

    def add_frame(self, camera: str, stamp_ns: int, payload: Any, receive_ns: int) -> None:
        """An unstamped frame (stamp 0) takes its receive time."""
        with self._lock:
            _insert(self._frames[camera], Sample(stamp_ns or receive_ns, payload))

    def add_joints(self, arm: str, stamp_ns: int, positions: Mapping[str, float], receive_ns: int) -> None:
        self._add_reading(arm, stamp_ns or receive_ns, positions)

    def add_odometry(self, stamp_ns: int, odometry: Odometry, receive_ns: int) -> None:
        self._add_reading(BASE, stamp_ns or receive_ns, odometry)

    def _add_reading(self, key: str, stamp_ns: int, value: Any) -> None:
        with self._lock:
            if key in self._readings:
                _insert(self._readings[key], Sample(stamp_ns, value))

    def drop_camera(self, camera: str) -> None:
        """Forget a camera's frames (e.g. after it delivered an unusable frame)."""
        with self._lock:
            self._frames[camera].clear()

    def assemble(self, now_ns: int, newer_than_ns: int | None = None) -> Observation | Skip:
        with self._lock:
            frames = {c: tuple(d) for c, d in self._frames.items()}
            readings = {r: tuple(d) for r, d in self._readings.items()}
        chosen = self._choose_frames(frames, now_ns)
        if isinstance(chosen, Skip):
            return chosen
        if chosen:
            stamp_ns = min(s.stamp_ns for s in chosen.values())
        else:  # a camera-less embodiment: the oldest of the newest readings
            newest = [d[-1].stamp_ns for d in readings.values() if d]
            if len(newest) < len(readings):
                missing = next(r for r, d in readings.items() if not d)
                return Skip(SkipReason.STATE_MISSING, missing, f"{_describe(missing)}: nothing received yet")
            stamp_ns = min(newest)
        if newer_than_ns is not None and stamp_ns <= newer_than_ns:
            return Skip(SkipReason.WAITING, "", "no observation newer than the last one used")
        picked = self._choose_readings(readings, stamp_ns)
        if isinstance(picked, Skip):
            return picked
        joints = {k: s.value for k, s in picked.items() if k != BASE}
        odometry = picked[BASE].value if BASE in picked else None
        try:
            state = self.assembler.assemble(joints, odometry)
        except MalformedMessageError as exc:
            return Skip(SkipReason.STATE_INVALID, "state", f"state not usable: {exc}")
        return Observation(
            stamp_ns=stamp_ns,
            frames={c: s.value for c, s in chosen.items()},
            frame_stamps={c: s.stamp_ns for c, s in chosen.items()},
            state=state,
            reading_stamps={k: s.stamp_ns for k, s in picked.items()},
        )

    def _choose_frames(self, frames: dict[str, tuple[Sample, ...]], now_ns: int) -> dict[str, Sample] | Skip:
        for camera in self.cameras:
            if not frames[camera]:
                return Skip(SkipReason.CAMERA_MISSING, camera, f"camera {camera!r}: no frame received")
        for camera in self.cameras:
            age_ns = now_ns - frames[camera][-1].stamp_ns
            if abs(age_ns) > self.max_age_ns:
                when = f"{_seconds(age_ns):.3f} s old" if age_ns > 0 else f"stamped {_seconds(-age_ns):.3f} s in the future"
                return Skip(
                    SkipReason.CAMERA_STALE, camera,
                    f"camera {camera!r}: newest frame is {when} (max_age {_seconds(self.max_age_ns):g} s)",
                )
        if not self.cameras:
            return {}
        reference = min(frames[c][-1].stamp_ns for c in self.cameras)
        chosen = {c: _nearest(frames[c], reference) for c in self.cameras}
        stamps = [s.stamp_ns for s in chosen.values()]
        if max(stamps) - min(stamps) > self.sync_tolerance_ns:
            worst = max(self.cameras, key=lambda c: abs(chosen[c].stamp_ns - reference))
            return Skip(
                SkipReason.CAMERAS_UNSYNCED, worst,
                f"camera {worst!r}: no frame within {_seconds(self.sync_tolerance_ns):g} s of the others "
                f"(closest is {_seconds(chosen[worst].stamp_ns - reference):+.3f} s)",
            )
        oldest = min(self.cameras, key=lambda c: chosen[c].stamp_ns)
        age_ns = now_ns - chosen[oldest].stamp_ns
        if age_ns > self.max_age_ns:
            return Skip(
                SkipReason.CAMERA_STALE, oldest,
                f"camera {oldest!r}: synced frame is {_seconds(age_ns):.3f} s old (max_age {_seconds(self.max_age_ns):g} s)",
            )
        return chosen

    def _choose_readings(self, readings: dict[str, tuple[Sample, ...]], stamp_ns: int) -> dict[str, Sample] | Skip:
        picked = {}
        for key, samples in readings.items():
            if not samples:
                return Skip(SkipReason.STATE_MISSING, key, f"{_describe(key)}: nothing received")
            sample = _nearest(samples, stamp_ns)
            gap_ns = sample.stamp_ns - stamp_ns
            if abs(gap_ns) > self.state_tolerance_ns:
                return Skip(
                    SkipReason.STATE_UNSYNCED, key,
                    f"{_describe(key)}: closest sample is {_seconds(gap_ns):+.3f} s from the observation "
                    f"(state_tolerance {_seconds(self.state_tolerance_ns):g} s)",
                )
            picked[key] = sample
        return picked


def _insert(samples: deque[Sample], sample: Sample) -> None:
    """Append, keeping stamp order when callbacks on several threads deliver out of order."""
    samples.append(sample)
    if len(samples) > 1 and samples[-2].stamp_ns > sample.stamp_ns:
        ordered = sorted(samples, key=lambda s: s.stamp_ns)
        samples.clear()
        samples.extend(ordered)


def _describe(key: str) -> str:
    return "odometry" if key == BASE else f"joint states of arm {key!r}"
