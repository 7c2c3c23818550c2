"""The README's tour runs as written: a newcomer's first hour must not start with an error.

The fenced block under "## A short tour" is read from README.md itself.  Every
command in it must parse with the real parser (so a renamed option or a
missing example file is caught), and the commands that need no Xen host,
no running guest and no change to this machine are run, in order, in one
shell in a copy of the checkout's example files: ``--version``, ``convert``
(three ways), ``fill``, ``define`` (on libvirt's test driver, reached through
$LIBVIRT_DEFAULT_URI: the tour relies on libvirt's own default URI) and
``list``.  The rest (install-hooks, the reload, doctor, send) change or
inspect the host and are checked for shape only.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xen_channel_backend.cli import build_parser

TREE = Path(__file__).resolve().parent.parent
README = TREE / "README.md"
BIN = Path(sys.executable).parent
#: Subcommands the test runs for real; everything else is parsed only.
RUN = {"--version", "convert", "fill", "define", "list"}


def tour() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A short tour"):]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None, "no ```sh block in the README's tour"
    lines = []
    for line in block.group(1).splitlines():
        command = line.split(" #")[0].strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def test_the_tour_uses_reload_not_signals() -> None:
    commands = tour()
    assert not [c for c in commands if "kill" in c or "pidof" in c]
    assert "systemctl reload libvirtd" in commands


def test_every_tour_command_parses_and_its_files_exist() -> None:
    parser = build_parser()
    produced: set[str] = set()
    for command in tour():
        argv = shlex.split(command)
        if argv[0] != "xen-channel":
            continue
        if argv[1:] == ["--version"]:
            continue
        args = parser.parse_args(argv[1:])  # raises UsageError on a bad option
        for name in ("input", "into", "config"):
            value = getattr(args, name, None)
            if value and value != "-" and args.command != "install-hooks":
                assert (TREE / value).is_file() or value in produced, (
                    f"{command!r}: {value} is not shipped and nothing before it makes it")
        if getattr(args, "output", None):
            produced.add(args.output)


def test_the_runnable_part_of_the_tour_runs(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    shutil.copytree(TREE / "xml", tmp_path / "xml")
    script = ["set -e"]
    for command in tour():
        argv = shlex.split(command)
        if argv[0] == "xen-channel" and argv[1] in RUN:
            script.append(command)
    assert len(script) == 1 + 7, script
    env = {k: v for k, v in os.environ.items() if not k.startswith("XEN_CHANNEL")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        LIBVIRT_DEFAULT_URI="test:///default",
        # list reads a registry; a private one, not this host's.
        XEN_CHANNEL_RUNDIR=str(tmp_path / "run"),
        XEN_CHANNEL_CONFIG=str(tmp_path / "xen-channel.conf"),
    )
    (tmp_path / "xen-channel.conf").write_text("[xen-channel]\n")
    result = subprocess.run(["sh", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert "channel = [" in result.stdout
    assert (tmp_path / "guest.cfg").read_text().startswith("# web01")
    assert "<xcb:channels" in (tmp_path / "guest.xml").read_text()
    assert "Domain 'web01' (6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b) defined on test:///default" \
        in result.stdout
    assert result.stdout.rstrip().endswith("[]")  # list --json of an empty registry
