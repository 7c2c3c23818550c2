"""The dispatcher: usage errors, help, and turning expected errors into one line."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xen_channel_backend import cli
from xen_channel_backend.cli import build_parser, main


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_help_goes_to_stdout_and_exits_zero() -> None:
    code, out, err = run("--help")
    assert code == 0 and "convert" in out and "broker" in out and err == ""


def test_unknown_command_is_a_usage_error() -> None:
    code, out, err = run("frobnicate")
    assert code == 2 and out == ""
    assert err.startswith("xen-channel: error: ") and err.count("\n") == 1


def test_missing_required_option_is_a_usage_error() -> None:
    code, _out, err = run("convert", "x.xml")
    assert code == 2 and "--to" in err


def test_missing_input_file_is_one_line_naming_it(tmp_path: object) -> None:
    code, out, err = run("convert", "--to", "xl", "/nonexistent/dom.xml")
    assert code == 1 and out == ""
    assert err == "xen-channel: error: /nonexistent/dom.xml: no such file\n"


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xen_channel_backend", "--help"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0 and "usage: xen-channel" in result.stdout


def test_a_file_name_with_a_newline_cannot_split_the_error_line() -> None:
    code, _out, err = run("convert", "--to", "xl", "/nonexistent/a\nforged: line.xml")
    assert code == 1 and err.count("\n") == 1
    assert err == "xen-channel: error: '/nonexistent/a\\nforged: line.xml': no such file\n"


# --- start-up: only the command being run is built, and nothing it does not need ---------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_the_table_is_every_subcommand_in_order() -> None:
    assert [row[0] for row in cli.COMMANDS] == list(_subcommands())


def test_help_and_errors_are_those_of_the_whole_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() builds one subcommand's parser; what it prints is the full parser's, to the byte."""
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run("--help")
    assert (code, out, err) == (0, build_parser().format_help(), "")
    for name, sub in _subcommands().items():
        code, out, err = run(name, "--help")
        assert (code, out, err) == (0, sub.format_help(), ""), name
    code, out, err = run("frobnicate")
    names = ", ".join(repr(name) for name in _subcommands())
    assert err == ("xen-channel: error: argument COMMAND: invalid choice: 'frobnicate' "
                   f"(choose from {names}) (see 'xen-channel --help')\n")


@pytest.mark.parametrize("columns", [None, "120", "7", "0", "-3", "wide", " 90 "])
def test_help_width_is_shutils(columns: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli._terminal_columns() == shutil.get_terminal_size().columns


_LEAN = """
import sys
sys.path.insert(0, sys.argv[1])
from xen_channel_backend import cli
parser, commands = cli._top_parser()
parser.parse_args(["domfsinfo", "vm"])
print(sorted(commands._name_parser_map))
code = cli.main(["qemu-agent-command", "vm", '{"execute":"guest-ping"}', "--rundir", sys.argv[2]])
print(code, sorted(m for m in ("typing", "dataclasses", "inspect", "shutil") if m in sys.modules))
"""


def test_an_agent_command_builds_one_parser_and_imports_no_typing(tmp_path: Path) -> None:
    """What every run of qemu-agent-command pays for (docs/performance.md, Guest agent).

    In a fresh interpreter started as the benchmark starts one (-I -S):
    typing, dataclasses (and inspect with it) and shutil cost more than the
    command's own work, and the other nineteen parsers more than its one.
    """
    tree = str(Path(cli.__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _LEAN, tree, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.splitlines() == ["['domfsinfo']", "1 []"], done.stderr
    assert done.stderr == "xen-channel: error: no registered domain 'vm' (is it running with " \
                          "the hooks installed?)\n"
