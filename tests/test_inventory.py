"""``list`` and ``show``: the registry as tables and JSON, through cli.main."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xen_channel_backend.cli import main
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.registry import RUNNING, ChannelRecord, DomainRecord, Registry

UUID_A = "11111111-2222-3333-4444-555555555555"
UUID_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CONFIG_SOCKET = f"/run/xen-channel/{UUID_A}/org.example.config.0"


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
        # The record names a socket path, not the run directory it is kept in
        # (pytest's tmp_path is too long to hold a socket itself).
        ChannelRecord(Channel("org.example.config.0", Connection.SOCKET, CONFIG_SOCKET,
                              target=Target.XEN), created_dir=True),
        ChannelRecord(Channel("org.example.debug.0", Connection.PTY, "/dev/pts/7",
                              target=Target.XEN)),
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
             "path": CONFIG_SOCKET, "target": "xen"},
            {"name": "org.example.debug.0", "connection": "pty", "path": "/dev/pts/7",
             "target": "xen"},
        ],
    }


def test_json_channels_are_the_models_form_without_created_dir(rundir: str) -> None:
    """One channel record: list/show --json print Channel.to_dict(), not the registry's extra."""
    record = Registry(rundir).get(UUID_A)
    assert record is not None
    code, out, _err = run("show", "--rundir", rundir, "--json", UUID_A)
    assert code == 0
    assert json.loads(out)["channels"] == [c.channel.to_dict() for c in record.channels]
    assert "created_dir" not in out


def test_list_table_escapes_hostile_names(rundir: str) -> None:
    code, out, _err = run("list", "--rundir", rundir)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"]
    assert "\x1b" not in out and "'db\\x1b[31m01'" in lines[1]
    assert lines[2].split() == [
        "web01", UUID_A, "libxl", "running", "org.example.config.0,org.example.debug.0",
    ]


# ESC sequences (colour, an OSC 52 clipboard write), a C1 CSI, a bidi override and
# a Unicode line separator.  Paths may hold only the last three (the model
# refuses C0 controls in a path).
HOSTILE = "x\x1b[31mred\x1b]52;c;SGVsbG8=\x07b\u202ec\u2028d\x9be"
HOSTILE_PATH = "/run/xen-channel/p\u202eq\u2028r\x9bs"
RAW = ("\x1b", "\x07", "\u202e", "\u2028", "\x9b")


def test_tables_escape_hostile_drivers_and_paths(tmp_path: Path, rundir: str) -> None:
    """Every cell read from a registry file goes through errors.shown: the driver
    and state too, not only names, and the columns stay aligned."""
    Registry(rundir).put(DomainRecord(UUID_B, "evil", HOSTILE, "running", (
        ChannelRecord(Channel("org.example.a.0", Connection.SOCKET, HOSTILE_PATH)),)))
    code, out, _err = run("list", "--rundir", rundir)
    assert code == 0 and not any(c in out for c in RAW)
    header, evil, web = out.splitlines()
    assert evil.split()[:2] == ["evil", UUID_B]
    assert "'x\\x1b[31mred\\x1b]52;c;SGVsbG8=\\x07b\\u202ec\\u2028d\\x9be'" in evil
    assert header.index("STATE") == evil.index("running") == web.index("running")
    code, out, _err = run("show", "--rundir", rundir, "evil")
    assert code == 0 and not any(c in out for c in RAW)
    assert "Driver: 'x\\x1b[31m" in out
    assert out.splitlines()[-1].split()[-1] == "'/run/xen-channel/p\\u202eq\\u2028r\\x9bs'"


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
        ["org.example.config.0", "socket", "xen", CONFIG_SOCKET],
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


# --- list/show --connect: many hosts through libvirt ----------------------------------------
#
# Each host is a real libvirt connection: the test driver on a node XML file
# (tests/host_fixtures.py), a qemu+unix URI whose socket does not exist (down),
# and a socket that never answers (hung).

UUID_1 = "10000000-0000-4000-8000-000000000001"
UUID_2 = "10000000-0000-4000-8000-000000000002"
UUID_3 = "10000000-0000-4000-8000-000000000003"
UUID_4 = "10000000-0000-4000-8000-000000000004"
RUN_A, RUN_B = "/run/xen-channel", "/srv/run/xcb"


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two test-driver hosts: A runs vm1 and has vm2 shut off; B runs vm3 and an unmanaged one."""
    from host_fixtures import NodeDomain, agent_channels, write_host

    monkeypatch.delenv("XEN_CHANNEL_RUNDIR", raising=False)
    host_a = write_host(str(tmp_path), "host-a", [
        NodeDomain("vm1", UUID_1, channels=agent_channels(RUN_A, UUID_1)),
        NodeDomain("vm2", UUID_2, running=False, channels=agent_channels(RUN_A, UUID_2)),
    ])
    host_b = write_host(str(tmp_path), "host-b", [
        NodeDomain("vm3", UUID_3, channels=agent_channels(RUN_B, UUID_3)[:1]),
        NodeDomain("unmanaged", UUID_4, channels=None),
    ])
    return host_a, host_b


def channel_json(rundir: str, uuid: str) -> list[dict[str, object]]:
    return [
        {"name": "org.example.agent.0", "connection": "socket",
         "path": f"{rundir}/{uuid}/org.example.agent.0", "target": "xen"},
        {"name": "org.example.console.0", "connection": "pty", "path": None, "target": "xen"},
    ]


def test_list_connect_json_names_each_host(hosts: tuple[str, str]) -> None:
    host_a, host_b = hosts
    code, out, err = run("list", "--connect", host_a, "-c", host_b, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {"host": host_a, "domain": "vm1", "uuid": UUID_1, "driver": "test", "state": "running",
         "persistent": True, "channels": channel_json(RUN_A, UUID_1)},
        {"host": host_a, "domain": "vm2", "uuid": UUID_2, "driver": "test", "state": "stopped",
         "persistent": True, "channels": channel_json(RUN_A, UUID_2)},
        {"host": host_b, "domain": "vm3", "uuid": UUID_3, "driver": "test", "state": "running",
         "persistent": True, "channels": channel_json(RUN_B, UUID_3)[:1]},
    ]


def test_list_connect_table_has_a_host_column(hosts: tuple[str, str]) -> None:
    host_a, host_b = hosts
    code, out, err = run("list", "-c", host_b, "-c", host_a)
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["HOST", "DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"],
        [host_b, "vm3", UUID_3, "test", "running", "org.example.agent.0"],
        [host_a, "vm1", UUID_1, "test", "running", "org.example.agent.0,org.example.console.0"],
        [host_a, "vm2", UUID_2, "test", "stopped", "org.example.agent.0,org.example.console.0"],
    ]


def test_a_host_that_is_down_gets_one_line_and_the_others_are_listed(
    hosts: tuple[str, str], tmp_path: Path
) -> None:
    from host_fixtures import DOWN_URI

    host_a, host_b = hosts
    missing = f"test://{tmp_path}/no-such-node.xml"
    code, out, err = run("list", "-c", host_a, "-c", DOWN_URI, "-c", missing, "-c", host_b,
                         "--json")
    assert code == 1
    assert [(d["host"], d["domain"]) for d in json.loads(out)] == [
        (host_a, "vm1"), (host_a, "vm2"), (host_b, "vm3")]
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"xen-channel: error: libvirt at {DOWN_URI!r}: cannot connect")
    assert lines[1].startswith(f"xen-channel: error: libvirt at {missing!r}: ")


def test_a_host_that_never_answers_times_out_and_the_others_are_listed(
    hosts: tuple[str, str], tmp_path: Path
) -> None:
    from host_fixtures import hung_host

    host_a, _host_b = hosts
    with hung_host(str(tmp_path)) as hung:
        code, out, err = run("list", "-c", hung, "-c", host_a, "--timeout", "0.5")
    assert code == 1
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["vm1", "vm2"]
    assert err == f"xen-channel: error: libvirt at {hung!r}: no answer within 0.5 s\n"


def test_invalid_metadata_is_one_line_and_the_rest_of_its_host_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from host_fixtures import NodeDomain, agent_channels, write_host

    bad = ('<xcb:channels xmlns:xcb="urn:xen-channel-backend:channels:1">'
           '<xcb:channel name="org.example.x" connection="tcp" target="xen"/></xcb:channels>')
    host = write_host(str(tmp_path), "mixed", [
        NodeDomain("good", UUID_1, channels=agent_channels(RUN_A, UUID_1)),
        NodeDomain("edited", UUID_2, raw_metadata=bad),
    ])
    code, out, err = run("list", "-c", host, "--json")
    assert code == 1
    assert [d["domain"] for d in json.loads(out)] == ["good"]
    assert err.count("\n") == 1
    assert "domain 'edited'" in err and "connection 'tcp'" in err and host in err


def test_hostile_domain_names_are_escaped_in_the_table(tmp_path: Path) -> None:
    from host_fixtures import NodeDomain, agent_channels, write_host

    name = "evil\u202ename\u2028forged"
    host = write_host(str(tmp_path), "hostile", [
        NodeDomain(name, UUID_1, channels=agent_channels(RUN_A, UUID_1))])
    code, out, _err = run("list", "-c", host)
    assert code == 0
    assert "\u202e" not in out and "\u2028" not in out
    assert "'evil\\u202ename\\u2028forged'" in out


def test_hosts_file(hosts: tuple[str, str], tmp_path: Path) -> None:
    from host_fixtures import DOWN_URI

    host_a, host_b = hosts
    listing = tmp_path / "fleet.hosts"
    listing.write_text(
        f"# the fleet\n\n{host_a}\n   {host_b}   # rack 2\n{host_a}\n#{DOWN_URI}\n")
    code, out, err = run("list", "--hosts", str(listing), "--json")
    assert (code, err) == (0, "")
    assert [(d["host"], d["domain"]) for d in json.loads(out)] == [
        (host_a, "vm1"), (host_a, "vm2"), (host_b, "vm3")]
    # --connect and --hosts add up; a URI named twice is read once.
    code, out, _err = run("list", "--hosts", str(listing), "-c", host_b, "-c", DOWN_URI)
    assert code == 1 and [line.split()[0] for line in out.splitlines()[1:]] == [
        host_b, host_a, host_a]


@pytest.mark.parametrize("text, message", [
    ("test:///a.xml test:///b.xml\n", ":1: expected one URI, found 'test:///a.xml test:///b.xml'"),
    ("# only comments\n\n", ": names no libvirt URI"),
    (b"\xff\xfe\n", ": is not UTF-8 text"),
])
def test_a_bad_hosts_file_is_one_line_exit_1(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    listing = tmp_path / "bad.hosts"
    if isinstance(text, bytes):
        listing.write_bytes(text)
    else:
        listing.write_text(text)
    code, out, err = run("list", "--hosts", str(listing))
    assert (code, out) == (1, "")
    assert err == f"xen-channel: error: {listing}{message}\n"
    code, _out, err = run("list", "--hosts", str(tmp_path / "absent.hosts"))
    assert code == 1 and err.startswith(f"xen-channel: error: {tmp_path}/absent.hosts: cannot read")


def test_connect_with_rundir_or_a_bad_timeout_is_a_usage_error(hosts: tuple[str, str]) -> None:
    code, _out, err = run("list", "-c", hosts[0], "--rundir", "/run/xen-channel")
    assert code == 2 and "cannot be combined with --connect" in err
    code, _out, err = run("list", "-c", hosts[0], "--timeout", "0")
    assert code == 2 and "--timeout must be a positive number" in err


def test_show_connect(hosts: tuple[str, str]) -> None:
    host_a, _host_b = hosts
    code, out, err = run("show", "vm2", "--connect", host_a, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "host": host_a, "domain": "vm2", "uuid": UUID_2, "driver": "test", "state": "stopped",
        "persistent": True, "channels": channel_json(RUN_A, UUID_2)}
    code, out, err = run("show", UUID_1.upper(), "-c", host_a)
    assert (code, err) == (0, "")
    assert out.startswith(f"Host:   {host_a}\nDomain: vm1\nUUID:   {UUID_1}\nDriver: test\n"
                          "State:  running\n\n")
    assert out.splitlines()[7].split() == [
        "org.example.agent.0", "socket", "xen", f"{RUN_A}/{UUID_1}/org.example.agent.0"]


def test_show_connect_errors_are_one_line(hosts: tuple[str, str]) -> None:
    from host_fixtures import DOWN_URI

    host_a, host_b = hosts
    code, out, err = run("show", "vm3", "-c", host_a)
    assert (code, out) == (1, "")
    assert err == f"xen-channel: error: libvirt at {host_a!r} has no domain 'vm3'\n"
    code, out, err = run("show", "vm3", "-c", DOWN_URI)
    assert code == 1 and err.count("\n") == 1 and DOWN_URI in err
    # A domain without our metadata has no managed channels.
    code, out, err = run("show", "unmanaged", "-c", host_b, "--json")
    assert code == 0 and json.loads(out)["channels"] == []
