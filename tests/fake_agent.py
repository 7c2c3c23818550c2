"""A hostile stand-in for a guest's qemu-ga, as dom0 meets it on the channel socket.

What it replaces: the QEMU device model (which listens on the channel's
Unix socket) together with the guest's qemu-guest-agent behind it.  A real
qemu-ga is trusted to be well-formed; a guest's agent is not (the guest is
the attacker here), so this fake misbehaves on purpose, in one of these
modes:

- ``silent``: accepts and reads, never answers (a guest with no agent);
- ``flood``: writes junk lines as fast as the socket takes them, never an
  answer (a guest that wants dom0's memory or CPU);
- ``wrong-id``: answers every sync, always with another id (an agent stuck
  on an old sync, or one that lies), after 7.2's parse-error line;
- ``huge-line``: syncs properly, then answers every request with one JSON
  line of ``--size`` bytes (100 MB by default), streamed, never buffered;
- ``huge-stale``: the same line *before* it answers the sync (stale
  garbage a new client must skip), then answers like a real agent;
- ``escapes``: syncs properly, then answers with terminal escapes, bidi
  overrides and line separators in every string it can;
- ``silent-shutdown``: a well-behaved agent whose guest-shutdown succeeds
  silently, as qemu-ga's does (for the shutdown tests, with no risk).

Not modelled: QEMU's one-client-at-a-time backlog (see backend_standin.py)
and the pty.  Run ``python tests/fake_agent.py MODE SOCKET [--size N]``: it
prints ``ready`` once it listens and serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator

CHUNK = 64 * 1024
DEFAULT_SIZE = 100 * 1000 * 1000

#: Text a hostile guest puts in strings: OSC 52 (write the clipboard), a
#: title change, CSI colour, a bidi override, a forged second line.
HOSTILE = ("\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;pwned\x07\x1b[31mred\u202eevil"
           "\u2028forged\nxen-channel: error: forged")


class Session:
    """One client connection: read requests (lines), write bytes."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self._buf = b""

    def requests(self) -> Iterator[tuple[bool, dict[str, object] | None]]:
        """Yield (delimited, request or None if unparsable) until the client leaves."""
        while True:
            while b"\n" not in self._buf:
                data = self.conn.recv(CHUNK)
                if not data:
                    return
                self._buf += data
            line, self._buf = self._buf.split(b"\n", 1)
            delimited = line.startswith(b"\xff")
            try:
                request = json.loads(line.lstrip(b"\xff"))
            except ValueError:
                request = None
            yield delimited, request if isinstance(request, dict) else None

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


def _sync_id(request: dict[str, object] | None) -> int | None:
    if request and request.get("execute") in ("guest-sync-delimited", "guest-sync"):
        arguments = request.get("arguments")
        if isinstance(arguments, dict) and isinstance(arguments.get("id"), int):
            return int(arguments["id"])
    return None


def _answer_sync(session: Session, delimited: bool, sync_id: int) -> None:
    if delimited:
        session.send(b'{"error": {"class": "GenericError", "desc": "JSON parse error, '
                     b"stray '\\uFFFD'\"}}\n\xff")
    session.send(json.dumps({"return": sync_id}).encode() + b"\n")


def _huge_line(session: Session, size: int) -> None:
    """One JSON line of ``size`` bytes, written in chunks (never held whole here)."""
    head = b'{"return": "'
    session.send(head)
    chunk = b"A" * CHUNK
    left = size - len(head) - 3
    while left > 0:
        session.send(chunk[: min(CHUNK, left)])
        left -= CHUNK
    session.send(b'"}\n')


def _well_behaved(session: Session, answer: Callable[[dict[str, object]], bytes | None]) -> None:
    for delimited, request in session.requests():
        sync_id = _sync_id(request)
        if sync_id is not None:
            _answer_sync(session, delimited, sync_id)
        elif request is None:
            session.send(b'{"error": {"class": "GenericError", "desc": "JSON parse error"}}\n')
        else:
            reply = answer(request)
            if reply is not None:
                session.send(reply)


def _escaping_answer(request: dict[str, object]) -> bytes:
    command = request.get("execute")
    if command == "guest-network-get-interfaces":
        value: object = [{
            "name": "eth0" + HOSTILE, "hardware-address": HOSTILE,
            "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": HOSTILE, "prefix": 24}],
        }]
    elif command == "guest-get-host-name":
        value = {"host-name": HOSTILE}
    elif command == "guest-get-osinfo":
        value = {"id": HOSTILE, "pretty-name": HOSTILE}
    elif command == "guest-get-fsinfo":
        value = [{"name": HOSTILE, "mountpoint": HOSTILE, "type": HOSTILE,
                  "disk": [{"dev": "/dev/" + HOSTILE}]}]
    else:
        return json.dumps({"error": {"class": "GenericError" + HOSTILE,
                                     "desc": HOSTILE}}).encode() + b"\n"
    return json.dumps({"return": value}).encode() + b"\n"


def _shutdown_answer(request: dict[str, object]) -> bytes | None:
    if request.get("execute") == "guest-shutdown":
        return None  # qemu-ga: success is silent
    return b'{"return": {}}\n'


def serve(session: Session, mode: str, size: int) -> None:
    if mode == "silent":
        for _ in session.requests():
            pass
    elif mode == "flood":
        junk = b'{"return": 0}\n' * (CHUNK // 14)
        while True:
            session.send(junk)
    elif mode == "wrong-id":
        for delimited, request in session.requests():
            sync_id = _sync_id(request)
            if sync_id is not None:
                _answer_sync(session, delimited, sync_id + 1)
    elif mode == "huge-line":

        def huge(_request: dict[str, object]) -> None:
            _huge_line(session, size)

        _well_behaved(session, huge)
    elif mode == "huge-stale":
        _huge_line(session, size)
        _well_behaved(session, lambda _request: b'{"return": {}}\n')
    elif mode == "escapes":
        _well_behaved(session, _escaping_answer)
    elif mode == "silent-shutdown":
        _well_behaved(session, _shutdown_answer)
    else:
        raise ValueError(f"unknown mode {mode!r}")


MODES = ("silent", "flood", "wrong-id", "huge-line", "huge-stale", "escapes", "silent-shutdown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("socket")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    args = parser.parse_args(argv)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(4)
    print("ready", flush=True)

    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            serve(Session(conn), args.mode, args.size)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
