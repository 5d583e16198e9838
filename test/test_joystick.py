"""joystick_node and its evdev reader: joy_node's numbering, values, deadzone, frames, autorepeat,
lost events, a missing or unplugged device, and Joy over real DDS.

A physical gamepad cannot exist here. Where the kernel offers ``/dev/uinput`` a real virtual
device (``evdev.UInput``) is created and read through ``/dev/input``. This machine's kernel has
no uinput, so the other tests use :class:`VirtualPad`, the documented seam: an object with the
few ``evdev.InputDevice`` methods the reader calls (``capabilities``, ``read``, ``fileno``,
``absinfo``, ``active_keys``, ``close``) whose events are real ``evdev.InputEvent`` values and
whose file descriptor is a pipe, so ``select`` wakes the reader exactly as a device would.
"""
from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections import deque

import pytest

evdev = pytest.importorskip("evdev", reason="evdev is not installed: pip install '.[teleop]'")
from evdev import AbsInfo, InputEvent, ecodes  # noqa: E402

from qwen_vla_ros.errors import InvalidArgumentError  # noqa: E402
from qwen_vla_ros.teleop.joystick import JoyState, JoystickDecoder, JoystickReader, button_order, is_joystick  # noqa: E402

STICK = AbsInfo(value=0, min=-32768, max=32767, fuzz=16, flat=128, resolution=0)
TRIGGER = AbsInfo(value=0, min=0, max=255, fuzz=0, flat=0, resolution=0)
HAT = AbsInfo(value=0, min=-1, max=1, fuzz=0, flat=0, resolution=0)
# What the xpad driver reports for an Xbox 360 pad (plus a keyboard key, which joydev ignores).
XPAD_ABS = [(ecodes.ABS_X, STICK), (ecodes.ABS_Y, STICK), (ecodes.ABS_Z, TRIGGER), (ecodes.ABS_RX, STICK),
            (ecodes.ABS_RY, STICK), (ecodes.ABS_RZ, TRIGGER), (ecodes.ABS_HAT0X, HAT), (ecodes.ABS_HAT0Y, HAT)]
XPAD_KEYS = [ecodes.BTN_A, ecodes.BTN_B, ecodes.BTN_X, ecodes.BTN_Y, ecodes.BTN_TL, ecodes.BTN_TR, ecodes.BTN_SELECT,
             ecodes.BTN_START, ecodes.BTN_MODE, ecodes.BTN_THUMBL, ecodes.BTN_THUMBR]


def syn() -> InputEvent:
    return InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0)


def key(code: int, value: int = 1) -> InputEvent:
    return InputEvent(0, 0, ecodes.EV_KEY, code, value)


def axis(code: int, value: int) -> InputEvent:
    return InputEvent(0, 0, ecodes.EV_ABS, code, value)


class VirtualPad:
    """The seam where /dev/uinput is missing (see the module docstring)."""

    def __init__(self, name: str = "Microsoft X-Box 360 pad", keys=XPAD_KEYS, absolute=XPAD_ABS):
        self.name, self.path = name, "/dev/input/event-virtual"
        self._capabilities = {ecodes.EV_KEY: list(keys), ecodes.EV_ABS: list(absolute)}
        self._values = {code: info.value for code, info in absolute}
        self._pressed: set[int] = set()
        self._events: deque[InputEvent] = deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.lost = False
        self.closed = False

    def emit(self, *events: InputEvent) -> None:
        """The kernel queues the events (and keeps its own view of the state, for resyncs)."""
        for event in events:
            if event.type == ecodes.EV_ABS:
                self._values[event.code] = event.value
            elif event.type == ecodes.EV_KEY:
                (self._pressed.add if event.value else self._pressed.discard)(event.code)
        self._events.extend(events)
        os.write(self._write_fd, b"!")

    def unplug(self) -> None:
        self.lost = True
        os.write(self._write_fd, b"!")

    def fileno(self) -> int:
        return self._read_fd

    def read(self):
        try:
            os.read(self._read_fd, 4096)
        except BlockingIOError:
            pass
        if self.lost:
            raise OSError(errno.ENODEV, "No such device")
        if not self._events:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        events = list(self._events)
        self._events.clear()
        return iter(events)

    def capabilities(self, verbose: bool = False, absinfo: bool = True):
        return self._capabilities

    def absinfo(self, code: int) -> AbsInfo:
        info = dict(self._capabilities[ecodes.EV_ABS])[code]
        return info._replace(value=self._values[code])

    def active_keys(self) -> list[int]:
        return sorted(self._pressed)

    def close(self) -> None:
        self.closed = True
        os.close(self._read_fd)
        os.close(self._write_fd)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warning = info


# -- decoding ----------------------------------------------------------------------------------------
def test_numbering_follows_joydev() -> None:
    keys = [ecodes.KEY_A, ecodes.BTN_TRIGGER_HAPPY1, *reversed(XPAD_KEYS), ecodes.BTN_0]
    assert button_order(keys) == [*XPAD_KEYS, ecodes.BTN_TRIGGER_HAPPY1, ecodes.BTN_0]
    assert is_joystick({ecodes.EV_KEY: XPAD_KEYS}) and not is_joystick({ecodes.EV_KEY: [ecodes.KEY_A, ecodes.BTN_LEFT]})


def test_values_follow_joy_node_conventions() -> None:
    decoder = JoystickDecoder(VirtualPad(), deadzone=0.05)
    assert decoder.state == JoyState((0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0), (0,) * 11), "triggers rest at +1"
    frame = [axis(ecodes.ABS_Y, -32768), axis(ecodes.ABS_X, 1000), axis(ecodes.ABS_RZ, 255), axis(ecodes.ABS_HAT0X, -1),
             axis(ecodes.ABS_RX, 16384), key(ecodes.BTN_TL), key(ecodes.BTN_THUMBR)]
    assert [decoder.feed(event) for event in frame] == [None] * len(frame), "a frame is published whole"
    state = decoder.feed(syn())
    assert state is not None
    assert state.axes[1] == 1.0, "stick up reads +1"
    assert state.axes[0] == 0.0, "within the deadzone"
    assert state.axes[5] == -1.0, "a trigger pulled fully reads -1"
    assert state.axes[6] == 1.0, "d-pad left reads +1"
    assert state.axes[3] == pytest.approx(-((16384 + 32768) / 65535 * 2 - 1 - 0.05) / 0.95), "rescaled past the deadzone"
    assert state.buttons == (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1)
    assert decoder.feed(key(ecodes.BTN_TL, 2)) is None and decoder.feed(syn()) is None, "a key repeat changes nothing"
    decoder.feed(key(ecodes.BTN_TL, 0))
    assert decoder.feed(syn()).buttons[4] == 0


def test_lost_events_are_recovered_from_the_device_state() -> None:
    pad = VirtualPad()
    decoder = JoystickDecoder(pad, deadzone=0.0)
    pad.emit(key(ecodes.BTN_A), axis(ecodes.ABS_Y, 32767))  # the kernel knows; our copy of the events was lost
    decoder.feed(InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_DROPPED, 0))
    assert decoder.feed(key(ecodes.BTN_B)) is None  # the rest of a broken frame is ignored
    state = decoder.feed(syn())
    assert state.buttons[:2] == (1, 0) and state.axes[1] == -1.0


# -- the reader: autorepeat, missing and unplugged devices -------------------------------------------
def start_reader(open_device, **settings):
    published: queue.Queue[JoyState] = queue.Queue()
    log = Log()
    reader = JoystickReader(open_device, published.put, log, **settings)
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    return published, log, stop, thread


def test_reader_publishes_changes_at_once_and_repeats_the_state_when_quiet() -> None:
    pad = VirtualPad()
    published, _, stop, thread = start_reader(lambda: pad, autorepeat_rate=50.0)
    try:
        assert published.get(timeout=5).buttons == (0,) * 11, "the state on connection"
        pad.emit(key(ecodes.BTN_START), syn())
        pressed = [published.get(timeout=5) for _ in range(4)]  # the press, then repeats of it
        assert pressed[0].buttons[7] == 1 and len(set(pressed)) == 1
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and pad.closed


def test_reader_without_autorepeat_publishes_only_changes() -> None:
    pad = VirtualPad()
    published, _, stop, thread = start_reader(lambda: pad, autorepeat_rate=0.0)
    try:
        published.get(timeout=5)
        with pytest.raises(queue.Empty):
            published.get(timeout=0.3)
        pad.emit(axis(ecodes.ABS_X, -32768), syn())
        assert published.get(timeout=5).axes[0] == 1.0
    finally:
        stop.set()
        thread.join(5)


def test_missing_then_unplugged_device_is_logged_and_retried() -> None:
    pads: list[VirtualPad] = []
    attempts = {"count": 0}

    def open_device():
        attempts["count"] += 1
        if attempts["count"] <= 3:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/input/by-id/usb-pad-event-joystick")
        pads.append(VirtualPad())
        return pads[-1]

    published, log, stop, thread = start_reader(open_device, retry_period_s=0.05)
    try:
        assert published.get(timeout=5).buttons == (0,) * 11
        assert attempts["count"] == 4
        assert sum("no joystick" in line for line in log.lines) == 1, "logged once, not at every retry"
        pads[0].unplug()
        assert published.get(timeout=5) is not None and len(pads) == 2, "re-opened after the unplug"
        assert any("lost" in line and "No such device" in line for line in log.lines)
        assert pads[0].closed
    finally:
        stop.set()
        thread.join(5)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="deadzone"):
        JoystickReader(VirtualPad, print, Log(), deadzone=1.0)


# -- a real virtual device --------------------------------------------------------------------------
def test_uinput_gamepad_read_through_dev_input() -> None:
    if not os.path.exists("/dev/uinput"):
        pytest.skip("/dev/uinput does not exist here (no uinput in this kernel), so no real virtual gamepad can be made; "
                    "the VirtualPad tests cover the reader")
    from evdev import UInput

    from qwen_vla_ros.teleop.joystick import open_joystick

    try:
        gamepad = UInput({ecodes.EV_KEY: XPAD_KEYS, ecodes.EV_ABS: XPAD_ABS}, name="qwen_vla test pad")
    except (OSError, evdev.UInputError) as exc:
        pytest.skip(f"/dev/uinput exists but cannot be used: {exc}")
    with gamepad:
        time.sleep(0.5)  # udev creates the node
        published, log, stop, thread = start_reader(lambda: open_joystick(name="qwen_vla test pad"), autorepeat_rate=0.0)
        try:
            assert published.get(timeout=5).axes[2] == 1.0
            gamepad.write(ecodes.EV_ABS, ecodes.ABS_Y, -32768)
            gamepad.write(ecodes.EV_KEY, ecodes.BTN_TL, 1)
            gamepad.syn()
            state = published.get(timeout=5)
            assert state.axes[1] == 1.0 and state.buttons[4] == 1
        finally:
            stop.set()
            thread.join(5)


# -- the node over DDS -------------------------------------------------------------------------------
@pytest.mark.ros
def test_joystick_node_publishes_joy_over_dds(ros_domain) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Joy

    from qwen_vla_ros.nodes.joystick_node import JoystickNode

    pad = VirtualPad()
    received: list[Joy] = []
    listener = rclpy.create_node("joy_listener", context=ros_domain.context)
    listener.create_subscription(Joy, "/joy", received.append, 10)
    joystick = JoystickNode(open_device=lambda: pad, context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(listener)
    try:
        assert ros_domain.spin_until(executor, lambda: len(received) > 0, timeout=10)
        pad.emit(axis(ecodes.ABS_RY, -32768), key(ecodes.BTN_TL), syn())
        assert ros_domain.spin_until(executor, lambda: received[-1].buttons[4] == 1, timeout=5)
    finally:
        joystick.close()
        joystick.destroy_node()
        listener.destroy_node()
    last = received[-1]
    assert len(last.axes) == 8 and len(last.buttons) == 11
    assert last.axes[4] == 1.0 and last.header.frame_id == "joy"


@pytest.mark.ros
def test_joystick_node_keeps_retrying_a_missing_device(ros_domain) -> None:
    child = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.joystick_node", "--ros-args", "-p", "device_path:=/dev/input/by-id/no-such-pad",
        "-p", "retry_period_s:=0.05",
    )
    time.sleep(5.0)  # start-up, then well over RETRY_LOG_EVERY attempts
    alive = child.poll() is None
    output = ros_domain.stop_process(child)
    assert alive, output
    assert "/dev/input/by-id/no-such-pad" in output and "retrying every 0.05 s" in output
    assert output.count("no joystick") >= 2, "still retrying, and saying so now and then"
    assert "Traceback" not in output and child.returncode == 0
