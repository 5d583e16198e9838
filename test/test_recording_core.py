"""Recording core without ROS: the bounded queue, the writer thread, bags and their repair,
type registration, topic selection, and the trial session's bookkeeping."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")

from helpers.trials import make_victim, plant_hostile_trials, tree
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from qwen_vla_ros.config import ConfigError, load_embodiment  # noqa: E402
from qwen_vla_ros.errors import InvalidArgumentError  # noqa: E402
from qwen_vla_ros.recording.bag import (  # noqa: E402
    BagError,
    Rosbag2PyBagWriter,
    RosbagsBagWriter,
    bag_writer_factory,
    ensure_type,
    read_messages,
    repair_bag,
    rosbag2_py_available,
    typestore_for_distro,
)
from qwen_vla_ros.recording.protocol import Protocol  # noqa: E402
from qwen_vla_ros.recording.session import RecorderIdentity, SessionSettings, TrialError, TrialSession  # noqa: E402
from qwen_vla_ros.recording.topics import (  # noqa: E402
    TopicTypeMismatchError,
    check_types,
    default_topics,
    parse_topic_spec,
    subscription_qos,
)
from qwen_vla_ros.recording.trial import TrialStore  # noqa: E402
from qwen_vla_ros.recording.writer import BagRecorder, MessageQueue, QueuedMessage  # noqa: E402

TYPESTORE = typestore_for_distro("humble")
STRING = "std_msgs/msg/String"
S = 1_000_000_000


def _string(text: str) -> bytes:
    return bytes(TYPESTORE.serialize_cdr(TYPESTORE.types[STRING](data=text), STRING))


def _texts(path: Path, topic: str | None = None) -> list[str]:
    return [m.data for t, _, m in read_messages(path) if topic in (None, t)]


# --- queue and writer thread ---------------------------------------------------------------

def test_queue_holds_at_most_its_byte_budget_and_counts_every_drop() -> None:
    queue = MessageQueue(max_bytes=100)
    accepted = [queue.put(QueuedMessage("/a" if i % 2 else "/b", STRING, i, bytes(30))) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert queue.dropped() == {"/a": 1, "/b": 1}
    batch = queue.take_all(0.0)
    assert len(batch) == 3 and queue.peak_bytes == 90
    assert not queue.put(QueuedMessage("/a", STRING, 9, bytes(30))), "a taken batch still holds memory until written"
    for message in batch:
        queue.release(message)
    assert queue.put(QueuedMessage("/a", STRING, 9, bytes(30))), "space is free again once the writer wrote it"
    queue.close()
    assert not queue.put(QueuedMessage("/a", STRING, 10, bytes(1)))
    assert queue.dropped() == {"/a": 2, "/b": 1}, "a message after the end belongs to no trial and is no drop"


def test_writer_thread_writes_every_queued_message_in_order(tmp_path: Path) -> None:
    queue = MessageQueue(max_bytes=1 << 20)
    flushes = []
    recorder = BagRecorder(RosbagsBagWriter(tmp_path / "bag", TYPESTORE), queue, 0.05, flushes.append)
    sent = {"/a": [f"a{i}" for i in range(50)], "/b": [f"b{i}" for i in range(20)]}
    for i in range(50):
        queue.put(QueuedMessage("/a", STRING, S + i, _string(sent["/a"][i])))
        if i < 20:
            queue.put(QueuedMessage("/b", STRING, S + i, _string(sent["/b"][i])))
    time.sleep(0.2)
    stats = recorder.stop()
    assert stats.written == {"/a": 50, "/b": 20} and not stats.problems()
    assert stats.busy_s > 0 and stats.mb_per_busy_s > 0 and 0 < stats.queue_peak_bytes <= queue.max_bytes
    assert flushes and flushes[-1].written["/a"] == 50, "each flush reports the counts so far"
    assert _texts(tmp_path / "bag", "/a") == sent["/a"] and _texts(tmp_path / "bag", "/b") == sent["/b"]


def test_a_topic_that_cannot_be_recorded_loses_only_itself(tmp_path: Path) -> None:
    queue = MessageQueue(max_bytes=1 << 20)
    recorder = BagRecorder(RosbagsBagWriter(tmp_path / "bag", TYPESTORE), queue, 1.0)
    for i in range(3):
        queue.put(QueuedMessage("/mystery", "mystery_msgs/msg/Thing", S + i, b"\x00\x01\x00\x00"))
        queue.put(QueuedMessage("/a", STRING, S + i, _string(str(i))))
    stats = recorder.stop()
    assert stats.written == {"/a": 3} and stats.dropped("/mystery") == 3
    assert "mystery_msgs/msg/Thing" in stats.topic_errors["/mystery"] and stats.error is None
    assert _texts(tmp_path / "bag") == ["0", "1", "2"]


# --- message types ---------------------------------------------------------------------------

def test_interbotix_types_are_registered_and_read_back_from_the_bag_alone(tmp_path: Path) -> None:
    group = "interbotix_xs_msgs/msg/JointGroupCommand"
    trajectory = "interbotix_xs_msgs/msg/JointTrajectoryCommand"
    writer = RosbagsBagWriter(tmp_path / "bag", typestore_for_distro("humble"))
    writer.add_topic("/follower_left/commands/joint_group", group)
    writer.add_topic("/follower_left/commands/joint_trajectory", trajectory)
    types = TYPESTORE.types
    command = types[group](name="arm", cmd=np.array([0.1, -0.9, 1.1, 0.0, -0.3, 0.2], dtype=np.float32))
    writer.write("/follower_left/commands/joint_group", S, bytes(TYPESTORE.serialize_cdr(command, group)))
    traj = types["trajectory_msgs/msg/JointTrajectory"](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id=""),
        joint_names=["gripper"],
        points=[types["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.array([1.2]), velocities=np.array([], dtype=float), accelerations=np.array([], dtype=float),
            effort=np.array([], dtype=float), time_from_start=types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))],
    )
    message = types[trajectory](cmd_type="single", name="gripper", traj=traj)
    writer.write("/follower_left/commands/joint_trajectory", S + 1, bytes(TYPESTORE.serialize_cdr(message, trajectory)))
    writer.close()

    plain = get_typestore(Stores.ROS2_HUMBLE)
    assert group not in plain.fielddefs, "a stock typestore lacks the Interbotix types"
    with AnyReader([tmp_path / "bag"], default_typestore=plain) as reader:
        decoded = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()]
    assert decoded[0].name == "arm" and np.array_equal(decoded[0].cmd, command.cmd)
    assert decoded[1].cmd_type == "single" and decoded[1].traj.points[0].positions.tolist() == [1.2]


def test_types_are_found_on_the_ament_prefix_path_with_their_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg_dir = tmp_path / "prefix" / "share" / "lab_msgs" / "msg"
    msg_dir.mkdir(parents=True)
    (msg_dir / "Grasp.msg").write_text("lab_msgs/Contact[] contacts\nfloat64 width\n")
    (msg_dir / "Contact.msg").write_text("string finger\nfloat32 force\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    ensure_type(typestore, "lab_msgs/msg/Grasp")
    assert {"lab_msgs/msg/Grasp", "lab_msgs/msg/Contact"} <= set(typestore.fielddefs)
    with pytest.raises(BagError, match=r"no lab_msgs/msg/Missing.msg was found"):
        ensure_type(typestore, "lab_msgs/msg/Missing")


# --- repairing a killed recording ------------------------------------------------------------

def _flushed_batches(path: Path, batches: list[list[str]]) -> list[int]:
    """Write each batch then flush; returns the file size after each flush."""
    writer = RosbagsBagWriter(path, TYPESTORE)
    writer.add_topic("/a", STRING)
    sizes = []
    stamp = S
    for batch in batches:
        for text in batch:
            writer.write("/a", stamp, _string(text))
            stamp += 1
        writer.flush()
        sizes.append((path / f"{path.name}.mcap").stat().st_size)
    return sizes


def test_repair_keeps_every_complete_chunk_of_a_killed_recording(tmp_path: Path) -> None:
    batches = [[f"first {i}" for i in range(5)], [f"second {i}" for i in range(5)], [f"third {i}" for i in range(5)]]
    sizes = _flushed_batches(tmp_path / "live", batches)
    crashed = tmp_path / "trial" / "bag"
    crashed.mkdir(parents=True)
    data = (tmp_path / "live" / "live.mcap").read_bytes()
    cut = sizes[1] + (sizes[2] - sizes[1]) // 2  # the third chunk was being written when the process died
    (crashed / "bag_0.mcap").write_bytes(data[:cut])

    result = repair_bag(crashed)
    assert result.repaired and "ends without a footer" in result.note
    assert _texts(crashed) == batches[0] + batches[1]
    with Reader(crashed) as reader:
        assert reader.topics["/a"].msgcount == 10 and reader.start_time == S and reader.end_time == S + 10
    assert yaml.safe_load((crashed / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == 8
    assert sorted(p.name for p in crashed.parent.iterdir()) == ["bag", "bag.crashed"], "no scratch directories are left"
    assert (crashed.parent / "bag.crashed" / "bag_0.mcap").read_bytes() == data[:cut], \
        "the original recording is moved aside untouched, never deleted"
    again = repair_bag(crashed)
    assert not again.repaired and again.summary.message_count == 10


@pytest.mark.parametrize("died", ["while rebuilding", "between the two renames"])
def test_repair_finishes_after_being_interrupted_itself(tmp_path: Path, died: str) -> None:
    bag = tmp_path / "bag"
    _flushed_batches(bag, [["a", "b"]])
    (bag / "metadata.yaml").unlink(missing_ok=True)
    original = (bag / "bag.mcap").read_bytes()
    scratch = tmp_path / ".bag.repairing"
    if died == "while rebuilding":  # a half-written copy, the original still in place
        scratch.mkdir()
        (scratch / "half-written").write_text("")
    else:  # the rebuilt bag was complete and the original moved aside; moving the new one in was lost
        assert repair_bag(bag).repaired
        scratch.mkdir()
        bag.rename(scratch / "bag")
    result = repair_bag(bag)
    assert result.repaired and _texts(bag) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "bag.crashed"], "one original, no scratch left"
    assert (tmp_path / "bag.crashed" / "bag.mcap").read_bytes() == original


def test_a_bag_directory_without_mcap_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "notes.txt").write_text("kept")
    result = repair_bag(bag)
    assert not result.repaired and "moved it aside to bag.crashed" in result.note
    assert (tmp_path / "bag.crashed" / "notes.txt").read_text() == "kept"


def test_repair_of_a_bag_that_was_never_opened(tmp_path: Path) -> None:
    result = repair_bag(tmp_path / "bag")
    assert not result.repaired and result.summary.message_count == 0 and "no bag" in result.note


# --- topics ------------------------------------------------------------------------------------

def test_default_topics_follow_the_embodiment_config() -> None:
    aloha = load_embodiment("aloha")
    topics = default_topics(aloha)
    for camera in aloha.cameras:
        assert topics[camera.topic] == "sensor_msgs/msg/Image"
    assert topics["/follower_right/joint_states"] == "sensor_msgs/msg/JointState"
    assert topics["/follower_left/commands/joint_group"] == "interbotix_xs_msgs/msg/JointGroupCommand"
    for name in ("/qwen_vla/action_chunk", "/qwen_vla/controller/command", "/qwen_vla/controller/committed",
                 "/qwen_vla/mode", "/joy", "/qwen_vla/instruction", "/diagnostics", "/qwen_vla/sim/success"):
        assert name in topics
    mobile = default_topics(load_embodiment("aloha_mobile"))
    assert mobile["/odom"] == "nav_msgs/msg/Odometry" and "/cam_low/camera/color/image_rect_raw" not in mobile


def test_subscription_qos_matches_every_publisher() -> None:
    assert subscription_qos([(True, True)]) == (True, True)
    assert subscription_qos([(True, False), (False, False)]) == (False, False)
    assert subscription_qos([(True, True), (True, False)]) == (True, False)
    with pytest.raises(ValueError):
        subscription_qos([])


def test_topic_specs_and_type_checks() -> None:
    assert parse_topic_spec("/x:std_msgs/msg/String") == ("/x", STRING)
    assert parse_topic_spec("/x") == ("/x", "")
    with pytest.raises(InvalidArgumentError, match="absolute"):
        parse_topic_spec("x")
    with pytest.raises(InvalidArgumentError, match="pkg/msg/Type"):
        parse_topic_spec("/x:String")
    assert check_types({"/x": ""}, "/x", [STRING]) == STRING
    with pytest.raises(TopicTypeMismatchError, match="not the configured"):
        check_types({"/x": "std_msgs/msg/Bool"}, "/x", [STRING])


# --- the session -------------------------------------------------------------------------------

IDENTITY = RecorderIdentity("aloha", "ALOHA", "aloha", "torch", "/ckpt", "abc123", "default instruction")
PROTOCOL = Protocol.model_validate(
    {"name": "p", "instruction": "protocol instruction", "trials_per_condition": 1,
     "factors": [{"name": "lighting", "levels": ["bright", "dim"]}]}
)


def _session(root: Path, protocol: Protocol | None = PROTOCOL, **settings) -> TrialSession:
    return TrialSession(
        TrialStore(root), IDENTITY, protocol, lambda path: RosbagsBagWriter(path, TYPESTORE), SessionSettings(**settings)
    )


def test_aborted_and_incomplete_trials_do_not_use_up_a_condition(tmp_path: Path) -> None:
    session = _session(tmp_path)
    first = session.start(1 * S)
    assert first.condition == {"lighting": "bright"} and first.instruction == "protocol instruction"
    session.stop("aborted", 2 * S)
    assert session.start(3 * S).condition == {"lighting": "bright"}
    session.close(4 * S)
    assert session.start(5 * S).condition == {"lighting": "bright"}
    session.stop("failure", 6 * S)
    assert session.upcoming().condition == {"lighting": "dim"}
    assert session.start(7 * S, condition={"lighting": "bright"}).condition == {"lighting": "bright"}
    session.stop("success", 8 * S)
    assert session.upcoming().condition == {"lighting": "dim"}, "a hand-set extra trial fills no other slot"
    session.start(9 * S)
    session.stop("success", 10 * S)
    assert session.upcoming() is None
    with pytest.raises(TrialError, match="complete"):
        session.start(11 * S)
    outcomes = [r.outcome for r in session.store.records()]
    assert outcomes == ["aborted", "incomplete", "failure", "success", "success"]


def test_session_refuses_what_the_state_does_not_allow(tmp_path: Path) -> None:
    session = _session(tmp_path)
    with pytest.raises(TrialError, match="no trial"):
        session.stop("success", S)
    with pytest.raises(InvalidArgumentError, match="no level 'dark'"):
        session.start(S, condition={"lighting": "dark"})
    session.start(S)
    with pytest.raises(TrialError, match="still recording"):
        session.start(2 * S)
    session.stop("success", 3 * S)
    assert [r.outcome for r in session.store.records()] == ["success"], "a refused start leaves no trial behind"


def test_interventions_are_changes_into_teleop_during_a_trial(tmp_path: Path) -> None:
    session = _session(tmp_path, protocol=None)
    session.on_mode("teleop", 0)  # before the trial: not an intervention
    session.start(10 * S)
    for mode, at in [("teleop", 11), ("policy", 12), ("teleop", 13), ("teleop", 14), ("hold", 15), ("teleop", 16)]:
        session.on_mode(mode, at * S)
    record = session.stop("success", 20 * S)
    assert [(i.at_s, i.from_mode) for i in record.interventions] == [(3.0, "policy"), (6.0, "hold")]
    assert record.condition == {} and record.protocol is None and record.instruction == "default instruction"


def test_instruction_in_effect_and_its_changes_are_recorded(tmp_path: Path) -> None:
    session = _session(tmp_path)
    session.on_instruction("stack the cups", 0)
    session.start(10 * S)
    session.on_instruction("stack the cups", 11 * S)
    session.on_instruction("unstack the cups", 12 * S)
    record = session.stop("failure", 13 * S)
    assert record.instruction == "stack the cups"
    assert record.notes == ["instruction changed at 2.00 s to 'unstack the cups'"]


def test_latched_messages_open_every_trial(tmp_path: Path) -> None:
    session = _session(tmp_path, protocol=None)
    session.offer("/qwen_vla/mode", STRING, S, _string("policy"), latched=True)
    session.offer("/a", STRING, S, _string("before"))
    session.start(2 * S)
    session.offer("/a", STRING, 3 * S, _string("during"))
    record = session.stop("success", 4 * S)
    assert _texts(session.store.bag_dir(record)) == ["policy", "during"]
    assert record.topics["/a"].messages == 1 and record.topics["/qwen_vla/mode"].messages == 1


def test_the_bag_spans_the_trial_not_the_age_of_latched_state(tmp_path: Path) -> None:
    """The mode was latched 27 s before a 20 s trial: read back with rosbags, every message and
    the bag's own time span lie within the trial (it once claimed 47 s)."""
    session = _session(tmp_path, protocol=None)
    session.offer("/qwen_vla/mode", STRING, 3 * S, _string("policy"), latched=True)
    start_ns, stop_ns = 30 * S, 50 * S
    session.start(start_ns)
    for k in range(1, 20):
        session.offer("/a", STRING, start_ns + k * S, _string(f"tick {k}"))
    record = session.stop("success", stop_ns)
    with AnyReader([session.store.bag_dir(record)], default_typestore=TYPESTORE) as reader:
        stamps = [timestamp for _, timestamp, _ in reader.messages()]
        assert reader.start_time >= start_ns and reader.end_time <= stop_ns + 1
        assert (reader.end_time - reader.start_time) / S <= record.duration_s
    assert len(stamps) == 20 and min(stamps) == start_ns


def test_auto_label_and_timeout(tmp_path: Path) -> None:
    session = _session(tmp_path, protocol=None, auto_label_success=True, trial_timeout_s=5.0)
    session.start(S)
    assert session.on_sim_success(False, 2 * S) is None and session.check_timeout(5 * S) is None
    assert session.on_sim_success(True, 3 * S).outcome == "success"
    session.start(10 * S)
    timed_out = session.check_timeout(15 * S)
    assert timed_out.outcome == "failure" and timed_out.notes == ["timed out after 5 s"]
    assert session.on_sim_success(True, 16 * S) is None, "nothing to label between trials"


def test_queue_overflow_is_recorded_as_drops(tmp_path: Path) -> None:
    session = _session(tmp_path, protocol=None, queue_bytes=1000, flush_period_s=10.0)
    session.start(S)
    payload = _string("x" * 400)
    for i in range(50):  # faster than any disk: the writer thread cannot keep a 1000-byte queue empty
        session.offer("/a", STRING, S + i, payload)
    record = session.stop("success", 2 * S)
    counts = record.topics["/a"]
    assert counts.messages + counts.dropped == 50 and counts.dropped > 0
    assert len(_texts(session.store.bag_dir(record))) == counts.messages


def test_a_bag_that_cannot_open_leaves_an_incomplete_trial(tmp_path: Path) -> None:
    def broken_writer(path: Path):
        raise PermissionError(f"{path}: read-only file system")

    session = TrialSession(TrialStore(tmp_path), IDENTITY, None, broken_writer)
    with pytest.raises(TrialError, match="read-only"):
        session.start(S)
    (record,) = session.store.records()
    assert record.outcome == "incomplete" and "read-only" in record.notes[0]


def test_an_output_directory_records_one_protocol(tmp_path: Path) -> None:
    _session(tmp_path)
    assert _session(tmp_path, protocol=None).protocol == PROTOCOL, "the stored protocol is resumed"
    other = PROTOCOL.model_copy(update={"name": "other"})
    with pytest.raises(ConfigError, match="already records protocol 'p'"):
        _session(tmp_path, protocol=other)


def test_recovery_marks_unfinished_trials_incomplete(tmp_path: Path) -> None:
    """The crashed writer is stood in for by a copy of a flushed, unclosed bag (the DDS test
    kills a real recorder process)."""
    session = _session(tmp_path, protocol=None)
    record = session.start(S)
    live = tmp_path / "live"
    _flushed_batches(live, [["a", "b", "c"]])
    session.stop("success", 2 * S)
    bag = session.store.bag_dir(record)
    shutil.rmtree(bag)
    bag.mkdir()
    shutil.copy(live / "live.mcap", bag / "bag.mcap")
    record.outcome = record.end_ns = record.end_time = record.duration_s = None
    session.store.save(record)

    (recovered,) = _session(tmp_path, protocol=None).recover()
    assert recovered.outcome == "incomplete" and recovered.topics["/a"].messages == 3
    assert recovered.end_ns == S + 2, "the trial ends with its last recorded message"
    index = yaml.safe_load((tmp_path / "index.yaml").read_text())
    assert index["trials"][0]["outcome"] == "incomplete"


def test_recovery_never_touches_what_a_trial_file_points_outside_its_directory(tmp_path: Path) -> None:
    """The trial recorder's start-up recovery (TrialSession.recover, what the node calls; the
    node itself is run in test_trial_recorder.py) with trial files edited to lead elsewhere."""
    victim = make_victim(tmp_path / "victim")
    variants = plant_hostile_trials(tmp_path / "out", victim)
    before = tree(victim)
    session = _session(tmp_path / "out", protocol=None)
    recovered = session.recover()
    assert tree(victim) == before, "nothing outside the trial directories was moved or deleted"
    assert [r.id for r in recovered] == ["trial_0001"], "the sound interrupted trial is still recovered"
    damaged = {d.path.name: d.reason for d in session.store.damaged()}
    assert sorted(damaged) == sorted(t for t, v in variants.items() if v != "sound")
    for trial_id, reason in damaged.items():
        assert "outside" in reason or "is not the name of its directory" in reason, (variants[trial_id], reason)
    index = yaml.safe_load((tmp_path / "out" / "index.yaml").read_text())
    assert [t["id"] for t in index["trials"]] == ["trial_0001"]
    assert session.start(S).id == "trial_0100", "a new trial never reuses a damaged trial's directory"


def test_trials_recover_cli_reports_damaged_trials_and_leaves_them_alone(tmp_path: Path, capsys) -> None:
    from qwen_vla_ros.cli import main as cli_main

    victim = make_victim(tmp_path / "victim")
    variants = plant_hostile_trials(tmp_path / "out", victim)
    before = tree(victim)
    assert cli_main(["trials", "recover", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert tree(victim) == before
    assert "trial_0001: incomplete" in out and "1 interrupted trials recovered" in out
    for trial_id, variant in variants.items():
        assert (f"{trial_id}: damaged, left alone" in err) == (variant != "sound"), (variant, err)
    assert "Traceback" not in err


def test_writer_choice_and_settings_are_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="must be one of"):
        bag_writer_factory("sqlite")
    if rosbag2_py_available():  # a robot computer: auto means the distribution's writer
        assert bag_writer_factory("auto") is bag_writer_factory("rosbag2_py") is Rosbag2PyBagWriter
    else:
        with pytest.raises(InvalidArgumentError, match="rosbag2_py is not importable"):
            bag_writer_factory("rosbag2_py")
        writer = bag_writer_factory("auto", fsync=False)(tmp_path / "bag")
        assert writer.name == "rosbags"
        writer.close()
    with pytest.raises(InvalidArgumentError, match="queue size"):
        SessionSettings(queue_bytes=0)
    with pytest.raises(InvalidArgumentError, match="flush period"):
        SessionSettings(flush_period_s=0)
    with pytest.raises(InvalidArgumentError, match="trial timeout"):
        SessionSettings(trial_timeout_s=-1)
