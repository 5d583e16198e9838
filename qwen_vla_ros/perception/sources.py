"""Where camera_node's frames come from: a RealSense device, a RealSense recording, a video
file or device, or a folder of images.

Each source opens, reads one frame at a time and closes; a source that cannot open or stops
delivering raises :class:`SourceError` and the capture loop (``perception.capture``) retries
it with backoff. ``pyrealsense2`` is imported only by the RealSense sources, so video and
folder sources work without it.

RealSense frames carry the capture time when the device's clock is synchronised with the
host's (``global_time`` or ``system_time`` domain, the D400 default); other frames are
stamped when they are read.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from qwen_vla_ros.config.hardware import Camera, CameraSourceBag, CameraSourceRealsense, CameraSourceVideo
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.imaging import fit_frame

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ROS1_BAG_MAGIC = b"#ROSBAG V2.0"
MIN_TIMEOUT_S = 1.0


class SourceError(QwenVlaError, RuntimeError):
    """The camera cannot be opened or has stopped delivering; the capture loop reconnects."""


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = ""
    coefficients: tuple[float, ...] = ()

    def scaled(self, width: int, height: int) -> Intrinsics:
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # HxWx3 uint8, channel order given by ``encoding``
    encoding: str  # rgb8 | bgr8
    host_time_ns: int | None = None  # capture time on the host's wall clock; None: not known
    intrinsics: Intrinsics | None = None


class FrameSource(Protocol):
    paced: bool  # True: read() waits for the device's next frame; False: the caller paces at fps

    def open(self) -> None: ...
    def read(self, timeout_s: float) -> Frame | None: ...  # None: no frame in time (a lost frame)
    def close(self) -> None: ...


def published_image(frame: Frame, camera: Camera) -> tuple[np.ndarray, Intrinsics | None]:
    """The frame at the camera's configured size and encoding, and its intrinsics to match."""
    intrinsics = frame.intrinsics
    if intrinsics is not None and frame.image.shape[:2] != (camera.height, camera.width):
        intrinsics = intrinsics.scaled(camera.width, camera.height)
    image = fit_frame(frame.image, camera.height, camera.width, swap_red_blue=frame.encoding != camera.encoding)
    return image, intrinsics


def capture_stamp(host_time_ns: int | None, ros_now_ns: int, wall_now_ns: int, max_skew_ns: int) -> int:
    """ROS time of the capture: the host-clock capture time moved onto the ROS clock (they
    differ under simulated time), or now when the capture time is unknown or implausible
    (more than ``max_skew_ns`` from now, e.g. a device clock that is not synchronised)."""
    if host_time_ns is None:
        return ros_now_ns
    stamp = host_time_ns + (ros_now_ns - wall_now_ns)
    return stamp if abs(ros_now_ns - stamp) <= max_skew_ns else ros_now_ns


# ------------------------------------------------------------------------------ video / folder
class VideoSource:
    """An opencv VideoCapture: a video file (looped) or a capture device (``/dev/video0`` or an index)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.device = path.isdigit() or path.startswith("/dev/")
        self.paced = self.device
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        if not self.device and not Path(self.path).expanduser().is_file():
            raise SourceError(f"video file {self.path} does not exist")
        capture = cv2.VideoCapture(int(self.path) if self.path.isdigit() else str(Path(self.path).expanduser()))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"opencv cannot open {self.path}")
        self._capture = capture

    def read(self, timeout_s: float) -> Frame | None:
        capture = self._capture
        if capture is None:
            raise SourceError(f"{self.path} is not open")
        ok, image = capture.read()
        if not ok and not self.device:  # end of file: loop
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = capture.read()
            if not ok:
                raise SourceError(f"{self.path} delivers no frames (empty or unreadable video)")
        if not ok or image is None or image.ndim != 3:
            return None
        return Frame(image, "bgr8")

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class ImageFolderSource:
    """The images of a folder in name order, looped; re-listed on every loop."""

    paced = False

    def __init__(self, path: str) -> None:
        self.folder = Path(path).expanduser()
        self._files: list[Path] = []
        self._index = 0

    def open(self) -> None:
        self._files = self._list()
        self._index = 0

    def _list(self) -> list[Path]:
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"image folder {self.folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        return files

    def read(self, timeout_s: float) -> Frame | None:
        if self._index >= len(self._files):
            self._files, self._index = self._list(), 0
        path = self._files[self._index]
        self._index += 1
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return None if image is None else Frame(image, "bgr8")

    def close(self) -> None:
        self._files = []


# ------------------------------------------------------------------------------ RealSense
def import_realsense() -> Any:
    try:
        import pyrealsense2
    except ImportError as exc:
        raise SourceError(
            f"pyrealsense2 cannot be imported ({exc}): pip install pyrealsense2 (Debian also needs apt "
            "package libusb-1.0-0)"
        ) from exc
    return pyrealsense2


def start_device(rs: Any, camera: Camera) -> Any:
    """A started pipeline streaming colour from the device with the camera's serial (any when empty).

    Presence is checked first: without a device ``pipeline.start`` waits 15 s for one to
    appear while holding the GIL, which would stall every other camera thread.
    """
    connected = [device.get_info(rs.camera_info.serial_number) for device in rs.context().query_devices()]
    if not isinstance(camera.source, CameraSourceRealsense):
        raise TypeError(f"camera {camera.name!r}: start_device needs a realsense source, not {camera.source.type!r}")
    serial = camera.source.serial
    if not connected or (serial and serial not in connected):
        raise SourceError(f"RealSense {serial or '(any serial)'} is not connected; connected: {connected or 'none'}")
    config = rs.config()
    if serial:
        config.enable_device(serial)
    pixel_format = rs.format.rgb8 if camera.encoding == "rgb8" else rs.format.bgr8
    config.enable_stream(rs.stream.color, camera.width, camera.height, pixel_format, round(camera.fps))
    pipeline = rs.pipeline()
    pipeline.start(config)
    return pipeline


def start_recording(rs: Any, camera: Camera) -> Any:
    """A started pipeline playing back the recording, looped, as fast as it is read."""
    if not isinstance(camera.source, CameraSourceBag):
        raise TypeError(f"camera {camera.name!r}: start_recording needs a bag source, not {camera.source.type!r}")
    path = playable_recording(rs, Path(camera.source.path).expanduser())
    config = rs.config()
    config.enable_device_from_file(str(path), True)
    config.enable_stream(rs.stream.color)
    pipeline = rs.pipeline()
    profile = pipeline.start(config)
    profile.get_device().as_playback().set_real_time(False)
    return pipeline


def is_ros1_bag(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(ROS1_BAG_MAGIC)) == ROS1_BAG_MAGIC


def playable_recording(rs: Any, path: Path) -> Path:
    """librealsense >= 2.57 records and plays ROS 2 ``.db3`` files; a legacy ROS 1 ``.bag`` is
    converted once, beside the original, with librealsense's own converter."""
    if not path.is_file():
        raise SourceError(f"RealSense recording {path} does not exist")
    if not is_ros1_bag(path) or not hasattr(rs.context, "convert_bag_to_db3"):
        return path
    converted = path.with_suffix(".db3")
    if not converted.is_file() or converted.stat().st_mtime < path.stat().st_mtime:
        rs.context().convert_bag_to_db3(str(path), str(converted))
    return converted


_DISTORTION_MODELS = {
    "brown_conrady": "plumb_bob", "modified_brown_conrady": "plumb_bob", "inverse_brown_conrady": "plumb_bob",
    "kannala_brandt4": "equidistant", "none": "plumb_bob",
}


class RealsenseSource:
    """Colour frames of a pyrealsense2 pipeline, live (by serial) or played back from a recording.

    ``start`` opens the pipeline (``start_device`` or ``start_recording``); it is the seam a
    test replaces where no RealSense device can exist.
    """

    def __init__(self, camera: Camera, start: Callable[[Any, Camera], Any], live: bool) -> None:
        self.camera = camera
        self.start = start
        self.live = live
        self.paced = live
        self._rs: Any = None
        self._pipeline: Any = None

    def open(self) -> None:
        self._rs = import_realsense()
        try:
            self._pipeline = self.start(self._rs, self.camera)
        except RuntimeError as exc:  # "No device connected", a bad file, an unsupported mode
            raise SourceError(str(exc)) from exc

    def read(self, timeout_s: float) -> Frame | None:
        rs = self._rs
        try:
            ok, frames = self._pipeline.try_wait_for_frames(max(1, round(timeout_s * 1000)))
        except RuntimeError as exc:
            raise SourceError(str(exc)) from exc
        colour = frames.get_color_frame() if ok else None
        if not colour:
            return None
        image = self._pixels(np.asanyarray(colour.get_data()), colour.get_profile().format())
        domain = colour.get_frame_timestamp_domain()
        synced = domain in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time)
        host_time_ns = round(colour.get_timestamp() * 1e6) if self.live and synced else None
        return Frame(image[0], image[1], host_time_ns, self._intrinsics(colour))

    def _pixels(self, data: np.ndarray, pixel_format: Any) -> tuple[np.ndarray, str]:
        """A copy (the frame's memory goes back to librealsense) in rgb8 or bgr8."""
        rs = self._rs
        conversions = {
            rs.format.rgb8: (None, "rgb8"), rs.format.bgr8: (None, "bgr8"),
            rs.format.rgba8: (cv2.COLOR_RGBA2RGB, "rgb8"), rs.format.bgra8: (cv2.COLOR_BGRA2BGR, "bgr8"),
            rs.format.yuyv: (cv2.COLOR_YUV2RGB_YUYV, "rgb8"),
        }
        if pixel_format not in conversions:
            raise SourceError(f"colour format {pixel_format} is not supported; record rgb8, bgr8, rgba8, bgra8 or yuyv")
        code, encoding = conversions[pixel_format]
        return (np.array(data) if code is None else cv2.cvtColor(data, code)), encoding

    def _intrinsics(self, colour: Any) -> Intrinsics:
        raw = colour.get_profile().as_video_stream_profile().get_intrinsics()
        model = _DISTORTION_MODELS.get(str(raw.model).rsplit(".", 1)[-1], "")
        return Intrinsics(raw.width, raw.height, raw.fx, raw.fy, raw.ppx, raw.ppy, model, tuple(raw.coeffs))

    def close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass  # already stopped by a disconnect
            self._pipeline = None


def open_source(camera: Camera) -> FrameSource:
    """The source for a camera's configured ``source`` (never ``topic``: a driver publishes those)."""
    source = camera.source
    if isinstance(source, CameraSourceRealsense):
        return RealsenseSource(camera, start_device, live=True)
    if isinstance(source, CameraSourceBag):
        return RealsenseSource(camera, start_recording, live=False)
    if isinstance(source, CameraSourceVideo):
        return ImageFolderSource(source.path) if Path(source.path).expanduser().is_dir() else VideoSource(source.path)
    raise ValueError(f"camera {camera.name!r} has source {source.type!r}: its driver publishes, camera_node has no part")


def frame_timeout_s(camera: Camera) -> float:
    return max(MIN_TIMEOUT_S, 3.0 / camera.fps)
