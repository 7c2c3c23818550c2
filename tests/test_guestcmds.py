"""The virsh-style guest-agent commands: virsh's layouts, and the real qemu-ga behind them.

- Golden files under tests/data/golden/virsh/ are virsh 9.0's own output on
  libvirt's test driver (``virsh -c test:///default domifaddr test``...);
  our formatters must reproduce them byte for byte from the same data, and
  while virsh is installed the test also checks that virsh still prints
  exactly the golden.  guestinfo and the multi-address rows of domifaddr
  cannot be shown by the test driver; their goldens (tests/data/golden/qga/)
  follow virsh's source (``%-20s: %s``; cmdDomIfAddr's ``-`` rows).
- The commands run through ``cli.main`` against Debian's real qemu-ga on the
  QEMU stand-in (dangerous commands blocked: those are tested for their
  one-line "disabled" error), and against tests/fake_agent.py for a
  hostile guest's escapes and for a shutdown that succeeds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import write_record
from golden import GOLDEN_DIR, check_golden
from qga_fixtures import agent_domain, short_base

from xen_channel_backend import guestcmds
from xen_channel_backend.agenttypes import (
    GuestDisk,
    GuestFilesystem,
    GuestFSDisk,
    GuestInfo,
    GuestInterface,
    GuestIPAddress,
    GuestOSInfo,
    GuestTime,
    GuestTimezone,
    GuestUser,
)
from xen_channel_backend.cli import main
from xen_channel_backend.qga import AGENT_CHANNEL

FAKE = Path(__file__).with_name("fake_agent.py")

# The data libvirt's test driver holds for domain "test" (src/test/test_driver.c).
TEST_IFACES = (
    GuestInterface("testnet0", "aa:bb:cc:dd:ee:ff",
                   (GuestIPAddress("ipv4", "192.168.122.3", 24),)),
)
TEST_FILESYSTEMS = (
    GuestFilesystem("/", "vda1", "ext4", None, None, (GuestFSDisk("vda", None, None),)),
    GuestFilesystem("/boot", "vda2", "ext4", None, None, (GuestFSDisk("vda", None, None),)),
)
TEST_TIME = GuestTime(627319920, 0)

#: golden file -> (virsh arguments, our output for the test driver's data)
VIRSH_GOLDENS = {
    "domifaddr.txt": (["domifaddr", "test"],
                      lambda: guestcmds.format_domifaddr(TEST_IFACES) + "\n"),
    "domifaddr-full.txt": (["domifaddr", "test", "--full"],
                           lambda: guestcmds.format_domifaddr(TEST_IFACES, full=True) + "\n"),
    "domfsinfo.txt": (["domfsinfo", "test"],
                      lambda: guestcmds.format_domfsinfo(TEST_FILESYSTEMS) + "\n"),
    "domtime.txt": (["domtime", "test"],
                    lambda: guestcmds.format_domtime(TEST_TIME, pretty=False) + "\n"),
    "domtime-pretty.txt": (["domtime", "test", "--pretty"],
                           lambda: guestcmds.format_domtime(TEST_TIME, pretty=True) + "\n"),
}


@pytest.mark.parametrize("name", sorted(VIRSH_GOLDENS))
def test_our_layout_is_virshs(name: str) -> None:
    check_golden(f"virsh/{name}", VIRSH_GOLDENS[name][1]())


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(VIRSH_GOLDENS))
def test_the_golden_is_what_virsh_prints(name: str) -> None:
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    done = subprocess.run(["virsh", "-c", "test:///default", *VIRSH_GOLDENS[name][0]],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "LC_ALL": "C"})
    assert done.stdout == (GOLDEN_DIR / "virsh" / name).read_text()


def test_virsh_table_rule_is_every_width_plus_three() -> None:
    # `virsh list` on the test driver: " Id   Name   State" over 22 dashes.
    assert guestcmds.vsh_table(("Id", "Name", "State"), [("1", "test", "running")]) == (
        " Id   Name   State\n----------------------\n 1    test   running\n"
    )


MANY_IFACES = (
    GuestInterface("lo", "00:00:00:00:00:00", (GuestIPAddress("ipv4", "127.0.0.1", 8),
                                                GuestIPAddress("ipv6", "::1", 128))),
    GuestInterface("eth0", "52:54:00:8e:3b:12", (GuestIPAddress("ipv4", "192.0.2.10", 24),
                                                  GuestIPAddress("ipv6", "fe80::1", 64))),
    GuestInterface("dummy0", None, ()),
    GuestInterface("a-long-interface-name", "02:00:00:00:00:01", ()),
)


def test_domifaddr_rows_for_many_addresses_and_none() -> None:
    check_golden("qga/domifaddr-many.txt", guestcmds.format_domifaddr(MANY_IFACES) + "\n")
    check_golden("qga/domifaddr-many-full.txt",
                 guestcmds.format_domifaddr(MANY_IFACES, full=True) + "\n")


FULL_INFO = GuestInfo(
    users=(GuestUser("root", None, 1700000000123), GuestUser("Administrator", "WIN", 5)),
    os=GuestOSInfo(id="debian", name="Debian GNU/Linux", pretty_name="Debian GNU/Linux 12",
                   version="12 (bookworm)", version_id="12", machine="x86_64",
                   kernel_release="6.1.0-13-amd64", kernel_version="#1 SMP Debian"),
    timezone=GuestTimezone("CET", 3600),
    hostname="web01",
    filesystems=(GuestFilesystem("/", "xvda1", "ext4", 10_000_000, 4_000_000,
                                 (GuestFSDisk("xvda", "SER1", "/dev/xvda"),)),),
    disks=(GuestDisk("/dev/xvda1", True, ("/dev/xvda",), None, "xvda", None),),
    interfaces=(GuestInterface("eth0", "00:16:3e:00:00:01",
                               (GuestIPAddress("ipv4", "192.0.2.10", 24),)),),
)


def test_guestinfo_keys_and_lines_follow_libvirt() -> None:
    params = dict(FULL_INFO.params())
    assert params["user.count"] == 2 and params["user.0.login-time"] == 1700000000123
    assert "user.0.domain" not in params and params["user.1.domain"] == "WIN"
    assert params["os.pretty-name"] == "Debian GNU/Linux 12" and "os.variant" not in params
    assert params["fs.0.disk.0.alias"] == "xvda" and params["disk.0.partition"] is True
    assert params["if.0.addr.0.prefix"] == 24
    check_golden("qga/guestinfo.txt", guestcmds.format_guestinfo(FULL_INFO.params()) + "\n")


def test_interface_aliases_merge_like_libvirt() -> None:
    from xen_channel_backend.agenttypes import parse_interfaces

    parsed = parse_interfaces([
        {"name": "eth0", "hardware-address": "00:16:3e:00:00:01",
         "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "192.0.2.1", "prefix": 24}]},
        {"name": "eth0:1", "hardware-address": "00:16:3e:00:00:01",
         "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "192.0.2.2", "prefix": 24}]},
    ])
    assert [i.name for i in parsed] == ["eth0"]
    assert [a.address for a in parsed[0].addresses] == ["192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize("value,reason", [
    ({"name": "eth0"}, "not a JSON array"),
    ([{"hardware-address": "x"}], "name is missing"),
    ([{"name": "e", "ip-addresses": [{"ip-address-type": "ipx", "ip-address": "1",
                                      "prefix": 1}]}], "unknown ip-address-type"),
    ([{"name": "e", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "1",
                                      "prefix": "24"}]}], "prefix is missing or not an integer"),
])
def test_malformed_interfaces_name_the_field(value: object, reason: str) -> None:
    from xen_channel_backend.agenttypes import parse_interfaces

    with pytest.raises(ValueError, match=reason):
        parse_interfaces(value)


# --- through cli.main against the real qemu-ga ---------------------------------------


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def domain() -> Iterator[Any]:
    with agent_domain("web01") as made:
        yield made


def cmd(domain: Any, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    return run(*argv, "--rundir", domain.rundir, stdin=stdin)


pytestmark_real = pytest.mark.integration


@pytestmark_real
def test_domifaddr_shows_this_machines_loopback(domain: Any) -> None:
    code, out, err = cmd(domain, "domifaddr", "web01")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:2] == (GOLDEN_DIR / "virsh" / "domifaddr.txt").read_text().splitlines()[:2]
    assert " lo         00:00:00:00:00:00    ipv4         127.0.0.1/8" in lines
    assert out.endswith("\n\n")
    code, out, _ = cmd(domain, "domifaddr", "web01", "--interface", "lo", "--full")
    assert code == 0 and all(line.startswith(" lo ") for line in out.splitlines()[2:] if line)
    code, out, _ = cmd(domain, "domifaddr", "web01", "--json")
    interfaces = json.loads(out)
    lo = next(i for i in interfaces if i["name"] == "lo")
    assert {"type": "ipv4", "address": "127.0.0.1", "prefix": 8} in lo["addresses"]


@pytestmark_real
def test_guestinfo_os_and_hostname(domain: Any) -> None:
    code, out, err = cmd(domain, "guestinfo", "web01", "--os", "--hostname")
    assert (code, err) == (0, "")
    release = Path("/etc/os-release").read_text().splitlines()
    os_release = dict(line.split("=", 1) for line in release if "=" in line)
    assert f"{'os.id':<20}: {os_release['ID'].strip(chr(34))}" in out.splitlines()
    assert out.endswith(f"{'hostname':<20}: {socket.gethostname()}\n\n")
    groups = ("user.", "fs.", "if.", "timezone.")
    assert not any(line.startswith(groups) for line in out.splitlines())


@pytestmark_real
def test_guestinfo_without_options_reports_every_group(domain: Any) -> None:
    code, out, err = cmd(domain, "guestinfo", "web01", "--json")
    assert (code, err) == (0, "")
    params = json.loads(out)
    for key in ("user.count", "os.id", "timezone.offset", "hostname", "fs.count", "disk.count",
                "if.count"):
        assert key in params, key
    assert params["if.count"] == sum(1 for k in params if k.endswith(".name") and
                                     k.startswith("if."))


@pytestmark_real
def test_domfsinfo_lists_mounted_filesystems(domain: Any) -> None:
    code, out, err = cmd(domain, "domfsinfo", "web01")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["Mountpoint", "Name", "Type", "Target"]
    assert set(lines[1]) == {"-"}
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    assert all(line.split()[0] in mounts for line in lines[2:] if line)


@pytestmark_real
def test_domtime_reads_this_machines_clock(domain: Any) -> None:
    code, out, _ = cmd(domain, "domtime", "web01")
    assert code == 0 and out.startswith("Time: ")
    assert abs(int(out.split()[1]) - time.time()) < 3600  # the same clock, any load
    code, out, _ = cmd(domain, "domtime", "web01", "--json")
    assert set(json.loads(out)) == {"seconds", "nseconds"}


@pytestmark_real
def test_qemu_agent_command_prints_the_reply_like_virsh(domain: Any) -> None:
    code, out, err = cmd(domain, "qemu-agent-command", "web01", '{"execute":"guest-ping"}')
    assert (code, out, err) == (0, '{"return":{}}\n\n', "")
    code, out, _ = cmd(domain, "qemu-agent-command", "web01", '{"execute":"guest-info"}',
                       "--pretty")
    reply = json.loads(out)
    assert code == 0 and out.startswith('{\n  "return": {')
    enabled = {c["name"]: c["enabled"] for c in reply["return"]["supported_commands"]}
    assert enabled["guest-ping"] and not enabled["guest-shutdown"] and not enabled["guest-exec"]


#: The command as a fresh process: the interpreter's start-up state, not pytest's.
_PROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
from xen_channel_backend.cli import main
code = main(sys.argv[2:])
print(sorted(m for m in ("typing", "dataclasses", "inspect", "shutil") if m in sys.modules),
      file=sys.stderr)
sys.exit(code)
"""


@pytestmark_real
def test_qemu_agent_command_as_a_process_logs_only_when_asked(domain: Any) -> None:
    """Logging is set up when qga first imports it (service.LoggingOnImport), not before.

    ``--debug`` still shows qga's debug lines with the usual prefix, a run
    without it prints nothing on stderr, and neither imports what only other
    commands need (docs/performance.md, Guest agent).
    """
    tree = str(Path(guestcmds.__file__).resolve().parent.parent)

    def process(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROCESS, tree, *argv, "qemu-agent-command",
             "web01", '{"execute":"guest-ping"}', "--rundir", domain.rundir],
            capture_output=True, text=True, timeout=60, check=False)

    quiet = process()
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, '{"return":{}}\n\n', "[]\n")
    debug = process("--debug")
    assert (debug.returncode, debug.stdout) == (0, '{"return":{}}\n\n')
    *logged, modules = debug.stderr.splitlines()
    assert modules == "[]"
    assert logged and all(line.startswith("xen-channel: ") for line in logged), logged
    assert any(": synced (id " in line for line in logged), logged


@pytestmark_real
@pytest.mark.parametrize("argv,command", [
    (["shutdown", "web01", "--mode", "agent"], "guest-shutdown"),
    (["reboot", "web01", "--mode", "agent"], "guest-shutdown"),
    (["domfsfreeze", "web01"], "guest-fsfreeze-freeze"),
    (["domfsfreeze", "web01", "--mountpoint", "/"], "guest-fsfreeze-freeze-list"),
    (["domtime", "web01", "--now"], "guest-set-time"),
    (["domtime", "web01", "--sync"], "guest-set-time"),
    (["qemu-agent-command", "web01", '{"execute":"guest-exec","arguments":{"path":"/bin/true"}}'],
     "guest-exec"),
])
def test_dangerous_commands_stay_blocked_with_one_line(
    domain: Any, argv: list[str], command: str
) -> None:
    code, out, err = cmd(domain, *argv)
    assert (code, out) == (1, "")
    assert err == (f"xen-channel: error: guest agent of domain 'web01': command '{command}' has "
                   "been disabled in the guest (qemu-ga --block-rpcs, or filesystems are "
                   "frozen)\n")


@pytestmark_real
def test_set_user_password_reads_the_password_from_stdin_or_a_file(
    domain: Any, tmp_path: Path
) -> None:
    secret = "s3cret-" + uuid_module.uuid4().hex
    code, out, err = cmd(domain, "set-user-password", "web01", "nobody", stdin=secret + "\n")
    assert code == 1 and "guest-set-user-password' has been disabled" in err
    assert secret not in out + err
    password_file = tmp_path / "pw"
    password_file.write_text(secret + "\n")
    code, _out, err = cmd(domain, "set-user-password", "web01", "nobody", "--password-file",
                          str(password_file))
    assert code == 1 and "has been disabled" in err and secret not in err


def test_the_password_is_never_an_argument() -> None:
    code, _out, err = run("set-user-password", "web01", "root", "hunter2")
    assert code == 2 and "unrecognized arguments: hunter2" in err


@pytest.mark.parametrize("content,problem", [
    ("", "the password is empty"),
    ("\n", "the password is empty"),
    ("a\nb\n", "the password must be one line"),
])
def test_a_bad_password_input_is_refused_before_connecting(content: str, problem: str) -> None:
    code, out, err = run("set-user-password", "nosuchdomain", "root", "--rundir",
                         "/nonexistent-xcb", stdin=content)
    assert (code, out) == (1, "") and err == f"xen-channel: error: <stdin>: {problem}\n"


@pytest.mark.parametrize("argv,message", [
    (["domifaddr", "d", "--timeout", "0"], "--timeout must be positive"),
    (["domfsthaw", "d", "--mountpoint", "/"], "qemu-ga thaws every frozen filesystem"),
    (["domtime", "d", "--now", "--sync"], "not allowed with argument"),
    (["domtime", "d", "--now", "--pretty"], "--pretty only applies"),
    (["shutdown", "d"], "--mode"),
    (["shutdown", "d", "--mode", "acpi"], "invalid choice"),
    (["set-user-password", "d", "a:b"], "user name 'a:b' is not valid"),
])
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    code, out, err = run(*argv, "--rundir", "/nonexistent-xcb")
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("text,message", [
    ("{", "command: invalid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"execute": "guest-sync-delimited", "arguments": {"id": 1}}', "the client itself sends"),
])
def test_qemu_agent_command_refuses_a_bad_request(domain: Any, text: str, message: str) -> None:
    code, out, err = cmd(domain, "qemu-agent-command", "web01", text)
    assert (code, out) == (1, "") and message in err and err.count("\n") == 1


def test_an_unknown_domain_is_one_line(tmp_path: Path) -> None:
    code, out, err = run("domifaddr", "ghost", "--rundir", str(tmp_path))
    assert (code, out) == (1, "")
    assert err == ("xen-channel: error: no registered domain 'ghost' (is it running with the "
                   "hooks installed?)\n")


# --- a hostile or a cooperative fake --------------------------------------------------


@pytest.fixture
def fake_domain(request: pytest.FixtureRequest) -> Iterator[str]:
    """A registered domain 'vm1' whose agent socket is served by fake_agent.py MODE."""
    base = short_base()
    rundir = Path(base) / "run"
    path = write_record(rundir, str(uuid_module.uuid4()), "vm1", [AGENT_CHANNEL])[AGENT_CHANNEL]
    proc = subprocess.Popen([sys.executable, str(FAKE), request.param, path],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield str(rundir)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("fake_domain", ["escapes"], indirect=True)
@pytest.mark.parametrize("argv", [
    ["domifaddr", "vm1"], ["domifaddr", "vm1", "--full"], ["guestinfo", "vm1", "--os"],
    ["guestinfo", "vm1", "--hostname"], ["domfsinfo", "vm1"], ["domtime", "vm1"],
    ["domifaddr", "vm1", "--json"],
])
def test_a_guests_escapes_never_reach_the_terminal(fake_domain: str, argv: list[str]) -> None:
    code, out, err = run(*argv, "--rundir", fake_domain)
    for text in (out, err):
        assert all(line.isprintable() for line in text.splitlines()), repr(text)
        assert "\x1b" not in text and "\u202e" not in text and "\u2028" not in text
        # The forged second line stays part of the first, escaped.
        assert not any(line.startswith("xen-channel: error: forged") for line in
                       text.splitlines())
    if code == 1:
        assert err.count("\n") == 1 and out == ""


@pytest.mark.parametrize("fake_domain", ["silent-shutdown"], indirect=True)
@pytest.mark.parametrize("action,expected", [("shutdown", "shutdown.txt"),
                                             ("reboot", "reboot.txt")])
def test_shutdown_and_reboot_succeed_silently_like_qemu_ga(
    fake_domain: str, action: str, expected: str
) -> None:
    code, out, err = run(action, "vm1", "--mode", "agent", "--rundir", fake_domain)
    assert (code, err) == (0, "")
    assert out == (GOLDEN_DIR / "virsh" / expected).read_text().replace("'test'", "'vm1'")


@pytestmark_real
def test_the_api_returns_frozen_dataclasses(domain: Any) -> None:
    import dataclasses

    from xen_channel_backend import api

    interfaces = api.interface_addresses("web01", rundir=domain.rundir)
    assert isinstance(interfaces, tuple) and all(isinstance(i, api.GuestInterface)
                                                 for i in interfaces)
    with pytest.raises(dataclasses.FrozenInstanceError):
        interfaces[0].name = "x"  # type: ignore[misc]
    info = api.guest_info("web01", ["hostname", "os"], rundir=domain.rundir)
    assert info.hostname == socket.gethostname() and info.interfaces is None
    assert isinstance(info.os, api.GuestOSInfo)
    assert api.get_time("web01", rundir=domain.rundir).seconds > 0
    assert [f.mountpoint for f in api.fs_info("web01", rundir=domain.rundir)]
    assert api.agent_command("web01", {"execute": "guest-ping"}, rundir=domain.rundir) == \
        {"return": {}}
    with pytest.raises(ValueError, match="unknown guest info group"):
        api.guest_info("web01", ["everything"], rundir=domain.rundir)
