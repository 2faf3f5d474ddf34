"""`dlserve.argparsing.add_command`: a command's help line and description
come from its run function's docstring."""

from __future__ import annotations

import argparse
from typing import Any

from dlserve.argparsing import OneLineParser, add_command
from dlserve.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def run_demo(args: argparse.Namespace) -> int:
    """do the demo thing, in
    two lines

    Do the demo thing: the first paragraph of this
    docstring is the help line, the rest the description.
    """
    return 7


def undocumented(args: argparse.Namespace) -> int:
    return 0


def test_the_docstring_gives_the_help_line_and_the_description() -> None:
    parser = OneLineParser(prog="demo")
    sub = parser.add_subparsers(dest="command")
    p = add_command(sub, "demo", run_demo, epilog="an epilog")
    p.add_argument("--flag")
    assert [a.help for a in sub._choices_actions] == ["do the demo thing, in\ntwo lines"]
    assert p.description == (
        "Do the demo thing: the first paragraph of this\n"
        "docstring is the help line, the rest the description."
    )
    assert p.epilog == "an epilog"
    args = parser.parse_args(["demo", "--flag", "x"])
    assert args.func(args) == 7 and args.flag == "x"
    listed = " ".join(parser.format_help().split())
    assert "demo do the demo thing, in two lines" in listed
    shown = " ".join(p.format_help().split())
    assert "Do the demo thing: the first paragraph of this docstring is the help line" in shown


def test_a_function_without_a_docstring_gives_none() -> None:
    sub = OneLineParser(prog="demo").add_subparsers()
    p = add_command(sub, "bare", undocumented)
    assert p.description is None and sub._choices_actions[0].help is None


def test_every_dlserve_command_has_a_help_line_and_a_description() -> None:
    sub = _subparsers(build_parser())
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == {"train", "experiment", "optimize", "serve", "predict", "bench", "tune"}
    for name, parser in sub.choices.items():
        assert helps[name] and parser.description, name
