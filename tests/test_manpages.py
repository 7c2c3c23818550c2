"""The man pages and docs/cli.md agree with the parsers ``--help`` prints.

xen-channel(1) and xen-channel-guest(8) are generated from the argparse
parsers by scripts/manpages.py, xen-channel.conf(5) from etc/xen-channel.conf.
These tests render each page with the real man(1) and groff, warnings on,
and check that every subcommand and option of the parsers is in the pages
and in docs/cli.md, so a command added without documentation fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xen_channel_backend.cli import build_parser
from xen_channel_backend.guest.agent import build_parser as build_guest_parser
from xen_channel_backend.settings import _KEYS

TREE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TREE / "scripts"))

import manpages  # noqa: E402

CLI_MD = TREE / "docs" / "cli.md"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    outdir = tmp_path_factory.mktemp("man")
    written = manpages.write_pages(outdir)
    return {path.name: path for path in written}


def subcommands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for name, sub, _summary in manpages.subcommands(build_parser()):
        yield name, sub


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings
            if option not in ("-h", "--help")]


def rendered(page: Path) -> str:
    result = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                            env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""},
                            timeout=60, check=True)
    # Undo the overstrike bold/underline man uses when it thinks it is a terminal.
    return re.sub(".\b", "", result.stdout)


def require_man() -> None:
    if shutil.which("man") is None or shutil.which("groff") is None:
        pytest.skip("MAN PAGES NOT RENDERED: man-db and groff-base are not installed "
                    "(scripts/install-deps)")


@pytest.mark.parametrize("name", ["xen-channel.1", "xen-channel.conf.5", "xen-channel-guest.8"])
def test_pages_render_without_warnings(pages: dict[str, Path], name: str) -> None:
    require_man()
    result = subprocess.run(["man", "--warnings", "-l", str(pages[name])],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "MANWIDTH": "80"})
    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout) > 500


def test_xen_channel_page_has_every_subcommand_and_option(pages: dict[str, Path]) -> None:
    require_man()
    text = rendered(pages["xen-channel.1"])
    flat = " ".join(text.split())
    names = [name for name, _sub in subcommands()]
    assert len(names) >= 11
    for name, sub in subcommands():
        assert f"\n   {name}\n" in text, f"no section for {name}"
        section = flat[flat.index(f" xen-channel {name} [-h]"):]
        for option in option_strings(sub):
            assert option in section, f"{name} {option} missing from xen-channel(1)"
    assert "--version" in flat


def test_guest_page_has_every_option(pages: dict[str, Path]) -> None:
    require_man()
    flat = " ".join(rendered(pages["xen-channel-guest.8"]).split())
    for option in option_strings(build_guest_parser()):
        assert option in flat


def test_conf_page_has_every_setting(pages: dict[str, Path]) -> None:
    require_man()
    flat = " ".join(rendered(pages["xen-channel.conf.5"]).split())
    for key in _KEYS:
        assert f"{key} = " in flat


def cli_md_sections() -> dict[str, str]:
    """{command: the text documenting it} from docs/cli.md.

    A section may document several commands (``## shutdown, reboot``).  A
    group section (``## The guest-agent commands``) says what the sections
    after it share, so its text counts for each of them.
    """
    text = CLI_MD.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)\n", text, flags=re.M)
    sections: dict[str, str] = {}
    group = ""
    for header, body in zip(parts[1::2], parts[2::2], strict=True):
        if header.startswith("The "):
            group = body
            continue
        for name in header.split(", "):
            sections[name.strip()] = body + "\n" + group
    return sections


def documentation(name: str) -> str | None:
    return cli_md_sections().get(name)


def test_cli_md_documents_every_subcommand_and_option() -> None:
    missing = []
    for name, sub in [*subcommands(), ("xen-channel-guest", build_guest_parser())]:
        text = documentation(name)
        if text is None:
            missing.append(f"## {name}")
            continue
        missing += [f"{name} {option}" for option in option_strings(sub)
                    if not re.search(rf"`{re.escape(option)}\b", text)]
    assert missing == [], f"docs/cli.md does not document: {missing}"


def test_cli_md_names_no_command_that_does_not_exist() -> None:
    known = {name for name, _sub in subcommands()} | {"xen-channel-guest"}
    assert set(cli_md_sections()) - known == set()
