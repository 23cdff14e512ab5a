"""Every option and positional of every `mamview` command says what it does in `--help`."""

from __future__ import annotations

import argparse

import pytest

from mamview.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the top level and every sub-command, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's arguments without a help text (hidden ones, help=SUPPRESS, are fine)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            # each command's one-line help in the command list
            helps = {a.dest: a.help for a in action._choices_actions}
            missing += [f"command {name}" for name in action.choices if not helps.get(name)]
            continue
        if not (action.help or "").strip():
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_every_command_and_argument_has_a_help_text():
    commands = list(_walk(build_parser()))
    assert len(commands) > 20  # the walk reached the sub-commands (bench, models …)
    missing = {" ".join(path) or "mamview": m for path, p in commands if (m := _undocumented(p))}
    assert missing == {}


def test_the_walk_notices_a_missing_help_text():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    s = sub.add_parser("x", help="does x")
    s.add_argument("--quiet", action="store_true", help="say less")
    assert _undocumented(s) == [] and _undocumented(p) == []
    s.add_argument("--loud", action="store_true")
    sub.add_parser("y")
    assert _undocumented(s) == ["--loud"] and _undocumented(p) == ["command y"]


@pytest.mark.parametrize("path", [path for path, _ in _walk(build_parser()) if path])
def test_help_of_every_command_prints(path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mamview " + " ".join(path))
