"""``qwen-vla-ros trials``: report, view, export and recover a trial_recorder output directory."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_PARTIAL = 2


def _report(args: argparse.Namespace) -> int:
    from qwen_vla_ros.recording.report import build_report, plot, to_markdown
    from qwen_vla_ros.recording.trial import load_index
    from qwen_vla_ros.recording.viewer import write_report_page

    root = Path(args.dir).expanduser()
    out = Path(args.out).expanduser() if args.out else root
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(load_index(root))
    chart = out / "report.png"
    plot(report, chart)
    markdown = to_markdown(report, chart.name)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    pages = _trial_pages(root, out, args.views)
    page = write_report_page(out, markdown, chart, pages)
    print(f"wrote {out / 'report.md'}, {chart} and {page}")
    return 0


def _trial_pages(root: Path, out: Path, write_missing: bool) -> dict[str, str]:
    """trial id -> link to its view.html relative to ``out``; missing pages are written first."""
    import os

    from qwen_vla_ros.recording.trial import TrialStore
    from qwen_vla_ros.recording.viewer import PAGE, write_trial_page

    store = TrialStore(root)
    pages = {}
    for record in store.records():
        page = store.trial_dir(record.id) / PAGE
        if write_missing and not page.is_file():
            try:
                write_trial_page(page.parent)
            except Exception as exc:  # noqa: BLE001 - one unreadable bag (rosbags, numpy and opencv fail in types of
                # their own) must not sink the report of all trials; the error is named with its type
                print(f"{record.id}: no page: {type(exc).__name__}: {exc}", file=sys.stderr)
        if page.is_file():
            pages[record.id] = os.path.relpath(page, out)
    return pages


def _view(args: argparse.Namespace) -> int:
    from qwen_vla_ros.recording.viewer import write_trial_page

    for trial in args.trial_dirs:
        print(f"wrote {write_trial_page(Path(trial))}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from qwen_vla_ros.recording.export import export_trials

    root = Path(args.dir).expanduser()
    out = Path(args.out).expanduser() if args.out else root / "export" / args.format
    quality = None if args.no_compress else args.jpeg_quality
    result = export_trials(root, out, args.outcome, args.config, args.format, quality)
    for record, episode in result.episodes:
        shapes = ", ".join(f"{name} {shape}" for name, shape in episode.image_shapes.items())
        print(f"{record.id} ({record.outcome}) -> {episode.path.name}: {episode.steps} steps; {shapes}")
    for record, reason in result.failures:
        print(f"{record.id}: not exported: {reason}", file=sys.stderr)
    print(f"{len(result.episodes)} episodes in {out}")
    return EXIT_PARTIAL if result.failures else 0


def _recover(args: argparse.Namespace) -> int:
    from qwen_vla_ros.recording.session import recover_interrupted
    from qwen_vla_ros.recording.trial import TrialStore

    root = Path(args.dir).expanduser()
    if not (root / TrialStore.TRIALS).is_dir():
        raise FileNotFoundError(f"{root} holds no trials/ directory")
    store = TrialStore(root)
    recovered = recover_interrupted(store, store.bind_protocol(None))
    for record in recovered:
        print(f"{record.id}: incomplete; {record.notes[-1]}")
    print(f"{len(recovered)} interrupted trials recovered; index rewritten")
    damaged = store.damaged()
    for trial in damaged:
        print(f"{trial.path.name}: damaged, left alone: {trial.reason}", file=sys.stderr)
    return EXIT_PARTIAL if damaged else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("trials", help="report, view, export or recover recorded trials")
    commands = parser.add_subparsers(dest="trials_command", required=True)

    report = commands.add_parser("report", help="success rates with Wilson 95%% intervals: Markdown, PNG, table")
    report.add_argument("dir", help="trial_recorder output_dir (holds index.yaml)")
    report.add_argument("--out", help="where report.md, report.png and report.html go (default: DIR)")
    report.add_argument("--views", action=argparse.BooleanOptionalAction, default=True,
                        help="write each trial's view.html that does not exist yet, to link from report.html")
    report.set_defaults(handler=_report)

    view = commands.add_parser("view", help="one self-contained HTML page per trial: cameras, commands vs states, "
                               "latency, metadata (opens in a browser, no server)")
    view.add_argument("trial_dirs", nargs="+", metavar="TRIAL_DIR", help="trial folder (holds trial.yaml and bag/)")
    view.set_defaults(handler=_view)

    export = commands.add_parser("export", help="one training episode per trial")
    export.add_argument("dir", help="trial_recorder output_dir")
    export.add_argument("--format", choices=["aloha-hdf5", "lerobot"], required=True,
                        help="aloha-hdf5: one episode_<n>.hdf5 per trial; lerobot: one LeRobot v3.0 dataset")
    export.add_argument("--jpeg-quality", type=int, default=50,
                        help="aloha-hdf5 image JPEG quality, as the ALOHA recorder's compress option (50)")
    export.add_argument("--no-compress", action="store_true", help="aloha-hdf5: store raw (T, H, W, 3) images")
    export.add_argument("--out", help="output folder (default: DIR/export/FORMAT)")
    export.add_argument("--outcome", nargs="+", default=["success", "failure"],
                        choices=["success", "failure", "aborted", "incomplete"], help="trials to export")
    export.add_argument("--config", help="embodiment name or file (default: the one each trial recorded)")
    export.set_defaults(handler=_export)

    recover = commands.add_parser("recover", help="mark interrupted trials incomplete and repair their bags")
    recover.add_argument("dir", help="trial_recorder output_dir")
    recover.set_defaults(handler=_recover)
