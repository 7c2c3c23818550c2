"""``--help`` and ``--version``: every option says what it means and what its default is.

The checks walk the real parser, so a subcommand or option added later is
covered without touching this file.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import xen_channel_backend
from xen_channel_backend.cli import build_parser, main

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
#: Options every parser has, and the version flag: they explain themselves.
_SELF_EXPLAINED = {"-h", "--version"}


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield "xen-channel", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"xen-channel {name}", sub


def options() -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    for prog, parser in subparsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and not _SELF_EXPLAINED & set(action.option_strings):
                yield prog, parser, action


def formatted_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    text = formatter._expand_help(action) if action.help else ""
    return " ".join(text.split())


def test_every_option_has_a_meaning() -> None:
    missing = [f"{prog} {action.option_strings[-1]}" for prog, _parser, action in options()
               if not (action.help or "").strip()]
    assert missing == [], f"options without help text: {missing}"


def test_every_value_option_shows_its_default() -> None:
    """An option taking a value and not required must say what happens without it."""
    missing = []
    for prog, parser, action in options():
        if action.nargs == 0 or action.required:
            continue  # a flag is off unless given; a required option has no default
        if "default" not in formatted_help(parser, action).lower():
            missing.append(f"{prog} {action.option_strings[-1]}")
    assert missing == [], f"options whose --help shows no default: {missing}"


@pytest.mark.parametrize("option,expected", [
    ("send --timeout", "(default: 30)"),
    ("monitor --reconcile-interval", "(default: 60)"),
    ("broker --poll-interval", "(default: 1)"),
    ("install-hooks --hooks-dir", "(default: /etc/libvirt/hooks)"),
    ("doctor --hooks-dir", "(default: /etc/libvirt/hooks)"),
])
def test_the_options_the_issue_named(option: str, expected: str) -> None:
    command, flag = option.split()
    out = io.StringIO()
    assert main([command, "--help"], stdout=out) == 0
    text = " ".join(out.getvalue().split())
    # The option's own line: from the flag to the next option.
    entry = text[text.index(f" {flag} "):]
    entry = re.split(r" --?[a-z]", entry[len(flag) + 2:], maxsplit=1)[0]
    assert expected in entry and len(entry) > len(expected) + 10, entry


def test_version_is_the_package_version() -> None:
    out = io.StringIO()
    assert main(["--version"], stdout=out) == 0
    assert out.getvalue() == f"xen-channel {xen_channel_backend.__version__}\n"
    # One version: setup.cfg reads it from the package, it is not written twice.
    assert "version = attr: xen_channel_backend.__version__" in SETUP_CFG.read_text()


def test_version_from_the_installed_command() -> None:
    command = Path(sys.executable).parent / "xen-channel"
    result = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"xen-channel {xen_channel_backend.__version__}\n", "")
