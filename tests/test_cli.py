"""The dispatcher: usage errors, help, and turning expected errors into one line."""

from __future__ import annotations

import io
import subprocess
import sys

from xen_channel_backend.cli import main


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
