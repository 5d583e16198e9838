"""Trial directories a person has edited into pointing elsewhere, for the recovery tests.

Each hostile trial is an interrupted one (no outcome), the kind recovery repairs, and each
names a path that leads out of its own trial directory into a victim directory: recovery
must report it damaged and leave both alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from qwen_vla_ros.recording.trial import TrialStore, iso_time

START_NS = 1_000_000_000
FIELDS = {"embodiment": "aloha", "robot": "ALOHA", "config": "aloha", "backend": "torch",
          "start_time": iso_time(START_NS), "start_ns": START_NS}


def make_victim(path: Path) -> Path:
    """A directory that is not a trial's own: a bag-like folder without an MCAP file, which
    the old repair removed outright, and a file that must survive."""
    (path / "bag").mkdir(parents=True)
    (path / "bag" / "notes.txt").write_text("not a recording\n")
    (path / "precious.txt").write_text("keep me\n")
    return path


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (links not followed) with its text: a before/after snapshot."""
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def plant_hostile_trials(output_dir: Path, victim: Path) -> dict[str, str]:
    """Interrupted trials in ``output_dir`` leading into ``victim``; returns trial id -> variant.

    Variants: ``bag`` an absolute path, ``bag`` climbing out with '..', ``bag`` a symlink
    inside the trial directory, an ``id`` naming another directory, and a trial directory
    that is itself a symlink. One sound interrupted trial (its bag never opened) comes first,
    so recovery is seen still doing its job beside the damaged ones.
    """
    store = TrialStore(output_dir)
    sound = store.create(FIELDS)
    variants = {sound.id: "sound"}
    for variant in ("absolute", "dotdot", "bag symlink", "id elsewhere"):
        record = store.create(FIELDS)
        trial_dir = store.trial_dir(record.id)
        if variant == "absolute":
            record.bag = str(victim / "bag")
        elif variant == "dotdot":
            record.bag = os.path.relpath(victim / "bag", trial_dir)
        elif variant == "bag symlink":
            (trial_dir / "bag").symlink_to(victim / "bag", target_is_directory=True)
        else:
            record.id = os.path.relpath(victim, trial_dir.parent)
        (trial_dir / TrialStore.RECORD).write_text(yaml.safe_dump(record.model_dump(mode="json")))
        variants[trial_dir.name] = variant
    linked = output_dir / TrialStore.TRIALS / "trial_0099"
    linked_target = victim / "linked_trial"
    (linked_target / "bag").mkdir(parents=True)
    (linked_target / "bag" / "notes.txt").write_text("not a recording either\n")
    (linked_target / TrialStore.RECORD).write_text(
        yaml.safe_dump({"id": linked.name, "index": 99, **FIELDS})
    )
    linked.symlink_to(linked_target, target_is_directory=True)
    variants[linked.name] = "trial directory symlink"
    return variants
