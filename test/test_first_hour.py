"""What a new user meets in the first hour: the command line's help, version and errors, the
demo's closing lines, per-run node logs, and bootstrap's progress. No ROS needed."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from qwen_vla_ros import __version__
from qwen_vla_ros.bringup.cli import resolve_checkpoint
from qwen_vla_ros.bringup.demo import RANDOM_SIZE, Summary
from qwen_vla_ros.bringup.runner import run_log_dir
from qwen_vla_ros.cli import build_parser, main
from qwen_vla_ros.recording.session import RecorderIdentity, TrialSession
from qwen_vla_ros.recording.trial import TrialStore

ROOT = Path(__file__).resolve().parents[1]


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.Action]]:
    actions = []
    for action in parser._actions:  # argparse has no public accessor for a parser's arguments
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                actions += _walk(sub, (*path, name))
        else:
            actions.append((path, action))
    return actions


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"qwen-vla-ros {__version__}"


def test_every_option_of_every_command_has_help_text() -> None:
    parser = build_parser()
    missing = [f"{' '.join(path) or '(top)'} {'/'.join(a.option_strings) or a.dest}"
               for path, a in _walk(parser) if not a.help]
    assert not missing, f"options without help: {missing}"
    assert "robots" in parser.description and "demo" in parser.description


def test_demo_help_does_not_speak_of_a_checkpoint_it_does_not_have(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "this checkpoint" not in capsys.readouterr().out.lower()


def _up_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", "aloha", *argv])


def test_up_sim_without_a_checkpoint_uses_the_demos_cached_one(tmp_path, monkeypatch, tiny_checkpoint) -> None:
    """Where no reference checkpoint is shipped (here: a path that does not exist)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("qwen_vla_ros.bringup.cli.reference_checkpoint_dir", lambda: tmp_path / "no_reference")
    cached = tmp_path / "qwen_vla_ros" / "checkpoints" / RANDOM_SIZE
    cached.parent.mkdir(parents=True)
    cached.symlink_to(tiny_checkpoint, target_is_directory=True)
    said: list[str] = []
    assert resolve_checkpoint(_up_args("--sim"), say=said.append) == str(cached)
    assert str(cached) in said[0]
    monkeypatch.setattr("qwen_vla_ros.bringup.cli.reference_checkpoint_dir", lambda: tiny_checkpoint)
    assert resolve_checkpoint(_up_args("--sim"), say=said.append) == str(tiny_checkpoint), "a shipped one comes first"
    assert resolve_checkpoint(_up_args("--sim", "--checkpoint", "/given")) == "/given"


def test_up_without_any_checkpoint_names_the_flag_and_the_path(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("qwen_vla_ros.bringup.cli.reference_checkpoint_dir", lambda: tmp_path / "no_reference")
    assert main(["up", "aloha", "--sim"]) == 2
    error = capsys.readouterr().err
    assert "--checkpoint DIR" in error and str(tmp_path / "qwen_vla_ros" / "checkpoints" / RANDOM_SIZE) in error
    assert "qwen-vla-ros demo" in error and "Traceback" not in error
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text((ROOT / "config" / "runtime.yaml").read_text().replace("checkpoint: null", "checkpoint: /lab/ckpt"))
    assert resolve_checkpoint(_up_args("--runtime-config", str(runtime))) == ""  # the nodes read it from there


def test_demo_closing_lines_say_what_to_run_next(tmp_path) -> None:
    trial = tmp_path / "out" / "trials" / "trial_0001"
    summary = Summary(ok=True, checkpoint="/cache/small", random_weights=True, trial_id="trial_0001",
                      trial_yaml=str(trial / "trial.yaml"), bag=str(trial / "bag"), logs=str(tmp_path / "logs" / "run"))
    text = summary.text()
    assert f"qwen-vla-ros trials view {trial}" in text
    assert f"qwen-vla-ros trials report {tmp_path / 'out'}" in text
    assert "qwen-vla-ros up aloha --sim --checkpoint /cache/small" in text and str(trial / "bag") in text
    assert text.index("next:") > text.index("demo finished")


def test_each_run_gets_its_own_log_folder_named_in_its_trials(tmp_path) -> None:
    first, second = run_log_dir(tmp_path / "logs", now=0.0), run_log_dir(tmp_path / "logs", now=0.0)
    assert first != second and first.is_dir() and second.is_dir()
    identity = RecorderIdentity("aloha", "ALOHA", "aloha", "torch", logs=str(second))
    pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")
    from qwen_vla_ros.recording.bag import RosbagsBagWriter, typestore_for_distro

    store = TrialStore(tmp_path / "trials")
    session = TrialSession(store, identity, None, lambda path: RosbagsBagWriter(path, typestore_for_distro("humble")))
    session.start(1_000_000_000)
    record = session.stop("success", 2_000_000_000)
    assert record.logs == str(second) and store.records()[0].logs == str(second)


def test_bootstrap_shows_progress_and_tells_the_truth_about_torch() -> None:
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert not re.search(r"pip install[^\n]* -q\b", script), "pip -q hides minutes of work"
    assert [int(n) for n in re.findall(r'stage (\d) "', script)] == [1, 1, 2, 3, 4]
    assert "CPU build of torch" not in script and "QWEN_VLA_TORCH_INDEX" in script


def test_foxglove_layout_shows_the_aloha_topics_of_the_yaml() -> None:
    """Judged against config/aloha.yaml read as plain YAML: four camera panels on its camera
    topics, commands against each arm's joint states, the mode and the diagnostics."""
    import json

    import yaml

    aloha = yaml.safe_load((ROOT / "config" / "aloha.yaml").read_text())
    layout = json.loads((ROOT / "config" / "foxglove_aloha.json").read_text())
    panels = layout["configById"]
    images = sorted(c["imageMode"]["imageTopic"] for key, c in panels.items() if key.startswith("Image!"))
    assert images == sorted(camera["topic"] for camera in aloha["cameras"])
    plotted = {p["value"].split(".")[0] for key, c in panels.items() if key.startswith("Plot!") for p in c["paths"]}
    assert plotted == {"/qwen_vla/controller/command"} | {arm["joint_state_topic"] for arm in aloha["arms"]}
    channels = [c["name"] for c in aloha["action"]["channels"]]
    for key, config in panels.items():
        if key.startswith("Plot!"):
            for path in config["paths"]:
                index = int(path["value"].rsplit("[", 1)[1].rstrip("]"))
                joint = path["label"].split(" ", 1)[1]
                if path["value"].startswith("/qwen_vla/controller/command"):
                    assert channels[index] == joint, path
    assert any(c.get("topicToRender") == "/diagnostics" for c in panels.values())
    assert any(p["value"] == "/qwen_vla/mode.data" for c in panels.values() for p in c.get("paths", []) if "mode" in p["value"])

    def placed(node: object) -> set[str]:
        return {node} if isinstance(node, str) else placed(node["first"]) | placed(node["second"])

    assert placed(layout["layout"]) == set(panels), "every panel is placed once in the layout"
