"""Real media files for camera tests: videos and image folders written with opencv, and
RealSense recordings written by librealsense itself (a software device and its recorder).

Frame k of every file is filled with the grey level ``level(k)`` (top half) so a reader can
tell which frame it got, through JPEG-like compression.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np


def level(k: int) -> int:
    return (40 + 20 * k) % 256


def frame(k: int, width: int, height: int) -> np.ndarray:
    """BGR frame k: a solid grey top half (the index), a colour gradient below."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = level(k)
    image[height // 2:, :, 2] = np.linspace(0, 255, width, dtype=np.uint8)  # red rises to the right
    return image


def write_video(path: Path, count: int, width: int, height: int, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), f"opencv cannot write {path}"
    for k in range(count):
        writer.write(frame(k, width, height))
    writer.release()
    return path


def write_folder(path: Path, count: int, width: int, height: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        cv2.imwrite(str(path / f"frame_{k:04d}.png"), frame(k, width, height))
    return path


def write_realsense_recording(path: Path, count: int, width: int, height: int, fps: int = 30,
                              system_time_ms: float | None = None) -> Path:
    """A .db3 recording of ``count`` rgb8 colour frames with intrinsics fx = fy = width, made by
    librealsense's recorder on a software device (no camera needed). Frames are stamped on the
    device clock from 0, or, given ``system_time_ms``, on the host clock from then (as a D400
    with global time enabled stamps them)."""
    import pyrealsense2 as rs

    device = rs.software_device()
    sensor = device.add_sensor("Color")
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = width, height
    intrinsics.fx = intrinsics.fy = float(width)
    intrinsics.ppx, intrinsics.ppy = width / 2, height / 2
    intrinsics.model = rs.distortion.brown_conrady
    intrinsics.coeffs = [0.0] * 5
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp = width, height, fps, 3
    stream.fmt, stream.intrinsics = rs.format.rgb8, intrinsics
    profile = sensor.add_video_stream(stream)
    recorder = rs.recorder(str(path), device)
    sensor.open(profile)
    sensor.start(lambda _frame: None)
    for k in range(count):
        pixels = np.ascontiguousarray(frame(k, width, height)[:, :, ::-1])  # rgb8
        software_frame = rs.software_video_frame()
        software_frame.pixels, software_frame.stride, software_frame.bpp = pixels, width * 3, 3
        software_frame.timestamp, software_frame.frame_number = (system_time_ms or 0.0) + k * 1000.0 / fps, k
        software_frame.domain = (
            rs.timestamp_domain.hardware_clock if system_time_ms is None else rs.timestamp_domain.system_time
        )
        software_frame.profile = profile.as_video_stream_profile()
        sensor.on_video_frame(software_frame)
        time.sleep(0.002)
    sensor.stop()
    sensor.close()
    del recorder  # the recorder writes the file out when it is released
    return path
