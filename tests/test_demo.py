"""The end-to-end scenario of issue 6: ``scripts/demo.py`` (``make demo``) as a subprocess.

The demo drives every real part that runs here (libvirt-python on
test:///default, the CLI, the installed hook shim, the guest's udev helper
with Debian's real ``xenstore-read``, the guest agent process, the dom0
client) plus the QEMU and xenstored stand-ins under tests/.  These tests
check what it prints, what it leaves in its ``--keep`` directory, and that
it leaves nothing anywhere else: no file outside its temporary directory,
no process.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scripts" / "demo.py"
#: The seed's eleven steps, the guest's qemu-ga and dom0 asking it, then the release.
STEPS = [str(n) for n in range(1, 15)]
STEP_LINE = re.compile(r"^\[\s*(\w+)\] (OK|FAILED|SKIP)\s+([^:]*)(?:: (.*))?$")


def _missing_parts() -> str | None:
    if shutil.which("xenstore-read") is None:
        return "xenstore-read not found (Debian package xenstore-utils; make test installs it)"
    if importlib.util.find_spec("libvirt") is None:
        return "libvirt-python is not installed (setup.cfg test extra; make test installs it)"
    return None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_missing_parts() is not None, reason=str(_missing_parts())),
]


@dataclass
class DemoRun:
    code: int
    out: str
    err: str
    tmpdir: Path  # the TMPDIR the demo ran with

    def steps(self) -> dict[str, tuple[str, str]]:
        """Step number (or "A") -> (status, detail); part A keeps its last line only."""
        found: dict[str, tuple[str, str]] = {}
        for line in self.out.splitlines():
            match = STEP_LINE.match(line)
            if match:
                number, status, title, detail = match.groups()
                key = f"A:{title}" if number == "A" else number
                found[key] = (status, detail or "")
        return found

    def kept_dir(self) -> Path:
        match = re.search(r"^demo state kept in (.+)$", self.out, re.M)
        assert match, self.out
        return Path(match.group(1))


def _listing(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the demo's directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            words = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {words}")
    return found


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR short enough for a run directory (paths.MAX_RUNDIR) below it.

    pytest's tmp_path is too deep: the demo would fall back to /tmp, and this
    test could no longer tell its files apart from anyone else's.
    """
    path = Path(tempfile.mkdtemp(prefix="xcbt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_demo(tmpdir: Path, *args: str) -> DemoRun:
    env = dict(os.environ, TMPDIR=str(tmpdir))
    for variable in ("XEN_CHANNEL_CONFIG", "XEN_CHANNEL_RUNDIR"):
        env.pop(variable, None)
    done = subprocess.run(
        [sys.executable, str(DEMO), *args], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    return DemoRun(done.returncode, done.stdout, done.stderr, tmpdir)


def test_demo_runs_every_step_and_leaves_only_its_kept_directory(short_tmpdir: Path) -> None:
    run_before = _listing("/run/xen-channel")
    tmp_before = {n for n in _listing("/tmp") if n.startswith("xcb-demo-")}

    run = run_demo(short_tmpdir, "--keep")

    assert run.code == 0, run.out + run.err
    steps = run.steps()
    assert [steps.get(n, ("missing", ""))[0] for n in STEPS] == ["OK"] * len(STEPS), run.out
    part_a = {k: v for k, v in steps.items() if k.startswith("A:")}
    assert len(part_a) >= 3, run.out  # the three examples in xml/examples/
    assert all(s == "OK" and "round trip: identical" in d for s, d in part_a.values()), run.out
    assert "FAILED" not in run.out
    # Issue 4: the demo shows the domain's metadata read back through libvirt.
    assert "<channels> <channel name=\"org.example.agent.0\"" in run.out
    # Issue 10: the real qemu-ga answered domifaddr, guestinfo and guest-info,
    # and refused what would act on this machine.
    assert re.search(r"^ +Name +MAC address +Protocol +Address$", run.out, re.M), run.out
    assert re.search(r"^ +lo +00:00:00:00:00:00 +ipv4 +127\.0\.0\.1/8$", run.out, re.M)
    assert re.search(r"^ +os\.id +: \S+$", run.out, re.M)
    assert re.search(r"^ +hostname +: \S+$", run.out, re.M)
    assert re.search(r"^ +\{\"return\":\{\"version\":\"[0-9.]+\",\"supported_commands\"", run.out,
                     re.M), run.out
    for command in ("guest-shutdown", "guest-fsfreeze-freeze", "guest-exec"):
        assert f"command '{command}' has been disabled in the guest" in run.out
    assert run.out.rstrip().endswith("checks passed")

    table = run.out[run.out.index("What the guest applied:"):]
    for item, where in (
        ("hostname", "/etc/hostname"),
        ("addresses/eth0", "/etc/systemd/network/50-xen-channel-eth0.network"),
        ("ssh_keys/root", "/root/.ssh/authorized_keys"),
    ):
        assert re.search(rf"^\s+{re.escape(item)}\s+applied\s+{re.escape(where)}$", table, re.M), \
            table

    kept = run.kept_dir()
    assert kept.parent == short_tmpdir
    root = kept / "guest-root"
    assert (root / "etc/hostname").read_text() == "demo-guest.example.org\n"
    network = (root / "etc/systemd/network/50-xen-channel-eth0.network").read_text()
    for line in ("Name=eth0", "Address=192.0.2.10/24", "Gateway=192.0.2.1", "DNS=192.0.2.53"):
        assert f"{line}\n" in network
    keys = root / "root/.ssh/authorized_keys"
    assert [line.split()[0] for line in keys.read_text().splitlines()
            if not line.startswith("#")] == ["ssh-ed25519"]
    assert keys.read_text().rstrip().endswith("demo@dom0")
    assert keys.stat().st_mode & 0o777 == 0o600
    assert (root / "root/.ssh").stat().st_mode & 0o777 == 0o700
    # The release hook removed the domain's socket directory and its record.
    assert not any(p.name.startswith("0d3e0c0d") for p in (kept / "run").iterdir())
    assert not list((kept / "run/registry/domains").glob("*.json"))

    # Nothing outside the demo's directory; no process left behind.
    assert os.listdir(short_tmpdir) == [kept.name]
    assert _listing("/run/xen-channel") == run_before
    assert {n for n in _listing("/tmp") if n.startswith("xcb-demo-")} == tmp_before
    assert _processes_mentioning(str(kept)) == []


def test_a_broken_step_fails_the_demo_and_it_still_cleans_up(short_tmpdir: Path) -> None:
    # Step 9 is broken once the guest agent and the stand-ins are running,
    # so the cleanup must stop a live process and both stand-ins.
    run = run_demo(short_tmpdir, "--skip-part-a", "--break-step", "9")

    assert run.code == 1, run.out + run.err
    steps = run.steps()
    assert [steps[n][0] for n in STEPS[:8]] == ["OK"] * 8, run.out
    assert steps["9"] == ("FAILED", "broken on purpose (--break-step)")
    assert [steps[n][0] for n in STEPS[9:]] == ["SKIP"] * (len(STEPS) - 9)
    assert "demo FAILED: [9]" in run.out
    assert "Traceback" not in run.out + run.err
    assert os.listdir(short_tmpdir) == []
    assert _processes_mentioning(str(short_tmpdir)) == []


def test_a_payload_the_guest_refuses_fails_the_apply_step(short_tmpdir: Path) -> None:
    # A real refusal: an ssh key for a user missing from the guest's passwd.
    # The guest applies the other items and answers "partial".
    run = run_demo(short_tmpdir, "--skip-part-a", "--bad-payload")

    assert run.code == 1, run.out + run.err
    steps = run.steps()
    assert steps["10"] == ("OK", "config pushed; the guest answered partial")
    status, detail = steps["11"]
    assert status == "FAILED"
    assert "ssh_keys/alice: failed" in detail and "not found" in detail
    table = run.out[run.out.index("What the guest applied:"):]
    assert re.search(r"^\s+hostname\s+applied\s", table, re.M)
    assert re.search(r"^\s+ssh_keys/alice\s+failed\s", table, re.M)
    assert os.listdir(short_tmpdir) == []
    assert _processes_mentioning(str(short_tmpdir)) == []
