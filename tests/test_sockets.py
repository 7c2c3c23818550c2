"""sockets.py: the staleness probe and remove_stale, with real Unix sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from xen_channel_backend import sockets


def test_probe_tells_absent_stale_live_and_other(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    assert sockets.probe(path) == sockets.ABSENT
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    with pytest.raises(sockets.Occupied) as live:
        sockets.probe(path)
    assert live.value.kind == sockets.Occupied.LIVE
    with pytest.raises(sockets.Occupied):
        sockets.remove_stale(path)
    assert os.path.exists(path)
    server.close()
    assert sockets.probe(path) == sockets.STALE
    assert sockets.remove_stale(path) is True
    assert not os.path.lexists(path)
    (tmp_path / "f").write_text("precious")
    with pytest.raises(sockets.Occupied) as other:
        sockets.remove_stale(str(tmp_path / "f"))
    assert other.value.kind == sockets.Occupied.OTHER and "regular file" in other.value.reason


def test_probe_never_waits_on_a_full_backlog(tmp_path: Path) -> None:
    """A listener whose backlog is full is live, not stale (EAGAIN, no timeout)."""
    path = str(tmp_path / "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(0)
    clients = []
    try:
        for _ in range(4):  # fill the backlog without accepting
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            client.connect_ex(path)
            clients.append(client)
        with pytest.raises(sockets.Occupied) as live:
            sockets.probe(path)
        assert live.value.kind == sockets.Occupied.LIVE
    finally:
        for client in clients:
            client.close()
        server.close()


def test_a_symlinked_parent_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(real / "s"))
    stale.close()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(sockets.Occupied) as parent:
        sockets.remove_stale(str(tmp_path / "link" / "s"))
    assert parent.value.kind == sockets.Occupied.PARENT
    assert os.path.lexists(real / "s")
