"""A small xenstore server for tests and the demo: it replaces xenstored.

No xenstored can run here: both need Xen (C xenstored dies on its first
request, oxenstored on setrlimit; docs/background.md §4).  Debian's real clients
(``xenstore-read``, ``-write``, ``-ls``, ``-exists``, ``-rm``, ``-list``) talk to
any server on the Unix socket named by ``XENSTORED_PATH``, so this module
speaks their wire protocol (xs_wire.h: a ``<IIII`` header of type, req_id,
tx_id and payload length, then NUL-terminated strings) over such a socket.

What it models, from xenstored's behaviour:

- a tree of nodes, each with a value and children in creation order; a write
  creates missing ancestors with empty values, rm removes a whole subtree;
- relative paths: clients send them as given, and xenstored prefixes the
  connection's home ``/local/domain/<domid>`` (``get_implicit_path``: a guest's
  kernel connection resolves ``device/console/1/name`` under its own domain).
  ``domid`` (default 0, what a socket client of a real xenstored gets) lets a
  test play a guest;
- xenstored's path rules (characters ``A-Za-z0-9-/_@``, no ``//``, no trailing
  ``/``): a bad path is EINVAL, a missing node ENOENT;
- transactions, as a private copy of the tree committed whole on success.

What it does not model: permissions (every request is allowed; GET_PERMS
answers "owner 0, no access for others"), watches, quotas, conflict detection
between transactions (a commit never fails with EAGAIN), or domain
introduction.  Such requests get the error a real xenstored would send for an
unknown request, EINVAL.
"""

from __future__ import annotations

import os
import re
import socketserver
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len (xs_wire.h struct xsd_sockmsg)
MAX_PAYLOAD = 4096  # XENSTORE_PAYLOAD_MAX

XS_DIRECTORY, XS_READ, XS_GET_PERMS = 1, 2, 3
XS_TRANSACTION_START, XS_TRANSACTION_END = 6, 7
XS_GET_DOMAIN_PATH, XS_WRITE, XS_MKDIR, XS_RM = 10, 11, 12, 13
XS_ERROR = 16

_VALID_PATH = re.compile(r"/|(/[A-Za-z0-9_@-]+)+")


class XenstoreError(Exception):
    """A request failed; ``errno_name`` is the string xenstored sends (``ENOENT``...)."""

    def __init__(self, errno_name: str) -> None:
        super().__init__(errno_name)
        self.errno_name = errno_name


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class XenstoreStandin:
    """The tree plus a threaded server on ``socket_path``; a context manager.

    ``tree`` maps paths (absolute, or relative to the home of ``domid``) to
    values.  ``client_env()`` is the environment for the real clients.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        domid: int = 0,
        tree: Mapping[str, str | bytes] | None = None,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        if len(os.fsencode(self.socket_path)) > 107:  # sun_path holds 108 bytes with the NUL
            raise ValueError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.domid = domid
        self.home = f"/local/domain/{domid}"
        self._lock = threading.Lock()
        self._nodes: dict[str, bytes] = {"/": b""}  # insertion order = child order
        self._transactions: dict[int, dict[str, bytes]] = {}
        self._next_tx = 1
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        for path, value in (tree or {}).items():
            self.write(path, value)

    # -- the tree, also used directly by tests and the demo -------------------

    def resolve(self, path: str) -> str:
        full = path if path.startswith("/") else f"{self.home}/{path}"
        if not _VALID_PATH.fullmatch(full):
            raise XenstoreError("EINVAL")
        return full

    def read(self, path: str, tx: int = 0) -> bytes:
        nodes = self._tree(tx)
        try:
            return nodes[self.resolve(path)]
        except KeyError:
            raise XenstoreError("ENOENT") from None

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
        except XenstoreError:
            return False
        return True

    def write(self, path: str, value: str | bytes, tx: int = 0) -> None:
        full = self.resolve(path)
        with self._lock:
            nodes = self._tree(tx)
            self._create(nodes, _parent(full))
            nodes[full] = value.encode() if isinstance(value, str) else value

    def mkdir(self, path: str, tx: int = 0) -> None:
        with self._lock:
            self._create(self._tree(tx), self.resolve(path))

    def rm(self, path: str, tx: int = 0) -> None:
        full = self.resolve(path)
        if full == "/":
            raise XenstoreError("EINVAL")
        with self._lock:
            nodes = self._tree(tx)
            if full not in nodes:
                # xenstored acks removing a missing node whose parent exists.
                if _parent(full) in nodes:
                    return
                raise XenstoreError("ENOENT")
            for key in [k for k in nodes if k == full or k.startswith(full + "/")]:
                del nodes[key]

    def directory(self, path: str, tx: int = 0) -> list[str]:
        full = self.resolve(path)
        with self._lock:
            nodes = self._tree(tx)
            if full not in nodes:
                raise XenstoreError("ENOENT")
            return [k.rsplit("/", 1)[1] for k in nodes if k != "/" and _parent(k) == full]

    def _create(self, nodes: dict[str, bytes], full: str) -> None:
        if full not in nodes:
            self._create(nodes, _parent(full))
            nodes[full] = b""

    def _tree(self, tx: int) -> dict[str, bytes]:
        if tx == 0:
            return self._nodes
        try:
            return self._transactions[tx]
        except KeyError:
            raise XenstoreError("ENOENT") from None

    # -- the wire ---------------------------------------------------------------

    def handle(self, msg_type: int, tx: int, payload: bytes) -> tuple[int, bytes]:
        """Answer one request: (reply type, reply payload)."""
        args = payload.split(b"\0")
        first = args[0].decode("utf-8", "surrogateescape")
        try:
            if msg_type == XS_READ:
                return msg_type, self.read(first, tx)
            if msg_type == XS_DIRECTORY:
                return msg_type, b"".join(n.encode() + b"\0" for n in self.directory(first, tx))
            if msg_type == XS_WRITE:
                # path NUL value: the value is the rest of the payload, no NUL of its own.
                path, _, value = payload.partition(b"\0")
                self.write(path.decode("utf-8", "surrogateescape"), value, tx)
            elif msg_type == XS_MKDIR:
                self.mkdir(first, tx)
            elif msg_type == XS_RM:
                self.rm(first, tx)
            elif msg_type == XS_GET_PERMS:
                self.read(first, tx)
                return msg_type, b"n0\0"
            elif msg_type == XS_GET_DOMAIN_PATH:
                return msg_type, f"/local/domain/{int(first)}".encode() + b"\0"
            elif msg_type == XS_TRANSACTION_START:
                with self._lock:
                    tx_id, self._next_tx = self._next_tx, self._next_tx + 1
                    self._transactions[tx_id] = dict(self._nodes)
                return msg_type, str(tx_id).encode() + b"\0"
            elif msg_type == XS_TRANSACTION_END:
                with self._lock:
                    copy = self._transactions.pop(tx, None)
                    if copy is None:
                        raise XenstoreError("ENOENT")
                    if first == "T":
                        self._nodes = copy
            else:
                raise XenstoreError("EINVAL")
        except (XenstoreError, ValueError) as exc:
            name = exc.errno_name if isinstance(exc, XenstoreError) else "EINVAL"
            return XS_ERROR, name.encode() + b"\0"
        return msg_type, b"OK\0"

    # -- the server -------------------------------------------------------------

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["XENSTORED_PATH"] = self.socket_path
        return env

    def start(self) -> XenstoreStandin:
        standin = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                stream = self.request.makefile("rwb")
                while True:
                    header = stream.read(HEADER.size)
                    if len(header) < HEADER.size:
                        return
                    msg_type, req_id, tx, length = HEADER.unpack(header)
                    if length > MAX_PAYLOAD:
                        return  # xenstored drops a connection that sends an oversized message
                    payload = stream.read(length)
                    reply_type, reply = standin.handle(msg_type, tx, payload)
                    stream.write(HEADER.pack(reply_type, req_id, tx, len(reply)) + reply)
                    stream.flush()

        server = socketserver.ThreadingUnixStreamServer(self.socket_path, Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        Path(self.socket_path).unlink(missing_ok=True)

    def __enter__(self) -> XenstoreStandin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
