"""One self-contained HTML page per trial, and one for a folder's report: results to look at.

``qwen-vla-ros trials view TRIAL_DIR`` reads the trial's bag once and writes ``view.html`` into
the trial folder: every camera as a VP8 WebM video encoded with opencv and embedded as a data
URI, the commanded against the measured joint positions over time with chunk arrivals,
rejected chunks, mode changes and interventions marked (matplotlib, inline SVG), the histogram
of observation-to-chunk latency, and the trial's metadata. The page needs no server and no
network: a browser opens the file. ``trials report`` writes ``report.html`` the same way, with
the per-factor table and plot and a link to each trial's page. No ROS import.
"""
from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.contract import ACTION_CHUNK, COMMAND, DIAGNOSTICS, MODE
from qwen_vla_ros.recording.trial import TrialRecord, TrialStore

PAGE = "view.html"
IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
COMMAND_TOPIC = COMMAND.name
CHUNK_TOPIC = ACTION_CHUNK.name
MODE_TOPIC = MODE.name
DIAGNOSTICS_TOPIC = DIAGNOSTICS.name
REJECTED_KEY = "chunks_rejected"
MIN_Y_SPAN = 0.05  # rad or normalised: the smallest joint panel range
VIDEO_WIDTH_MAX = 640  # larger frames are scaled down: the page stays a few MB

# The page reports each video's duration (or failure) beside it, and any script error, in the
# document itself: a reader sees it, and a headless browser's DOM dump shows it.
SCRIPT = """
for (const video of document.querySelectorAll('video')) {
  const note = video.parentElement.querySelector('.duration');
  const show = () => { note.textContent = video.duration.toFixed(1) + ' s'; video.dataset.duration = video.duration; };
  video.addEventListener('loadedmetadata', show);
  video.addEventListener('error', () => { note.textContent = 'this browser cannot play the video'; video.dataset.error = '1'; });
  if (video.readyState >= 1) show();
}
"""
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.cameras { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } video { width: 320px; background: #000; } figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
svg { max-width: 100%; height: auto; }
"""


@dataclass
class Series:
    times_s: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class TrialData:
    """What the page shows, read from the bag; times are seconds from the trial's start."""

    commanded: dict[str, Series] = field(default_factory=lambda: defaultdict(Series))
    measured: dict[str, Series] = field(default_factory=lambda: defaultdict(Series))  # "topic joint" -> series
    chunks_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    rejections_s: list[float] = field(default_factory=list)
    modes: list[tuple[float, str]] = field(default_factory=list)
    videos: dict[str, Path] = field(default_factory=dict)


def _stamp_ns(message: Any) -> int:
    return int(message.header.stamp.sec) * NS_PER_S + int(message.header.stamp.nanosec)


def _rgb(message: Any) -> np.ndarray | None:
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(message.encoding)
    if channels is None:
        return None
    rows = np.frombuffer(bytes(message.data), np.uint8).reshape(message.height, message.step)
    image = rows[:, : message.width * channels].reshape(message.height, message.width, channels)
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    return image if message.encoding == "rgb8" else image[:, :, ::-1]


class _VideoSink:
    """One camera's frames into a VP8 WebM file (the codec every browser plays)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.writer: Any = None  # a cv2.VideoWriter once the first frame gives the size (cv2 is imported late)
        self.size: tuple[int, int] | None = None

    def add(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None or self.size is None:  # set together, on the first frame
            height, width = rgb.shape[:2]
            scale = min(1.0, VIDEO_WIDTH_MAX / width)
            self.size = (max(2, round(width * scale)) // 2 * 2, max(2, round(height * scale)) // 2 * 2)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*"vp08"), self.fps, self.size)
            if not self.writer.isOpened():
                raise RuntimeError("opencv cannot write VP8 WebM video here")
        frame = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA) if rgb.shape[1::-1] != self.size else rgb
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def read_trial(bag: Path, start_ns: int, video_dir: Path) -> TrialData:
    """One pass over the bag: series, events, latencies; camera frames straight into video files."""
    from rosbags.highlevel import AnyReader

    from qwen_vla_ros.recording.bag import typestore_for_distro

    data = TrialData()
    sinks: dict[str, _VideoSink] = {}
    last_rejected: int | None = None
    with AnyReader([bag], default_typestore=typestore_for_distro()) as reader:
        span_s = max(reader.duration / NS_PER_S, 1e-3)
        for connection in reader.connections:
            if connection.msgtype == IMAGE_TYPE and connection.msgcount:
                name = connection.topic.strip("/").replace("/", "_")
                fps = max(1.0, min(60.0, (connection.msgcount - 1) / span_s)) if connection.msgcount > 1 else 1.0
                sinks[connection.topic] = _VideoSink(video_dir / f"{name}.webm", fps)
        for connection, timestamp, raw in reader.messages():
            at_s = (timestamp - start_ns) / NS_PER_S
            if connection.msgtype == IMAGE_TYPE:
                message: Any = reader.deserialize(raw, connection.msgtype)
                rgb = _rgb(message)
                if rgb is not None:
                    sinks[connection.topic].add(rgb)
                continue
            message = reader.deserialize(raw, connection.msgtype)
            if connection.topic == COMMAND_TOPIC:
                for name, position in zip(message.name, message.position, strict=False):
                    data.commanded[name].times_s.append(at_s)
                    data.commanded[name].values.append(float(position))
            elif connection.msgtype == JOINT_STATE_TYPE:
                for name, position in zip(message.name, message.position, strict=False):
                    series = data.measured[f"{connection.topic} {name}"]
                    series.times_s.append(at_s)
                    series.values.append(float(position))
            elif connection.topic == CHUNK_TOPIC:
                data.chunks_s.append(at_s)
                data.latencies_ms.append((timestamp - _stamp_ns(message)) / 1e6)
            elif connection.topic == MODE_TOPIC:
                data.modes.append((at_s, str(message.data)))
            elif connection.topic == DIAGNOSTICS_TOPIC:
                for status in message.status:
                    for pair in status.values:
                        if pair.key == REJECTED_KEY and pair.value.isdigit():
                            count = int(pair.value)
                            if last_rejected is not None and count > last_rejected:
                                data.rejections_s.append(at_s)
                            last_rejected = count
    for topic, sink in sinks.items():
        sink.close()
        if sink.writer is not None:
            data.videos[topic] = sink.path
    return data


def _matching_measured(channel: str, measured: Iterable[str]) -> str | None:
    """The measured joint a command channel drives: ``left_waist`` <- ``/follower_left/joint_states waist``."""
    for key in measured:
        topic, joint = key.split(" ", 1)
        side = channel[: -len(joint) - 1] if channel.endswith("_" + joint) else None
        if side and side in topic.split("/")[1].split("_"):
            return key
    return None


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def joints_plot(data: TrialData, record: TrialRecord) -> str:
    """Commanded vs measured per channel, with the trial's events on every panel."""
    from matplotlib.figure import Figure

    channels = list(data.commanded) or sorted({k.split(" ", 1)[1] for k in data.measured})
    columns = 2 if len(channels) > 1 else 1
    rows = max(1, -(-len(channels) // columns))
    figure = Figure(figsize=(12, 1.9 * rows + 1.2))
    axes = figure.subplots(rows + 1, columns, squeeze=False, sharex=True,
                           gridspec_kw={"height_ratios": [0.6] + [1] * rows})
    events = axes[0][0]
    for axis in axes[0][1:]:
        axis.axis("off")
    events.eventplot([data.chunks_s], lineoffsets=[1], colors=["#4878a8"], linelengths=0.8)
    if data.rejections_s:
        events.plot(data.rejections_s, [0] * len(data.rejections_s), "x", color="#c0392b")
    events.set_yticks([0, 1], ["rejected", "chunks"])
    events.set_ylim(-0.7, 1.7)
    events.set_title(f"{record.id}: commands (solid) and measured joint states (dotted)", loc="left")
    marks = [(at, f"mode {mode}", "#7f8c8d") for at, mode in data.modes]
    marks += [(i.at_s, "intervention", "#e67e22") for i in record.interventions]
    for index, channel in enumerate(channels):
        axis = axes[1 + index // columns][index % columns]
        if channel in data.commanded:
            axis.plot(data.commanded[channel].times_s, data.commanded[channel].values, lw=1.2, label="command")
        key = _matching_measured(channel, data.measured) if channel in data.commanded else None
        key = key or next((k for k in data.measured if k.endswith(" " + channel)), None)
        if key:
            axis.plot(data.measured[key].times_s, data.measured[key].values, ":", lw=1.2, label="measured")
        axis.set_ylabel(channel, fontsize=8)
        low, high = axis.get_ylim()
        if high - low < MIN_Y_SPAN:  # a held joint: show it flat, not its float noise magnified
            middle = (low + high) / 2
            axis.set_ylim(middle - MIN_Y_SPAN / 2, middle + MIN_Y_SPAN / 2)
        axis.ticklabel_format(axis="y", useOffset=False)
        for at, _, color in marks:
            axis.axvline(at, color=color, lw=0.8, alpha=0.8)
    for at, label, color in marks:
        events.axvline(at, color=color, lw=0.8)
        events.annotate(label, (at, 1.55), fontsize=7, color=color, rotation=0)
    for axis in axes[-1]:
        axis.set_xlabel("seconds from the trial's start")
    return _svg(figure)


def latency_plot(latencies_ms: Sequence[float]) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3))
    axis = figure.subplots()
    if latencies_ms:
        axis.hist(latencies_ms, bins=min(30, max(5, len(latencies_ms) // 2)), color="#4878a8")
        p50, p99 = np.percentile(latencies_ms, [50, 99])
        axis.set_title(f"observation to chunk: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(latencies_ms)} chunks)", fontsize=9)
    else:
        axis.set_title("no chunks recorded", fontsize=9)
    axis.set_xlabel("ms (chunk received by the recorder minus its observation stamp)")
    axis.set_ylabel("chunks")
    return _svg(figure)


def _metadata_table(record: TrialRecord) -> str:
    rows = []
    for key, value in record.model_dump(mode="json", exclude={"topics"}).items():
        shown = value if isinstance(value, str) else json.dumps(value)
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(shown))}</td></tr>")
    topics = "".join(
        f"<tr><td>{html.escape(topic)}</td><td>{counts.messages}</td><td>{counts.dropped}</td></tr>"
        for topic, counts in sorted(record.topics.items())
    )
    return (f'<table id="metadata">{"".join(rows)}</table><h3>Topics</h3>'
            f"<table><tr><th>topic</th><th>messages</th><th>dropped</th></tr>{topics}</table>")


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n")


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def write_trial_page(trial_dir: Path) -> Path:
    """``trial_dir/view.html`` for one recorded trial; returns its path."""
    trial_dir = Path(trial_dir).expanduser()
    record_path = trial_dir / TrialStore.RECORD
    if not record_path.is_file():
        raise FileNotFoundError(f"{trial_dir} is not a trial folder (no {TrialStore.RECORD})")
    record = TrialRecord.model_validate(yaml.safe_load(record_path.read_text(encoding="utf-8")))
    bag = trial_dir / record.bag
    if not bag.is_dir():
        raise FileNotFoundError(f"{trial_dir}: its bag {bag} is missing")
    with tempfile.TemporaryDirectory(prefix="qwen_vla_view_") as scratch:
        data = read_trial(bag, record.start_ns, Path(scratch))
        cameras = "".join(
            f'<figure><video controls muted loop preload="auto" src="{_data_uri(path, "video/webm")}" '
            f'data-topic="{html.escape(topic)}"></video>'
            f'<figcaption>{html.escape(topic)} <span class="duration"></span></figcaption></figure>'
            for topic, path in sorted(data.videos.items())
        ) or "<p>No camera images in this bag.</p>"
    logs = f"<p>Node logs of the run: <code>{html.escape(record.logs)}</code></p>" if record.logs else ""
    body = (
        f"<h1>{html.escape(record.id)}: {html.escape(str(record.outcome))}</h1>"
        f"<p>{html.escape(record.embodiment)}, {record.duration_s or 0:.1f} s, instruction "
        f"&ldquo;{html.escape(record.instruction)}&rdquo;, condition {html.escape(str(record.condition or '-'))}; "
        f"{len(data.chunks_s)} chunks, {len(data.rejections_s)} rejections, {len(record.interventions)} interventions."
        f"</p>{logs}<h2>Cameras</h2><div class=\"cameras\">{cameras}</div>"
        f'<h2>Commands and joint states</h2><div class="plot" id="joints">{joints_plot(data, record)}</div>'
        f'<h2>Inference latency</h2><div class="plot" id="latency">{latency_plot(data.latencies_ms)}</div>'
        f"<h2>Metadata</h2>{_metadata_table(record)}"
    )
    page = trial_dir / PAGE
    page.write_text(_page(f"{record.id} ({record.outcome})", body), encoding="utf-8")
    return page


def write_report_page(out: Path, report_markdown: str, chart: Path, trial_pages: Mapping[str, Path | str]) -> Path:
    """``out/report.html``: the report's tables, its plot embedded, a link to each trial's page."""
    parts, table = [], []
    for line in report_markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line.replace("|", "").strip()) <= set("-: "):
                table.append(line.strip("|").split("|"))
            continue
        if table:
            head, *rows = table
            parts.append("<table class=\"factors\"><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
                         + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
                                             for row in rows) + "</table>")
            table = []
        if line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    parts.append(f'<div class="plot" id="factors-plot"><img alt="success rate by factor level" '
                 f'src="{_data_uri(chart, "image/png")}"></div>')
    links = "".join(f'<li><a href="{html.escape(str(href))}">{html.escape(trial)}</a></li>'
                    for trial, href in sorted(trial_pages.items()))
    parts.append(f'<h2>Trials</h2><ul id="trials">{links}</ul>')
    page = out / "report.html"
    page.write_text(_page("Trial report", "".join(parts)), encoding="utf-8")
    return page
