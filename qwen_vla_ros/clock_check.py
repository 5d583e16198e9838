"""How far another host's clock is from this one, from its heartbeat stamps.

A heartbeat carries its sender's clock at publication. On arrival,
``received - sent = (local clock - peer clock) + one-way delay``. The delay is positive and
noisy (network, DDS, and on a loaded host the time the executor takes to run the callback),
so the smallest difference over a window is the estimate: the clock offset plus the shortest
delay seen. Two things keep delay from being read as offset:

- a peer on this same host shares this clock, so its difference is all delay: it is reported
  as a delay and never judged an offset (one host, one clock);
- a peer is judged only once ``min_samples`` heartbeats are in its window, so the few late
  heartbeats of a start-up (model loading, every node starting at once) cannot raise the
  warning on their own.

A remote peer whose estimate exceeds the threshold in either direction is reported; a
network delay that never falls below the threshold reads the same way, which on a robot is
worth a warning too. No ROS import: the node feeds it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from qwen_vla_ros.chunk import NS_PER_S

FORGET_AFTER_S = 30.0  # a peer not heard from for this long is dropped from the report
MIN_SAMPLES = 5  # heartbeats in a peer's window before its offset is judged (or the window, if smaller)


def host_of(source: str) -> str:
    """The host part of a heartbeat source, ``host/node``."""
    return source.split("/", 1)[0]


@dataclass(frozen=True)
class PeerOffset:
    peer: str
    offset_s: float  # local clock minus the peer's (plus the shortest one-way delay); same host: the delay
    samples: int
    same_host: bool = False


class ClockOffsetEstimator:
    def __init__(self, window: int, max_offset_s: float, host: str = "", min_samples: int = MIN_SAMPLES) -> None:
        if window < 1 or not max_offset_s > 0:
            raise ValueError(f"need window >= 1 and max_offset_s > 0, got {window} and {max_offset_s}")
        self.window = window
        self.max_offset_s = max_offset_s
        self.host = host
        self.min_samples = max(1, min(min_samples, window))
        self._differences: dict[str, deque[int]] = {}
        self._last_heard_ns: dict[str, int] = {}

    def add(self, peer: str, sent_ns: int, received_ns: int) -> None:
        self._differences.setdefault(peer, deque(maxlen=self.window)).append(received_ns - sent_ns)
        self._last_heard_ns[peer] = received_ns

    def offsets(self, now_ns: int) -> list[PeerOffset]:
        for peer in [p for p, heard in self._last_heard_ns.items() if now_ns - heard > FORGET_AFTER_S * NS_PER_S]:
            del self._differences[peer], self._last_heard_ns[peer]
        return [
            PeerOffset(peer, min(differences) / NS_PER_S, len(differences), bool(self.host) and host_of(peer) == self.host)
            for peer, differences in sorted(self._differences.items())
        ]

    def excessive(self, now_ns: int) -> list[PeerOffset]:
        return [p for p in self.offsets(now_ns)
                if not p.same_host and p.samples >= self.min_samples and abs(p.offset_s) > self.max_offset_s]
