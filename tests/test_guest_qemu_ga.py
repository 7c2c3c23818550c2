"""guest/61-xen-channel-qemu-ga.rules and guest/xen-channel-qemu-ga@.service.

- udevadm parses the rule without complaint (private mount namespace, as
  tests/test_guest_setup.py does for 60-xen-channel.rules).
- The rule's PROGRAM reads the channel name where the helper reads it: run
  as written, through the real xenstore-read, against the xenstore stand-in.
- The real systemd-analyze verifies the unit; it binds to the instance's
  tty device unit, which is what the rule's SYSTEMD_WANTS names.
- The whole guest chain: the real helper links
  /dev/xen-channel/org.qemu.guest_agent.0 to the console's hvc (the QEMU
  stand-in's pty), the unit's own ExecStart line starts Debian's qemu-ga on
  that link (with the tests' --block-rpcs and private state paths added),
  and dom0's xen-channel domifaddr reaches it through the registry.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from broker_fixtures import write_record
from qga_fixtures import QEMU_GA, blocked, require_qemu_ga, short_base
from waiting import WAIT

from xen_channel_backend.cli import main
from xen_channel_backend.qga import AGENT_CHANNEL, AgentClient

REPO = Path(__file__).resolve().parent.parent
RULE = REPO / "guest" / "61-xen-channel-qemu-ga.rules"
UNIT = REPO / "guest" / "xen-channel-qemu-ga@.service"
HELPER = REPO / "guest" / "xen-channel-setup"


def rule_line() -> str:
    lines = [line for line in RULE.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    return lines[0]


def rule_keys() -> dict[str, str]:
    return {key: value for key, value in re.findall(r'([A-Z_]+(?:\{[^}]*\})?)\+?=+"([^"]*)"',
                                                   rule_line())}


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
            if line.startswith(key + "=")]


def test_the_rule_and_the_unit_agree() -> None:
    keys = rule_keys()
    assert keys["RESULT"] == AGENT_CHANNEL and keys["SUBSYSTEM"] == "xen"
    assert keys["KERNEL"] == "console-[1-7]"  # hvc_xen serves console-1..7 only
    assert keys["ENV{SYSTEMD_WANTS}"] == "xen-channel-qemu-ga@hvc%n.service"
    assert keys["TAG"] == "systemd"
    assert unit_values("BindsTo") == ["dev-%i.device"] == unit_values("After")
    (exec_start,) = unit_values("ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == QEMU_GA
    assert "--method=isa-serial" in argv
    assert f"--path=/dev/xen-channel/{AGENT_CHANNEL}" in argv


@pytest.mark.integration
def test_udevadm_parses_the_rule() -> None:
    if shutil.which("udevadm") is None or shutil.which("unshare") is None:
        pytest.skip("needs udevadm (udev) and unshare (util-linux)")
    script = (
        "mount -t tmpfs tmpfs /run && mkdir -p /run/udev/rules.d && "
        f"cp {RULE} /run/udev/rules.d/ && "
        "printf 'KERNL==\"x\"\\n' > /run/udev/rules.d/99-known-bad.rules && "
        "udevadm test --action=add /sys/class/tty/tty0"
    )
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    if f"Reading rules file: /run/udev/rules.d/{RULE.name}" not in output:
        pytest.skip(f"cannot run udevadm test in a private mount namespace: {output[-300:]}")
    assert "99-known-bad.rules:1 Invalid key" in output  # errors are reported here at all
    assert [line for line in output.splitlines() if f"{RULE.name}:" in line] == []


@pytest.mark.integration
def test_systemd_analyze_verifies_an_instance(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    require_qemu_ga()  # verify insists that ExecStart's program exists
    instance = tmp_path / "xen-channel-qemu-ga@hvc1.service"
    instance.write_text(UNIT.read_text())
    done = subprocess.run([analyze, "verify", "--man=no", str(instance)],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.integration
def test_the_whole_guest_chain_reaches_dom0() -> None:
    from backend_standin import BackendStandin
    from xenstore_standin import XenstoreStandin

    require_qemu_ga()
    shell = shutil.which("dash") or shutil.which("sh")
    if shutil.which("xenstore-read") is None or shell is None:
        pytest.skip("needs Debian's xenstore-read (xenstore-utils); run scripts/install-deps")
    base = short_base()
    try:
        devprefix, devdir = Path(base, "dev"), Path(base, "dev", "xen-channel")
        devprefix.mkdir()
        rundir = Path(base, "run")
        socket_path = write_record(rundir, "0b7d4c1e-9a2f-4e63-b1d8-7f3a5c2e9d41", "guest1",
                                   [AGENT_CHANNEL])[AGENT_CHANNEL]
        with (
            BackendStandin(socket_path) as qemu,
            XenstoreStandin(Path(base, "xs.sock"), domid=5,
                            tree={"device/console/1/name": AGENT_CHANNEL}) as store,
        ):
            env = store.client_env()
            # The rule's PROGRAM, as udev would run it for console-1 (nodename attribute).
            program = rule_keys()["PROGRAM"].replace("$attr{nodename}", "device/console/1")
            read = subprocess.run(shlex.split(program), env=env, capture_output=True,
                                  text=True, check=True)
            assert read.stdout.strip() == rule_keys()["RESULT"]
            # 60-xen-channel.rules' helper makes the link qemu-ga opens.
            (devprefix / "hvc1").symlink_to(qemu.guest_tty)
            subprocess.run([shell, str(HELPER), "add", "console-1"], check=True,
                           capture_output=True,
                           env=env | {"XEN_CHANNEL_DEVDIR": str(devdir),
                                      "XEN_CHANNEL_DEVPREFIX": str(devprefix)})
            # The unit's ExecStart, with %i and the paths made the test's own.
            (exec_start,) = unit_values("ExecStart")
            argv = [
                arg.replace("/dev/xen-channel", str(devdir))
                .replace("/run/qemu-ga-%i.pid", f"{base}/qemu-ga.pid")
                for arg in shlex.split(exec_start)
            ] + ["-t", base, f"--block-rpcs={blocked()}"]
            agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                with AgentClient(socket_path) as client:
                    assert client.execute("guest-ping", timeout=WAIT) == {}
                out, err = io.StringIO(), io.StringIO()
                code = main(["domifaddr", "guest1", "--rundir", str(rundir)],
                            stdout=out, stderr=err)
                assert (code, err.getvalue()) == (0, "")
                assert "127.0.0.1/8" in out.getvalue()
            finally:
                agent.terminate()
                agent.wait(WAIT)
                assert agent.stderr is not None
                agent.stderr.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert not os.path.exists(base)
