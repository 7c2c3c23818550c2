"""``list`` and ``show``: the registry as tables and JSON, through cli.main."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xen_channel_backend.cli import main
from xen_channel_backend.model import Connection, Target
from xen_channel_backend.registry import RUNNING, ChannelRecord, DomainRecord, Registry

UUID_A = "11111111-2222-3333-4444-555555555555"
UUID_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run directory with two registered domains; the host's settings kept out."""
    config = tmp_path / "xen-channel.conf"
    config.write_text("")
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", str(config))
    monkeypatch.delenv("XEN_CHANNEL_RUNDIR", raising=False)
    run = str(tmp_path / "run")
    reg = Registry(run)
    reg.put(DomainRecord(UUID_A, "web01", "libxl", RUNNING, (
        ChannelRecord("org.example.config.0", Connection.SOCKET,
                      f"{run}/{UUID_A}/org.example.config.0", Target.XEN, created_dir=True),
        ChannelRecord("org.example.debug.0", Connection.PTY, "/dev/pts/7", Target.XEN),
    )))
    reg.put(DomainRecord(UUID_B, "db\x1b[31m01", "qemu", "preparing"))
    return run


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_list_json(rundir: str) -> None:
    code, out, err = run("list", "--rundir", rundir, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [d["domain"] for d in data] == ["db\x1b[31m01", "web01"]
    assert data[1] == {
        "domain": "web01", "uuid": UUID_A, "driver": "libxl", "state": "running",
        "channels": [
            {"name": "org.example.config.0", "connection": "socket",
             "path": f"{rundir}/{UUID_A}/org.example.config.0", "target": "xen"},
            {"name": "org.example.debug.0", "connection": "pty", "path": "/dev/pts/7",
             "target": "xen"},
        ],
    }


def test_list_table_escapes_hostile_names(rundir: str) -> None:
    code, out, _err = run("list", "--rundir", rundir)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"]
    assert "\x1b" not in out and "'db\\x1b[31m01'" in lines[1]
    assert lines[2].split() == [
        "web01", UUID_A, "libxl", "running", "org.example.config.0,org.example.debug.0",
    ]


def test_list_of_an_empty_or_missing_run_directory(tmp_path: Path, rundir: str) -> None:
    code, out, err = run("list", "--rundir", str(tmp_path / "nothing-here"), "--json")
    assert (code, out, err) == (0, "[]\n", "")
    code, out, _err = run("list", "--rundir", str(tmp_path / "nothing-here"))
    assert code == 0 and out.split() == ["DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"]


@pytest.mark.parametrize("key", ["web01", UUID_A, UUID_A.upper().replace("-", "")])
def test_show_by_name_or_uuid(rundir: str, key: str) -> None:
    code, out, err = run("show", "--rundir", rundir, "--json", key)
    assert (code, err) == (0, "")
    assert json.loads(out)["uuid"] == UUID_A


def test_show_table(rundir: str) -> None:
    code, out, _err = run("show", "--rundir", rundir, "web01")
    assert code == 0
    assert out.startswith(f"Domain: web01\nUUID:   {UUID_A}\nDriver: libxl\nState:  running\n\n")
    rows = [line.split() for line in out.splitlines()[5:]]
    assert rows == [
        ["CHANNEL", "CONNECTION", "TARGET", "PATH"],
        ["org.example.config.0", "socket", "xen", f"{rundir}/{UUID_A}/org.example.config.0"],
        ["org.example.debug.0", "pty", "xen", "/dev/pts/7"],
    ]


def test_show_unknown_domain_is_one_line_exit_1(rundir: str) -> None:
    code, out, err = run("show", "--rundir", rundir, "nope\nforged line")
    assert code == 1 and out == ""
    assert err == (
        "xen-channel: error: no registered domain 'nope\\nforged line' "
        "(is it running with the hooks installed?)\n"
    )


def test_corrupt_record_is_one_line(rundir: str) -> None:
    (Path(rundir) / "registry" / "domains" / f"{UUID_A}.json").write_text("{")
    code, _out, err = run("list", "--rundir", rundir)
    assert code == 1 and err.count("\n") == 1 and f"{UUID_A}.json" in err


def test_list_never_imports_lxml_or_libvirt(rundir: str) -> None:
    code = (
        "import sys; from xen_channel_backend.cli import main; "
        f"rc = main(['list', '--rundir', {rundir!r}]); "
        "assert 'lxml' not in sys.modules and 'libvirt' not in sys.modules, sorted(sys.modules); "
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
