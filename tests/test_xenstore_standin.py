"""The xenstore stand-in against Debian's real clients (xenstore-utils).

If these pass, a test that drives a guest helper through the real
``xenstore-read`` and this stand-in exercises the same requests the helper
sends to xenstored in a guest.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from xenstore_standin import XenstoreStandin

CLIENTS = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-exists", "xenstore-rm")
_missing = [c for c in CLIENTS if shutil.which(c) is None]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(_missing),
        reason=f"Debian's xenstore-utils is not installed (missing {', '.join(_missing)}); "
        "run scripts/install-deps",
    ),
]

GUEST = 7


@pytest.fixture
def store(tmp_path: Path) -> Iterator[XenstoreStandin]:
    tree = {
        f"/local/domain/{GUEST}/device/console/1/name": "org.example.agent.0",
        f"/local/domain/{GUEST}/device/console/1/type": "ioemu",
        "/local/domain/0/backend/console/7/1/path": "/run/xen/agent.sock",
    }
    with XenstoreStandin(tmp_path / "xs.sock", domid=GUEST, tree=tree) as standin:
        yield standin


def run(store: XenstoreStandin, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=store.client_env(), capture_output=True, text=True, timeout=30, check=False
    )


def test_read_absolute_and_relative_to_the_domain_home(store: XenstoreStandin) -> None:
    absolute = run(store, "xenstore-read", f"/local/domain/{GUEST}/device/console/1/name")
    relative = run(store, "xenstore-read", "device/console/1/name")
    assert (absolute.returncode, absolute.stdout) == (0, "org.example.agent.0\n")
    assert (relative.returncode, relative.stdout) == (0, "org.example.agent.0\n")


def test_read_several_keys_uses_a_transaction(store: XenstoreStandin) -> None:
    result = run(store, "xenstore-read", "device/console/1/name", "device/console/1/type")
    assert (result.returncode, result.stdout) == (0, "org.example.agent.0\nioemu\n")


def test_read_missing_key_exits_non_zero(store: XenstoreStandin) -> None:
    result = run(store, "xenstore-read", "device/console/2/name")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "couldn't read path device/console/2/name" in result.stderr


def test_read_invalid_path_exits_non_zero(store: XenstoreStandin) -> None:
    # xenstored's path rule refuses characters outside A-Za-z0-9-/_@ (EINVAL).
    assert run(store, "xenstore-read", "device/console/1/na me").returncode != 0
    assert run(store, "xenstore-read", "device//console").returncode != 0


def test_write_creates_parents_and_reads_back(store: XenstoreStandin) -> None:
    assert run(store, "xenstore-write", "data/a/b", "v1", "data/c", "v2").returncode == 0
    assert store.read(f"/local/domain/{GUEST}/data/a/b") == b"v1"
    assert store.read(f"/local/domain/{GUEST}/data/a") == b""
    assert run(store, "xenstore-read", "data/c").stdout == "v2\n"


def test_read_escapes_control_characters_as_the_real_client_does(
    store: XenstoreStandin,
) -> None:
    # xenstore-read prints values through sanitise_value: a control character
    # arrives as a backslash escape, so a value never spans two lines.
    store.write("device/console/2/name", b"evil\nname\x01")
    assert run(store, "xenstore-read", "device/console/2/name").stdout == "evil\\nname\\001\n"


def test_ls_lists_the_tree(store: XenstoreStandin) -> None:
    result = run(store, "xenstore-ls", f"/local/domain/{GUEST}/device")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "console = \"\"",
        " 1 = \"\"",
        "  name = \"org.example.agent.0\"",
        "  type = \"ioemu\"",
    ]


def test_ls_missing_path_exits_non_zero(store: XenstoreStandin) -> None:
    assert run(store, "xenstore-ls", "/local/domain/99").returncode != 0


def test_exists(store: XenstoreStandin) -> None:
    assert run(store, "xenstore-exists", "device/console/1/name").returncode == 0
    assert run(store, "xenstore-exists", "device/console/9").returncode != 0


def test_rm_removes_a_subtree(store: XenstoreStandin) -> None:
    assert run(store, "xenstore-rm", "device/console/1").returncode == 0
    assert not store.exists("device/console/1/name")
    assert store.exists("device/console")
    assert run(store, "xenstore-exists", "device/console/1").returncode != 0


def test_rm_missing_node_under_a_missing_parent_fails(store: XenstoreStandin) -> None:
    assert run(store, "xenstore-rm", "device/console/1/absent").returncode == 0
    assert run(store, "xenstore-rm", "no/such/parent").returncode != 0


def test_relative_paths_follow_the_domid(tmp_path: Path) -> None:
    # A dom0 socket client of a real xenstored resolves under /local/domain/0.
    tree = {"/local/domain/0/name": "Domain-0", "/local/domain/3/name": "guest"}
    with XenstoreStandin(tmp_path / "xs.sock", tree=tree) as dom0:
        assert run(dom0, "xenstore-read", "name").stdout == "Domain-0\n"
    with XenstoreStandin(tmp_path / "xs.sock", domid=3, tree=tree) as guest:
        assert run(guest, "xenstore-read", "name").stdout == "guest\n"


def test_stop_removes_the_socket(tmp_path: Path) -> None:
    standin = XenstoreStandin(tmp_path / "xs.sock").start()
    assert (tmp_path / "xs.sock").is_socket()
    standin.stop()
    assert not (tmp_path / "xs.sock").exists()
