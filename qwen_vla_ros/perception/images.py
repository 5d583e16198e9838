"""Camera frames as the policy node receives them: header checks and model-ready RGB.

The check reads only the message's metadata, so a subscription callback can reject a bad
frame at once without touching pixels; the pixel work (resize, BGR -> RGB) happens on the
inference thread, on a zero-copy view of the message buffer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.imaging import fit_frame

COLOUR_ENCODINGS = ("rgb8", "bgr8")


@dataclass(frozen=True)
class ImageHeader:
    encoding: str
    width: int
    height: int
    step: int
    data_bytes: int


def header_problem(camera: str, header: ImageHeader) -> str | None:
    """Why a frame cannot feed the model, or None. A size other than the config's is no
    problem (the frame is resized); a missing colour channel or a short buffer is."""
    if header.encoding not in COLOUR_ENCODINGS:
        hint = " (a mono camera cannot feed a colour model)" if header.encoding == "mono8" else ""
        return (
            f"camera {camera!r}: encoding {header.encoding!r} is not supported{hint}; "
            f"configure the driver for one of {list(COLOUR_ENCODINGS)}"
        )
    if header.width <= 0 or header.height <= 0:
        return f"camera {camera!r}: empty image {header.width}x{header.height}"
    if header.step < header.width * 3 or header.data_bytes < header.step * header.height:
        return (
            f"camera {camera!r}: buffer of {header.data_bytes} bytes is too small for "
            f"{header.width}x{header.height} {header.encoding} with step {header.step}"
        )
    return None


def size_mismatch(camera: str, header: ImageHeader, width: int, height: int) -> str | None:
    if (header.width, header.height) == (width, height):
        return None
    return (
        f"camera {camera!r}: frames are {header.width}x{header.height} but the config says "
        f"{width}x{height}; resizing them"
    )


def model_rgb(view: np.ndarray, encoding: str, height: int, width: int) -> np.ndarray:
    """An HxWx3 RGB uint8 frame at the model's resolution from a (read-only) view (:func:`fit_frame`)."""
    if encoding not in COLOUR_ENCODINGS:
        raise MalformedMessageError(f"cannot make RGB from encoding {encoding!r}")
    return fit_frame(view, height, width, swap_red_blue=encoding == "bgr8")
