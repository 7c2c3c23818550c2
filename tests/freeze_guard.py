"""A safety guard for the freeze tests: only a freeze of the test's own mountpoint reaches qemu-ga.

What it stands for: QEMU's channel socket, as the dom0 client sees it.  The
client connects to the guard exactly as it would to QEMU; the guard is the
one client of the real QEMU stand-in (tests/backend_standin.py), behind
which the real qemu-ga runs.  It replaces no production part: it exists
because qemu-ga acts on the machine it runs on, and a private mount
namespace does not protect ``/``: ``guest-fsfreeze-freeze``, and
``guest-fsfreeze-freeze-list`` with no mountpoints or an empty list, freeze
every filesystem, this machine's root included.

So, on the way to qemu-ga, every request line is parsed and re-serialized
(no half line or second object can slip through), and:

- ``guest-fsfreeze-freeze-list`` passes only as exactly
  ``{"mountpoints": [MOUNTPOINT]}``, the loop-mounted image the test made
  inside its private namespace;
- ``guest-fsfreeze-freeze`` and every other freeze never pass;
- anything unparsable never passes;
- a refused request is answered by the guard itself with an error.

:meth:`FreezeGuard.close` thaws whatever happens: ``guest-fsfreeze-thaw``
through the agent, then ``fsfreeze -u MOUNTPOINT`` inside the namespace as
the last resort.  Call it in a ``finally`` before qemu-ga stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from typing import Any

from qga_fixtures import PrivateNamespace

REFUSAL = (b'{"error": {"class": "GenericError", "desc": "refused by the test\'s '
           b'freeze guard"}}\n')
_FREEZES = frozenset({"guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list"})


class FreezeGuard:
    """Listen at ``listen``; forward to ``upstream``; let through one freeze only."""

    def __init__(
        self, listen: str, upstream: str, mountpoint: str, namespace: PrivateNamespace
    ) -> None:
        self.mountpoint = mountpoint
        self.namespace = namespace
        self.forwarded: list[str] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._client: socket.socket | None = None
        self._upstream_lines: list[bytes] = []
        self._upstream = socket.socket(socket.AF_UNIX)
        self._upstream.connect(upstream)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(listen)
        self._listener.listen(4)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._from_agent, daemon=True).start()

    # --- the filter -----------------------------------------------------------

    def allowed(self, request: Any) -> bool:
        if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
            return False
        command = request["execute"]
        if command not in _FREEZES:
            return True
        return request == {
            "execute": "guest-fsfreeze-freeze-list",
            "arguments": {"mountpoints": [self.mountpoint]},
        }

    def _from_client(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                body = line.lstrip(b"\xff")
                delimited = len(body) != len(line)
                try:
                    request = json.loads(body)
                except ValueError:
                    request = None
                if self.allowed(request):
                    self.forwarded.append(request["execute"])
                    out = json.dumps(request, separators=(",", ":")).encode() + b"\n"
                    self._upstream.sendall((b"\xff" if delimited else b"") + out)
                elif line.strip(b" \t\r\xff"):
                    self.refused.append(body.decode("utf-8", "replace"))
                    with self._lock, contextlib.suppress(OSError):
                        conn.sendall(REFUSAL)

    def _from_agent(self) -> None:
        while True:
            try:
                data = self._upstream.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                client = self._client
                if client is None:
                    self._upstream_lines.append(data)
                    continue
                with contextlib.suppress(OSError):
                    client.sendall(data)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._client = conn
            self._from_client(conn)
            with self._lock:
                self._client = None
            conn.close()

    # --- cleaning up ----------------------------------------------------------

    def close(self) -> None:
        """Thaw (agent first, then fsfreeze -u in the namespace) and stop."""
        if self._closed:
            return
        self._closed = True
        self._listener.close()
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(OSError):
                    self._client.shutdown(socket.SHUT_RDWR)
            self._client = None
            self._upstream_lines.clear()
        try:
            self._agent_thaw()
        finally:
            # Last resort, whatever the agent said: EINVAL just means "not frozen".
            self.namespace.run("fsfreeze", "-u", self.mountpoint)
            self._upstream.close()

    def _agent_thaw(self) -> None:
        with contextlib.suppress(OSError):
            self._upstream.sendall(b'{"execute":"guest-fsfreeze-thaw"}\n'
                                   b'{"execute":"guest-fsfreeze-status"}\n')
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with self._lock:
                    seen = b"".join(self._upstream_lines)
                if b'"thawed"' in seen:
                    return
                time.sleep(0.05)
