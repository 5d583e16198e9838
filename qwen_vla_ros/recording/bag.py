"""rosbag2 directories with MCAP storage: writing serialised messages, reading, crash repair.

Robot computers write through ``rosbag2_py`` (the distribution's own writer). Elsewhere the
pure-Python ``rosbags`` writer is used, with metadata version 8 so Humble's ``ros2 bag``
opens the result. Measured behaviour of that writer when its process is killed: it keeps
the whole pending MCAP chunk (up to 1 MiB) and the file header in memory, and writes
``metadata.yaml`` only at close, so a killed recording is an empty file. The recorder
therefore flushes periodically (closes the pending chunk and pushes it to the OS), and
:func:`repair_bag` rewrites what a crashed recording left, every complete chunk, into a
closed bag that ``rosbags`` and ``ros2 bag`` read, and keeps the original beside it.

Message types missing from the typestore (``interbotix_xs_msgs``, a lab's own packages) are
registered from their ``.msg`` text: the copies shipped in ``qwen_vla_ros/interfaces`` first,
then ``share/<package>/msg`` of every prefix on ``AMENT_PREFIX_PATH``.
"""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from rosbags.interfaces import Nodetype
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import TypesysError
from rosbags.typesys.store import Typestore

from qwen_vla_ros.errors import InvalidArgumentError, QwenVlaError

INTERFACES_DIR = Path(__file__).resolve().parent.parent / "interfaces"
METADATA_FILE = "metadata.yaml"
BAG_VERSION: Literal[8] = 8  # the newest rosbag2 metadata version Humble's ros2 bag reads


class BagError(QwenVlaError, RuntimeError):
    """A bag could not be written or repaired; the message says which and why."""


def typestore_for_distro(distro: str | None = None) -> Typestore:
    """Message definitions of the running distribution (``ROS_DISTRO``), Humble when unknown.

    The definitions of every type the recorder writes by default are identical from Humble
    to Kilted; the distribution only matters for a lab's types that changed between them.
    """
    name = f"ros2_{(distro or os.environ.get('ROS_DISTRO') or 'humble').lower()}"
    store = Stores(name) if name in {s.value for s in Stores} else Stores.ROS2_HUMBLE
    typestore = get_typestore(store)
    for msg_file in sorted(INTERFACES_DIR.glob("*/msg/*.msg")):
        ensure_type(typestore, f"{msg_file.parent.parent.name}/msg/{msg_file.stem}")
    return typestore


def _msg_search_roots() -> list[Path]:
    roots = [INTERFACES_DIR]
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        roots.append(Path(prefix) / "share")
    return roots


def _find_msg_file(msgtype: str) -> Path:
    package, _, name = msgtype.split("/")
    for root in _msg_search_roots():
        candidate = root / package / "msg" / f"{name}.msg"
        if candidate.is_file():
            return candidate
    raise BagError(
        f"message type {msgtype} is not in the rosbags typestore and no {package}/msg/{name}.msg was found "
        f"in {[str(r) for r in _msg_search_roots()]}; install the package or add its .msg files to "
        f"{INTERFACES_DIR}"
    )


def _referenced_types(fields: Iterable[tuple[str, Any]]) -> Iterator[str]:
    for _, (kind, detail) in fields:
        if kind == Nodetype.NAME:
            yield detail
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and detail[0][0] == Nodetype.NAME:
            yield detail[0][1]


def ensure_type(typestore: Typestore, msgtype: str) -> None:
    """Register ``msgtype`` (pkg/msg/Name) and the types it uses from their .msg files."""
    pending = [msgtype]
    while pending:
        name = pending.pop()
        if name in typestore.fielddefs:
            continue
        types = get_types_from_msg(_find_msg_file(name).read_text(encoding="utf-8"), name)
        typestore.register(types)
        for _, fields in types.values():
            pending.extend(t for t in _referenced_types(fields) if t not in typestore.fielddefs)


class BagWriter(Protocol):
    """Writes already-serialised CDR messages; one instance per bag directory."""

    name: str

    def add_topic(self, topic: str, msgtype: str) -> None: ...

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class RosbagsBagWriter:
    """rosbags ``Writer`` (MCAP, metadata version 8) with a flush that survives SIGKILL.

    rosbags has no public flush, so :meth:`flush` closes the MCAP storage's pending chunk
    (``close_chunk``) and flushes its file; the constructor checks those exist so a rosbags
    upgrade that renames them fails at the first trial, not at the first crash. With
    ``fsync`` the data also reaches the disk (a power cut, not only a crash): a helper thread
    fsyncs its own descriptor of the file, so the writer never waits for the device.
    """

    name = "rosbags"

    def __init__(self, path: Path, typestore: Typestore, fsync: bool = True) -> None:
        self._typestore = typestore
        self._writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        storage = self._writer.storage
        if storage is None or not (hasattr(storage, "close_chunk") and hasattr(storage, "chunk") and hasattr(storage, "bio")):
            self._writer.abort()
            raise BagError("this rosbags version's MCAP writer has no close_chunk/bio; periodic flushing needs them")
        self._connections: dict[str, Any] = {}
        self._syncer = _Syncer(storage.path) if fsync else None

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._connections:
            return
        ensure_type(self._typestore, msgtype)
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._typestore)

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        self._writer.write(self._connections[topic], timestamp_ns, data)

    def flush(self) -> None:
        # The MCAP writer's chunk, close_chunk and bio (checked in __init__) are not on rosbags' StorageWriter type.
        storage: Any = self._writer.storage
        if storage.chunk.msgs:  # a chunk without messages would carry an empty time range
            storage.close_chunk()
        storage.bio.flush()
        if self._syncer is not None:
            self._syncer.request()

    def close(self) -> None:
        self._writer.close()
        if self._syncer is not None:
            self._syncer.close()


class _Syncer:
    """fsyncs a file on request from its own thread and descriptor; errors surface at the next request."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._wanted = threading.Event()
        self._closing = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="bag-fsync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        if self._error is not None:
            raise self._error
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._error = exc
                return

    def close(self) -> None:
        self._closing = True
        self._wanted.set()
        self._thread.join()
        try:
            os.fsync(self._fd)  # everything, summary and footer included
        finally:
            os.close(self._fd)
        if self._error is not None:
            raise self._error


class Rosbag2PyBagWriter:
    """The distribution's ``rosbag2_py.SequentialWriter`` (robot computers; not installable here).

    rosbag2 writes complete MCAP chunks as they fill; ``flush`` has nothing to force through
    its Python API, and :func:`repair_bag` handles what a crash leaves just the same.
    """

    name = "rosbag2_py"

    def __init__(self, path: Path) -> None:
        import rosbag2_py

        self._rosbag2_py = rosbag2_py
        self._writer = rosbag2_py.SequentialWriter()
        self._writer.open(
            rosbag2_py.StorageOptions(uri=str(path), storage_id="mcap"),
            rosbag2_py.ConverterOptions(input_serialization_format="cdr", output_serialization_format="cdr"),
        )
        self._topics: set[str] = set()

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._topics:
            return
        fields = {"name": topic, "type": msgtype, "serialization_format": "cdr"}
        try:  # Jazzy and later number topics
            metadata = self._rosbag2_py.TopicMetadata(id=len(self._topics), **fields)
        except TypeError:  # Humble
            metadata = self._rosbag2_py.TopicMetadata(**fields)
        self._writer.create_topic(metadata)
        self._topics.add(topic)

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        self._writer.write(topic, data, timestamp_ns)

    def flush(self) -> None:
        """rosbag2 writes each chunk when it fills; there is nothing to force."""

    def close(self) -> None:
        self._writer.close()


def rosbag2_py_available() -> bool:
    try:
        import rosbag2_py  # noqa: F401
    except ImportError:
        return False
    return True


WRITERS = ("auto", "rosbag2_py", "rosbags")


def bag_writer_factory(prefer: str = "auto", fsync: bool = True) -> Callable[[Path], BagWriter]:
    """What opens each trial's bag: ``auto`` takes rosbag2_py when importable, else rosbags.

    Checked up front, so a wrong choice stops the recorder at start-up, not at the first trial.
    """
    if prefer not in WRITERS:
        raise InvalidArgumentError(f"bag writer must be one of {list(WRITERS)}, got {prefer!r}")
    if prefer == "rosbag2_py" and not rosbag2_py_available():
        raise InvalidArgumentError("bag writer 'rosbag2_py' was asked for but rosbag2_py is not importable; source ROS 2")
    if prefer != "rosbags" and rosbag2_py_available():
        return Rosbag2PyBagWriter
    typestore = typestore_for_distro()
    return lambda path: RosbagsBagWriter(path, typestore, fsync=fsync)


@dataclass
class BagSummary:
    """What a readable bag holds: per-topic type and message count, and its time span."""

    topics: dict[str, tuple[str, int]] = field(default_factory=dict)
    start_ns: int | None = None
    end_ns: int | None = None

    @property
    def message_count(self) -> int:
        return sum(count for _, count in self.topics.values())


def summarize_bag(path: Path) -> BagSummary:
    with Reader(path) as reader:
        topics = {name: (info.msgtype or "", info.msgcount) for name, info in reader.topics.items()}
        if reader.message_count == 0:
            return BagSummary(topics)
        return BagSummary(topics, reader.start_time, reader.end_time - 1)


def is_closed(path: Path) -> bool:
    """A bag whose writer finished: rosbag2 writes metadata.yaml last."""
    return (path / METADATA_FILE).is_file()


@dataclass
class RepairResult:
    summary: BagSummary
    repaired: bool
    note: str


def repair_bag(path: Path, typestore: Typestore | None = None) -> RepairResult:
    """Make the bag at ``path`` readable after its writer died, keeping every complete chunk.

    The MCAP a killed writer leaves has no summary, footer or metadata.yaml. Its complete
    records are streamed into a new bag (rosbags, metadata version 8) beside it, which then
    takes its place; the original recording is never deleted but moved aside to
    ``<bag>.crashed`` (a numbered name when that is taken), so a repair that reads less than
    a better tool could is never the end of the data. Only the scratch copy this function
    writes itself is ever removed. An interrupted repair is simply redone on the next call.
    """
    scratch = path.parent / f".{path.name}.repairing"
    rebuilt = scratch / path.name
    if not path.exists() and is_closed(rebuilt):  # died after moving the original aside, before moving this in
        rebuilt.rename(path)
        scratch.rmdir()
        return RepairResult(summarize_bag(path), True, "an interrupted repair had rebuilt the bag; moved it in")
    if scratch.is_dir() and not scratch.is_symlink():  # a half-written copy of our own
        shutil.rmtree(scratch)
    asides = _asides(path)
    if asides and not path.exists():  # died before the rebuilt bag was complete: start again from the original
        asides[-1].rename(path)
    if not path.exists():
        return RepairResult(BagSummary(), False, "no bag was opened before the recorder stopped")
    if is_closed(path):
        return RepairResult(summarize_bag(path), False, "bag was closed normally")
    sources = sorted(path.glob("*.mcap"))
    if not sources:
        aside = _aside(path)
        path.rename(aside)
        return RepairResult(BagSummary(), False, f"the bag directory held no MCAP file; moved it aside to {aside.name}")

    typestore = typestore or typestore_for_distro()
    scratch.mkdir()
    writer = Writer(scratch / path.name, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    stop_reasons = []
    for source in sources:
        stop_reasons.append(_copy_complete_records(source, writer, typestore))
    writer.close()
    aside = _aside(path)
    path.rename(aside)
    (scratch / path.name).rename(path)
    scratch.rmdir()
    summary = summarize_bag(path)
    reasons = "; ".join(r for r in stop_reasons if r)
    return RepairResult(summary, True, f"rebuilt from the crashed recording: {summary.message_count} messages kept"
                        + (f" ({reasons})" if reasons else "") + f"; the original is kept in {aside.name}")


def _asides(path: Path) -> list[Path]:
    """Originals moved aside beside ``path``, oldest first: ``bag.crashed``, ``bag.crashed.2``, ..."""
    found, number = [], 1
    while (candidate := _aside_name(path, number)).exists() or candidate.is_symlink():
        found.append(candidate)
        number += 1
    return found


def _aside_name(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.crashed" + (f".{number}" if number > 1 else ""))


def _aside(path: Path) -> Path:
    """The next free name for an original recording moved aside."""
    return _aside_name(path, len(_asides(path)) + 1)


def _copy_complete_records(source: Path, writer: Writer, typestore: Typestore) -> str:
    """Copy messages of every complete chunk; returns why reading stopped early, or ''."""
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, Schema] = {}
    channels: dict[int, Any] = {}
    connections: dict[int, Any] = {}
    with source.open("rb") as handle:
        try:
            for record in StreamReader(handle).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Message):
                    if record.channel_id not in connections:
                        connections[record.channel_id] = _connection_for(
                            writer, typestore, channels[record.channel_id], schemas
                        )
                    writer.write(connections[record.channel_id], record.log_time, record.data)
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - a torn file fails the mcap parser in many types (EndOfFile,
            # struct.error, a decompressor's own): reading stops there, and the reason names the type
            return f"{source.name} ends without a footer, reading stopped at {type(exc).__name__}"
    return ""


def _connection_for(writer: Writer, typestore: Typestore, channel: Any, schemas: dict[int, Any]) -> Any:
    schema = schemas[channel.schema_id]
    msgtype = schema.name
    if msgtype not in typestore.fielddefs:
        typestore.register(get_types_from_msg(schema.data.decode(), msgtype))
    try:
        return writer.add_connection(channel.topic, msgtype, typestore=typestore)
    except TypesysError as exc:
        raise BagError(f"cannot rebuild topic {channel.topic} of type {msgtype}: {exc}") from exc


def read_messages(path: Path, topics: Iterable[str] = (), typestore: Typestore | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, deserialised message) in log-time order; types registered from the bag."""
    from rosbags.highlevel import AnyReader

    typestore = typestore or typestore_for_distro()
    wanted = set(topics)
    with AnyReader([path], default_typestore=typestore) as reader:
        connections = [c for c in reader.connections if not wanted or c.topic in wanted]
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield connection.topic, timestamp, reader.deserialize(raw, connection.msgtype)
