"""The CLI's one rule for errors: input it judged bad (a QwenVlaError) exits 2 with the message,
and anything else, a bug, ends in its traceback instead of passing for bad input."""
from __future__ import annotations

import argparse

import pytest

from qwen_vla_ros import cli
from qwen_vla_ros.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["collect", "--episodes", "0", "--output", "unused"], "--episodes must be >= 1"),
        (["eval", "--checkpoint", "unused", "--protocol", "unused", "--trials", "0"], "--trials must be >= 1"),
        (["eval", "--checkpoint", "unused", "--protocol", "unused", "--trials", "1", "--timeout", "0"],
         "--timeout must be > 0"),
        (["demo", "--random-weights", "--duration", "0"], "--duration must be > 0"),
    ],
)
def test_bringup_options_that_cannot_be_used_exit_2_naming_the_option(
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(InvalidArgumentError, match=words):
        args.handler(args)
    assert cli.main(argv) == 2
    assert words in capsys.readouterr().err


def test_a_bug_in_a_command_is_not_reported_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(_args: argparse.Namespace) -> int:
        raise ValueError("a bug, not the user's input")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["collect", "--episodes", "1", "--output", "unused"])
    monkeypatch.setattr(parser, "parse_args", lambda _argv=None: argparse.Namespace(**{**vars(args), "handler": buggy}))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["collect", "--episodes", "1", "--output", "unused"])
