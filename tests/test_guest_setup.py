"""guest/xen-channel-setup and guest/60-xen-channel.rules, run for real.

The helper runs under dash (Debian's /bin/sh) and under busybox sh with only
busybox's applets on PATH (a minimal guest), and reads channel names with
Debian's real ``xenstore-read`` from the xenstore stand-in (which replaces
xenstored, which cannot run without Xen).  The stand-in plays guest domain 5,
so the helper's relative ``device/console/N/name`` resolves under
/local/domain/5 as in a guest.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xenstore_standin import XenstoreStandin

from xen_channel_backend.errors import InvalidChannelName
from xen_channel_backend.model import NAME_RULE, validate_name

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "guest" / "xen-channel-setup"
RULES = REPO / "guest" / "60-xen-channel.rules"
DOMID = 5
BUSYBOX_APPLETS = ("sh", "ln", "readlink", "rm", "mkdir", "printf", "cat")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("xenstore-read") is None or shutil.which("dash") is None,
        reason="needs dash and Debian's xenstore-read (xenstore-utils); run scripts/install-deps",
    ),
]


@dataclass
class Guest:
    """A fake guest filesystem under tmp_path and the stand-in xenstore."""

    root: Path  # everything the test may touch lives here
    devprefix: Path
    devdir: Path
    store: XenstoreStandin
    shell: list[str]
    path: str

    def set_name(self, console: int, name: str | bytes) -> None:
        self.store.write(f"device/console/{console}/name", name)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            "PATH": self.path,
            "XENSTORED_PATH": self.store.socket_path,
            "XEN_CHANNEL_DEVDIR": str(self.devdir),
            "XEN_CHANNEL_DEVPREFIX": str(self.devprefix),
            "LC_ALL": "C.UTF-8",
        }
        full_env.update(env or {})
        return subprocess.run(
            [*self.shell, str(HELPER), *args],
            env=full_env,
            cwd=self.root / "cwd",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def links(self) -> dict[str, str]:
        if not self.devdir.is_dir():
            return {}
        return {p.name: os.readlink(p) for p in self.devdir.iterdir()}

    def hvc(self, n: int) -> str:
        return str(self.devprefix / f"hvc{n}")


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every entry under root except those under skip, with its kind or link target."""
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (Path(dirpath, n) for n in dirnames + filenames):
            if entry == skip or skip in entry.parents:
                continue
            kind = os.readlink(entry) if entry.is_symlink() else "dir" if entry.is_dir() else "file"
            seen[str(entry.relative_to(root))] = kind
    return seen


def _busybox_path(bindir: Path) -> str:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (scripts/install-deps installs it)")
    bindir.mkdir()
    for applet in BUSYBOX_APPLETS:
        (bindir / applet).symlink_to(busybox)
    (bindir / "xenstore-read").symlink_to(shutil.which("xenstore-read") or "")
    # No logger: a minimal guest may have none, and the helper must not care.
    return str(bindir)


@pytest.fixture(params=["dash", "busybox"])
def guest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Guest]:
    root = tmp_path / "g"
    devprefix = root / "dev"
    devprefix.mkdir(parents=True)
    for n in range(8):
        (devprefix / f"hvc{n}").touch()
    # Where "../../etc/evil" would land if a name ever escaped the directory.
    (root / "etc").mkdir()
    (root / "cwd").mkdir()
    if request.param == "dash":
        shell, path = ["dash"], os.environ.get("PATH", "/usr/bin:/bin")
    else:
        path = _busybox_path(tmp_path / "bin")
        shell = [str(Path(path) / "sh")]
    with XenstoreStandin(tmp_path / "xs.sock", domid=DOMID) as store:
        yield Guest(root, devprefix, devprefix / "xen-channel", store, shell, path)


@pytest.fixture
def untouched(guest: Guest) -> Iterator[None]:
    """Assert that nothing outside the device directory changes."""
    before = snapshot(guest.root, guest.devdir)
    yield
    assert snapshot(guest.root, guest.devdir) == before


GOOD_NAMES = ["org.example.agent.0", "org.qemu.guest_agent.0", "a", "7", "A-b_c.d", "x" * 100]


@pytest.mark.parametrize("name", GOOD_NAMES)
@pytest.mark.usefixtures("untouched")
def test_add_links_a_good_name(guest: Guest, name: str) -> None:
    guest.set_name(3, name)
    result = guest.run("add", "console-3")
    assert result.returncode == 0, result.stderr
    assert guest.links() == {name: guest.hvc(3)}
    assert f"linked {guest.devdir}/{name} -> {guest.hvc(3)}" in result.stderr


HOSTILE_NAMES = {
    "parent": "../../etc/evil",
    "slash": "a/b",
    "dotdot": "..",
    "dotfile": ".hidden",
    "dash-first": "-rf",
    "space": "a b",
    "newline": "a\nb",
    "trailing-newline": "agent\n",
    "tab": "a\tb",
    "double-quote": 'a"b',
    "single-quote": "a'b",
    "dollar": "$(reboot)",
    "glob": "*",
    "backslash": "a\\nb",
    "non-ascii": "agent\u00e9",
    "300-chars": "y" * 300,
    "101-chars": "y" * 101,
    "empty": "",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
@pytest.mark.usefixtures("untouched")
def test_add_refuses_a_hostile_name(guest: Guest, name: str) -> None:
    guest.set_name(1, name)
    result = guest.run("add", "console-1")
    assert result.returncode == 1
    assert "refusing channel name" in result.stderr
    assert NAME_RULE in result.stderr
    assert len(result.stderr.splitlines()) == 1, "a hostile name must not break the log line"
    assert guest.links() == {}


@pytest.mark.usefixtures("untouched")
def test_add_without_a_name_key_fails(guest: Guest) -> None:
    guest.store.write("device/console/1/type", "ioemu")
    result = guest.run("add", "console-1")
    assert result.returncode == 1
    assert "cannot read device/console/1/name" in result.stderr
    assert guest.links() == {}


@pytest.mark.parametrize("console", [8, 9, 10, 12, 17])
@pytest.mark.usefixtures("untouched")
def test_consoles_past_hvc7_are_refused_with_the_reason(guest: Guest, console: int) -> None:
    guest.set_name(console, f"org.example.c{console}")
    result = guest.run("add", f"console-{console}")
    assert result.returncode == 1
    assert "only hvc0-hvc7" in result.stderr
    assert guest.links() == {}
    assert guest.run("remove", f"console-{console}").returncode == 0


@pytest.mark.usefixtures("untouched")
def test_duplicate_name_is_refused_and_the_first_link_kept(guest: Guest) -> None:
    guest.set_name(1, "org.example.agent.0")
    guest.set_name(2, "org.example.agent.0")
    assert guest.run("add", "console-1").returncode == 0
    second = guest.run("add", "console-2")
    assert second.returncode == 1
    assert "refusing duplicate channel name" in second.stderr
    assert guest.links() == {"org.example.agent.0": guest.hvc(1)}


@pytest.mark.usefixtures("untouched")
def test_readd_and_bind_are_idempotent(guest: Guest) -> None:
    guest.set_name(2, "org.example.agent.0")
    for action in ("add", "bind", "add"):
        result = guest.run(action, "console-2")
        assert result.returncode == 0, result.stderr
    assert guest.links() == {"org.example.agent.0": guest.hvc(2)}


@pytest.mark.usefixtures("untouched")
def test_a_renamed_channel_loses_its_old_link(guest: Guest) -> None:
    guest.set_name(1, "old.name")
    assert guest.run("add", "console-1").returncode == 0
    guest.set_name(1, "new.name")
    assert guest.run("add", "console-1").returncode == 0
    assert guest.links() == {"new.name": guest.hvc(1)}


@pytest.mark.usefixtures("untouched")
def test_remove_deletes_only_this_consoles_link(guest: Guest) -> None:
    guest.set_name(1, "one")
    guest.set_name(2, "two")
    assert guest.run("add", "console-1").returncode == 0
    assert guest.run("add", "console-2").returncode == 0
    # The backend may already have removed the node: remove goes by the target.
    guest.store.rm("device/console/1")
    result = guest.run("remove", "console-1")
    assert result.returncode == 0, result.stderr
    assert guest.links() == {"two": guest.hvc(2)}
    assert guest.run("remove", "console-1").returncode == 0  # again: nothing to do
    assert guest.links() == {"two": guest.hvc(2)}


@pytest.mark.usefixtures("untouched")
def test_remove_leaves_a_same_named_link_to_another_hvc(guest: Guest) -> None:
    guest.set_name(1, "agent")
    assert guest.run("add", "console-1").returncode == 0
    guest.set_name(2, "agent")
    assert guest.run("remove", "console-2").returncode == 0
    assert guest.links() == {"agent": guest.hvc(1)}


def test_env_mode_reads_action_and_devpath_like_udev(guest: Guest) -> None:
    guest.set_name(4, "agent")
    add = guest.run(env={"ACTION": "add", "DEVPATH": "/devices/console-4"})
    assert add.returncode == 0, add.stderr
    assert guest.links() == {"agent": guest.hvc(4)}
    remove = guest.run(env={"ACTION": "remove", "DEVPATH": "/devices/console-4"})
    assert remove.returncode == 0, remove.stderr
    assert guest.links() == {}


def test_a_symlinked_device_directory_is_not_followed(guest: Guest) -> None:
    elsewhere = guest.root / "etc"
    guest.devdir.symlink_to(elsewhere)
    guest.set_name(1, "agent")
    result = guest.run("add", "console-1")
    assert result.returncode == 1
    assert "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_link_to_a_directory_under_the_name_is_not_followed(guest: Guest) -> None:
    guest.devdir.mkdir()
    trap = guest.root / "etc"
    (guest.devdir / "agent").symlink_to(trap)
    guest.set_name(1, "agent")
    result = guest.run("add", "console-1")
    assert result.returncode == 1
    assert "refusing duplicate channel name" in result.stderr
    assert list(trap.iterdir()) == []


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "args",
    [
        ("add", "console-01"),
        ("add", "console-"),
        ("add", "console-1x"),
        ("add", "vif-0"),
        ("add", "console-1", "extra"),
        ("frobnicate", "console-1"),
        (),
        ("check-name",),
    ],
    ids=repr,
)
def test_usage_errors_exit_2(guest: Guest, args: tuple[str, ...]) -> None:
    result = guest.run(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.usefixtures("untouched")
def test_console_0_and_other_actions_are_no_ops(guest: Guest) -> None:
    guest.set_name(0, "primary")
    for args in (("add", "console-0"), ("change", "console-1"), ("unbind", "console-1")):
        assert guest.run(*args).returncode == 0
    assert guest.links() == {}


@pytest.mark.usefixtures("untouched")
def test_relative_device_directory_is_refused(guest: Guest) -> None:
    guest.set_name(1, "agent")
    result = guest.run("add", "console-1", env={"XEN_CHANNEL_DEVDIR": "xen-channel"})
    assert result.returncode == 2
    assert "absolute" in result.stderr


# -- the shell rule and the host rule never drift -------------------------------

NAME_TABLE = [
    *GOOD_NAMES,
    *HOSTILE_NAMES.values(),
    "Z", "0.", "a.", "a-", "a_", "0_0", "a..b", "a--b", "_a", "._", "-", ".",
    "y" * 99, "A" * 100, "\u0430gent", "a\u00a0b", "a\x7fb", "a\rb", "a,b", "a=b", "a:b",
]


def python_accepts(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidChannelName:
        return False
    return True


def shell_accepts(shell: list[str], name: str) -> bool:
    result = subprocess.run(
        [*shell, str(HELPER), "check-name", name],
        capture_output=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


SHELLS = [["dash"], ["busybox", "sh"]]


def _shell_available(shell: list[str]) -> bool:
    return shutil.which(shell[0]) is not None


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_shell_and_python_name_rules_agree_on_the_table(shell: list[str]) -> None:
    if not _shell_available(shell):
        pytest.skip(f"{shell[0]} is not installed (scripts/install-deps installs it)")
    disagree = {
        n: python_accepts(n) for n in NAME_TABLE if python_accepts(n) != shell_accepts(shell, n)
    }
    assert disagree == {}, "sh and model.validate_name disagree (value: what Python says)"
    assert {python_accepts(n) for n in NAME_TABLE} == {True, False}


_NAME_CHARS = "aZ09._-" + " /\\\n\t\"'$`*?[]!,=:@\u00e9\u0430\x7f"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=_NAME_CHARS, max_size=110) | st.text(alphabet="aZ09._-", max_size=110))
def test_shell_and_python_name_rules_agree_on_generated_names(name: str) -> None:
    assert shell_accepts(["dash"], name) == python_accepts(name), repr(name)


# -- the udev rule ----------------------------------------------------------------

def _rule_lines() -> list[str]:
    lines = RULES.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_rule_matches_channel_consoles_only() -> None:
    (rule,) = _rule_lines()
    pairs = dict(re.findall(r'([A-Z]+(?:\{[a-zA-Z_]+\})?)[=!+]=?"([^"]*)"', rule))
    assert pairs["SUBSYSTEM"] == "xen"
    assert pairs["ENV{MODALIAS}"] == "xen:console"
    assert set(pairs["ACTION"].split("|")) == {"add", "bind", "remove"}
    assert pairs["RUN"] == "xen-channel-setup $env{ACTION} $kernel"
    kernel = pairs["KERNEL"]
    for name in ("console-1", "console-7", "console-10", "console-12"):
        assert fnmatch.fnmatchcase(name, kernel), name
    for name in ("console-0", "console-", "vif-0", "vbd-51712", "console"):
        assert not fnmatch.fnmatchcase(name, kernel), name


def test_rule_parses_in_real_udev(tmp_path: Path) -> None:
    """udevadm reads the rule without complaint (in a private mount namespace)."""
    if shutil.which("udevadm") is None or shutil.which("unshare") is None:
        pytest.skip("needs udevadm (udev) and unshare (util-linux)")
    # A tmpfs over /run, visible only inside the namespace, holds the rules.
    script = (
        "mount -t tmpfs tmpfs /run && mkdir -p /run/udev/rules.d && "
        f"cp {RULES} /run/udev/rules.d/ && "
        "printf 'KERNL==\"x\"\\n' > /run/udev/rules.d/99-known-bad.rules && "
        "udevadm test --action=add /sys/class/tty/tty0"
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = result.stdout + result.stderr
    if "Reading rules file: /run/udev/rules.d/60-xen-channel.rules" not in output:
        pytest.skip(f"cannot run udevadm test in a private mount namespace: {output[-300:]}")
    # The known-bad file proves that udevadm reports rule errors here at all.
    assert "99-known-bad.rules:1 Invalid key" in output
    assert [line for line in output.splitlines() if "60-xen-channel.rules:" in line] == []


def test_helper_passes_shellcheck_as_posix_sh() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/install-deps installs it)")
    result = subprocess.run(
        ["shellcheck", "--shell=sh", str(HELPER)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
