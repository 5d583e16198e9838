"""Linux joysticks through evdev, in joy_node's conventions (no ROS; ``joystick_node`` publishes it).

- **Numbering** is the kernel joydev driver's, which ROS's joy_linux and joy_node also show:
  axes in ascending ABS code order; buttons in ascending key code order from ``BTN_JOYSTICK``
  up, then ``BTN_MISC`` .. ``BTN_JOYSTICK - 1``. An Xbox pad reads axes 0 LX, 1 LY, 2 LT,
  3 RX, 4 RY, 5 RT, 6 d-pad X, 7 d-pad Y and buttons 0 A, 1 B, 2 X, 3 Y, 4 LB, 5 RB, 6 Back,
  7 Start, 8 Guide, 9 L3, 10 R3.
- **Values**: each axis's calibrated range [min, max] maps onto [+1, -1], negated like
  joy_node's, so stick up and stick left read +1 and a released trigger reads +1. Then the
  deadzone: |x| <= deadzone reads 0, the rest is rescaled so full deflection stays 1.
- **Messages**: one per evdev frame (``SYN_REPORT``) that changed the state, so a frame's
  events are coalesced; with ``autorepeat_rate`` > 0 the last state is sent again whenever
  the device has been quiet for 1 / autorepeat_rate seconds (joy_node's autorepeat).
  After ``SYN_DROPPED`` (the kernel's buffer overflowed) the state is re-read from the device.
- **Device**: by path (``/dev/input/eventN`` or a ``/dev/input/by-id/...-event-joystick``
  link), else by exact name, else the first input device that looks like a joystick. A
  missing, unreadable or unplugged device is logged and retried every ``retry_period_s``;
  nothing is published meanwhile, so consumers see the joystick fall silent (the controller
  then treats its deadman as released).

:class:`JoystickReader` takes the device through a function that opens it; ``joystick_node``
passes :func:`open_joystick` (a real ``evdev.InputDevice``). Tests pass virtual ``uinput``
devices where the kernel offers them, and otherwise an object with the same few methods.
"""
from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import evdev
import numpy as np
from evdev import ecodes

from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.teleop.mapping import apply_deadzone

POLL_S = 0.1  # longest wait in select(): how quickly a stop request is noticed
RETRY_LOG_EVERY = 30  # a device that stays missing is logged again every this many attempts
JOYSTICK_BUTTONS = range(ecodes.BTN_JOYSTICK, ecodes.BTN_DIGI)  # BTN_TRIGGER .. BTN_THUMBR, as joydev's matcher


class Device(Protocol):
    """The part of ``evdev.InputDevice`` the reader uses."""

    name: str
    path: str

    def fileno(self) -> int: ...
    def read(self) -> Iterable[evdev.InputEvent]: ...  # BlockingIOError when nothing is pending
    def capabilities(self, verbose: bool = False, absinfo: bool = True) -> Mapping[int, Sequence[Any]]: ...
    def absinfo(self, axis_num: int) -> evdev.AbsInfo: ...
    def active_keys(self) -> Sequence[int]: ...
    def close(self) -> None: ...


class Logger(Protocol):
    def info(self, message: str) -> Any: ...
    def warning(self, message: str) -> Any: ...


@dataclass(frozen=True)
class JoyState:
    axes: tuple[float, ...]
    buttons: tuple[int, ...]


def is_joystick(capabilities: Mapping[int, Sequence[Any]]) -> bool:
    """Has joystick or gamepad buttons (joydev's test), or the extra trigger buttons some pads and pedals use."""
    keys = set(capabilities.get(ecodes.EV_KEY, []))
    return any(k in JOYSTICK_BUTTONS or k >= ecodes.BTN_TRIGGER_HAPPY for k in keys)


def button_order(keys: Iterable[int]) -> list[int]:
    """joydev's numbering: BTN_JOYSTICK and above first, then BTN_MISC up to it; keyboard keys are not buttons."""
    keys = sorted(set(keys))
    return [k for k in keys if k >= ecodes.BTN_JOYSTICK] + [k for k in keys if ecodes.BTN_MISC <= k < ecodes.BTN_JOYSTICK]


class JoystickDecoder:
    """evdev events of one device -> Joy states."""

    def __init__(self, device: Device, deadzone: float):
        capabilities = device.capabilities(absinfo=True)
        absolute = sorted(capabilities.get(ecodes.EV_ABS, []), key=lambda entry: entry[0])
        self.device = device
        self.deadzone = deadzone
        self.axis_index = {code: i for i, (code, _) in enumerate(absolute)}
        self.ranges = [(float(info.min), float(info.max)) for _, info in absolute]
        self.button_index = {code: i for i, code in enumerate(button_order(capabilities.get(ecodes.EV_KEY, [])))}
        self.axes = [self._normalise(i, info.value) for i, (_, info) in enumerate(absolute)]
        self.buttons = [0] * len(self.button_index)
        self._press(device.active_keys())
        self.state = JoyState(tuple(self.axes), tuple(self.buttons))
        self._dropped = False

    def _normalise(self, index: int, raw: float) -> float:
        low, high = self.ranges[index]
        if high <= low:
            return 0.0
        centred = min(max(2.0 * (raw - low) / (high - low) - 1.0, -1.0), 1.0)
        return 0.0 - float(apply_deadzone(np.array(centred), self.deadzone))  # 0.0 - x: no -0.0 at rest

    def _press(self, keys: Iterable[int]) -> None:
        for code in keys:
            if code in self.button_index:
                self.buttons[self.button_index[code]] = 1

    def _resync(self) -> None:
        """After SYN_DROPPED: read the whole state back from the device."""
        for code, index in self.axis_index.items():
            self.axes[index] = self._normalise(index, self.device.absinfo(code).value)
        self.buttons = [0] * len(self.button_index)
        self._press(self.device.active_keys())

    def feed(self, event: evdev.InputEvent) -> JoyState | None:
        """The new state when ``event`` completes a frame that changed it, else None."""
        if event.type == ecodes.EV_SYN:
            if event.code == ecodes.SYN_DROPPED:
                self._dropped = True
                return None
            if event.code != ecodes.SYN_REPORT:
                return None
            if self._dropped:
                self._dropped = False
                self._resync()
            state = JoyState(tuple(self.axes), tuple(self.buttons))
            changed = state != self.state
            self.state = state
            return state if changed else None
        if self._dropped:
            return None  # the frame is incomplete; _resync replaces it
        if event.type == ecodes.EV_ABS and event.code in self.axis_index:
            index = self.axis_index[event.code]
            self.axes[index] = self._normalise(index, event.value)
        elif event.type == ecodes.EV_KEY and event.code in self.button_index:
            self.buttons[self.button_index[event.code]] = int(event.value != 0)  # 2 = key repeat: still pressed
        return None


def open_joystick(path: str = "", name: str = "") -> evdev.InputDevice:
    """The device at ``path``, else the one called ``name``, else the first joystick; OSError when there is none."""
    if path:
        return evdev.InputDevice(path)
    seen: list[str] = []
    for device_path in evdev.list_devices():
        try:
            device = evdev.InputDevice(device_path)
        except OSError as exc:
            seen.append(f"{device_path} (unreadable: {exc.strerror})")
            continue
        if device.name == name if name else is_joystick(device.capabilities()):
            return device
        seen.append(f"{device_path} {device.name!r}")
        device.close()
    wanted = f"named {name!r}" if name else "that looks like a joystick"
    raise FileNotFoundError(f"no input device {wanted}; found {seen or 'none'} (is the user in the 'input' group?)")


class JoystickReader:
    """Keeps a joystick open and hands every Joy state to ``publish``; run it on its own thread."""

    def __init__(
        self,
        open_device: Callable[[], Device],
        publish: Callable[[JoyState], None],
        logger: Logger,
        *,
        deadzone: float = 0.05,
        autorepeat_rate: float = 20.0,
        retry_period_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0.0 <= deadzone < 1.0:
            raise InvalidArgumentError(f"deadzone must lie in [0, 1), got {deadzone}")
        if autorepeat_rate < 0 or retry_period_s <= 0:
            raise InvalidArgumentError(
                f"autorepeat_rate must be >= 0 and retry_period_s > 0, got {autorepeat_rate}, {retry_period_s}")
        self.open_device = open_device
        self.publish = publish
        self.logger = logger
        self.deadzone = deadzone
        self.repeat_s = 1.0 / autorepeat_rate if autorepeat_rate > 0 else None
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.device: Device | None = None
        self.decoder: JoystickDecoder | None = None
        self.failures = 0
        self._sent_at = 0.0

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if self.decoder is None:
                    self.connect(stop)
                else:
                    self.serve()
        finally:
            self._close()

    def _emit(self, state: JoyState) -> None:
        self._sent_at = self.clock()
        self.publish(state)

    def _close(self) -> None:
        if self.device is not None:
            try:
                self.device.close()
            except OSError:
                pass  # already gone with the hardware
        self.device, self.decoder = None, None

    def connect(self, stop: threading.Event) -> None:
        """Open the device, or log and wait ``retry_period_s``."""
        try:
            self.device = self.open_device()
            self.decoder = JoystickDecoder(self.device, self.deadzone)
        except OSError as exc:
            self._close()
            self.failures += 1
            if self.failures % RETRY_LOG_EVERY == 1:
                self.logger.warning(f"no joystick: {exc}; retrying every {self.retry_period_s:g} s")
            stop.wait(self.retry_period_s)
            return
        self.failures = 0
        self.logger.info(
            f"joystick {self.device.name!r} at {self.device.path}: "
            f"{len(self.decoder.axes)} axes, {len(self.decoder.buttons)} buttons"
        )
        self._emit(self.decoder.state)

    def serve(self) -> None:
        """Wait for events (at most until the next autorepeat is due), decode and publish them."""
        assert self.device is not None and self.decoder is not None
        timeout = POLL_S
        if self.repeat_s is not None:
            timeout = min(timeout, max(0.0, self._sent_at + self.repeat_s - self.clock()))
        try:
            ready, _, _ = select.select([self.device], [], [], timeout)
            if ready:
                for event in self.device.read():
                    state = self.decoder.feed(event)
                    if state is not None:
                        self._emit(state)
            elif self.repeat_s is not None and self.clock() - self._sent_at >= self.repeat_s:
                self._emit(self.decoder.state)
        except BlockingIOError:
            pass  # woken without a complete read; wait again
        except OSError as exc:
            self.logger.warning(f"joystick {self.device.name!r} lost: {exc}; retrying every {self.retry_period_s:g} s")
            self._close()
