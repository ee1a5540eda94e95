"""Every option of every verb explains itself: a help text, and its default when it has one."""
from __future__ import annotations

import argparse

from datacomp.cli import build_parser


def _options(parser: argparse.ArgumentParser, verb: str = "datacomp"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, name)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield verb, action


def test_every_option_has_help_with_its_default():
    missing, no_default = [], []
    options = list(_options(build_parser()))
    assert len({v for v, _ in options}) >= 14 and len(options) > 120  # the walk reaches every verb
    for verb, a in options:
        name = "/".join(a.option_strings) or a.dest
        if not a.help or a.help == argparse.SUPPRESS:
            missing.append(f"{verb} {name}")
        elif not (a.default is None or a.default is False or a.default == argparse.SUPPRESS) and "default" not in a.help:
            no_default.append(f"{verb} {name} (default {a.default!r})")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not give the default: {no_default}"


def test_help_renders_for_every_verb(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        text = sp.format_help()
        assert "%(default)" not in text and "usage:" in text, name
