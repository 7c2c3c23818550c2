"""A stand-in for Xen's device-model QEMU serving one PV channel (tests and demo only).

What it replaces: on a Xen host, a channel ``<channel><source mode='bind'
path=P/>`` makes the domain's QEMU (qemu-system-i386 -xen-domid N) open
``-chardev socket,path=P,server=on,wait=off`` and connect it to the PV
console backend (hw/char/xen_console.c), whose shared ring the guest sees
as ``/dev/hvcN``.  No hypervisor runs here, so this class plays both parts:
it listens on ``P`` and bridges the one accepted client to the master side
of a pty pair; the pty's slave (:attr:`BackendStandin.guest_tty`) stands for
the guest's ``/dev/hvcN``.

Modelled, because the dom0 client and the broker depend on it:

- one client at a time: while a client is connected, further connects wait
  in the listen backlog and get nothing until the first one leaves (QEMU's
  char-socket stops watching the listener while connected);
- guest output written while no client is connected is kept (bounded,
  oldest dropped) and delivered to the next client: xen_console keeps a
  backlog when the chardev write fails, and since QEMU 5.1 tcp_chr_write
  fails with EIO while disconnected.  That backlog is where a new client's
  stale bytes come from;
- dom0 output waits in the pty while no guest reads it, like bytes in the
  console ring (backpressure instead of loss);
- the domain going away (:meth:`stop`): the socket file disappears and the
  client sees EOF; :meth:`start` again is the next boot.

Not modelled: the ring's small size (the pty buffers more), event channels
and xenstore (``device/console/N``), QEMU's telnet/TLS/reconnect options,
and hvc's tty defaults (the slave is put in raw mode here; a real guest
agent must do that itself - see xen_channel_backend/guest/agent.py).

Run ``python tests/backend_standin.py SOCKET_PATH`` to keep one alive for
a demo; it prints the guest tty path and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import threading
import tty
from collections.abc import Iterator
from types import TracebackType

#: Bound on guest output kept while no client is connected.
BACKLOG_LIMIT = 64 * 1024
_READ_SIZE = 65536


class BackendStandin:
    """Listen on ``socket_path`` like QEMU; bridge one client to a pty."""

    def __init__(self, socket_path: str | os.PathLike[str], *, raw: bool = True) -> None:
        self.socket_path = os.fspath(socket_path)
        self.raw = raw
        self.guest_tty = ""
        self.connections = 0  # clients accepted so far (for tests)
        self._master = -1
        self._slave = -1
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = -1
        self._wake_w = -1
        # Size of the guest -> client backlog, published by the serving thread
        # so tests can wait for guest output to be buffered (wait_buffered).
        self._backlog_size = 0
        self._backlog_changed = threading.Condition()

    # --- lifecycle -------------------------------------------------------

    def start(self) -> BackendStandin:
        """Create the pty (first start only) and the listening socket; serve in a thread."""
        if self._thread is not None:
            raise RuntimeError("stand-in already running")
        if self._master < 0:
            self._master, self._slave = os.openpty()
            if self.raw:
                tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.guest_tty = os.ttyname(self._slave)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(8)
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._serve, name=f"standin:{self.socket_path}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """QEMU exits: the socket file goes, the client sees EOF; the pty survives."""
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def close(self) -> None:
        """Stop and release the pty too (the domain is destroyed)."""
        self.stop()
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> BackendStandin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open_guest(self) -> int:
        """Open the guest end like an agent opens /dev/hvcN (read/write, no controlling tty)."""
        return os.open(self.guest_tty, os.O_RDWR | os.O_NOCTTY)

    def wait_buffered(self, count: int, timeout: float) -> None:
        """Block until at least ``count`` bytes of guest output wait in the backlog.

        While no client is connected, this is QEMU keeping guest output for the
        next client: a test that waits for its stale bytes here knows a client
        connecting afterwards meets them first.  Raises TimeoutError if they
        do not arrive within ``timeout`` seconds.
        """
        if count > BACKLOG_LIMIT:
            raise ValueError(f"the backlog holds at most {BACKLOG_LIMIT} bytes, not {count}")
        with self._backlog_changed:
            if not self._backlog_changed.wait_for(lambda: self._backlog_size >= count, timeout):
                raise TimeoutError(
                    f"{self._backlog_size} of {count} guest bytes buffered after {timeout} s"
                )

    def _publish_backlog(self, backlog: bytearray) -> None:
        with self._backlog_changed:
            self._backlog_size = len(backlog)
            self._backlog_changed.notify_all()

    # --- the bridge ------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        listener = self._listener
        master = self._master
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(master, selectors.EVENT_READ, "guest")
        sel.register(listener, selectors.EVENT_READ, "listen")
        client: socket.socket | None = None
        backlog = bytearray()  # guest -> client bytes not yet delivered
        to_guest = bytearray()  # client -> guest bytes the pty has not taken yet

        def drop_client() -> None:
            nonlocal client
            assert client is not None
            with contextlib.suppress(KeyError):
                sel.unregister(client)
            client.close()
            client = None
            sel.register(listener, selectors.EVENT_READ, "listen")

        try:
            while True:
                # Backpressure both ways, as QEMU stops draining the ring while
                # the chardev cannot take more: read the guest only while the
                # client keeps up (or nobody is connected: then the backlog is
                # trimmed instead), read the client only once the pty took all.
                guest_events = selectors.EVENT_WRITE if to_guest else 0
                if client is None or len(backlog) < BACKLOG_LIMIT:
                    guest_events |= selectors.EVENT_READ
                _interest(sel, master, guest_events, "guest")
                if client is not None:
                    client_events = (0 if to_guest else selectors.EVENT_READ) | (
                        selectors.EVENT_WRITE if backlog else 0
                    )
                    _interest(sel, client, client_events, "client")
                for key, events in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "listen":
                        client, _ = listener.accept()
                        client.setblocking(False)
                        self.connections += 1
                        # One client at a time: stop accepting until it leaves.
                        sel.unregister(listener)
                    elif key.data == "guest":
                        if events & selectors.EVENT_READ:
                            with contextlib.suppress(BlockingIOError):
                                backlog += os.read(master, _READ_SIZE)
                            if client is None:
                                del backlog[: max(0, len(backlog) - BACKLOG_LIMIT)]
                            self._publish_backlog(backlog)
                        if events & selectors.EVENT_WRITE and to_guest:
                            with contextlib.suppress(BlockingIOError):
                                del to_guest[: os.write(master, to_guest)]
                    elif key.data == "client" and client is not None:
                        if events & selectors.EVENT_WRITE and backlog:
                            try:
                                del backlog[: client.send(backlog)]
                                self._publish_backlog(backlog)
                            except BlockingIOError:
                                pass
                            except OSError:
                                drop_client()
                                continue
                        if events & selectors.EVENT_READ:
                            try:
                                data = client.recv(_READ_SIZE)
                            except BlockingIOError:
                                continue
                            except OSError:
                                data = b""
                            if not data:
                                drop_client()
                                continue
                            to_guest += data
        finally:
            if client is not None:
                client.close()
            listener.close()
            sel.close()
            self._listener = None


def _interest(
    sel: selectors.BaseSelector, fileobj: int | socket.socket, events: int, data: str
) -> None:
    """Watch ``fileobj`` for exactly ``events`` (none: not at all)."""
    try:
        sel.get_key(fileobj)
    except KeyError:
        if events:
            sel.register(fileobj, events, data)
        return
    if events:
        sel.modify(fileobj, events, data)
    else:
        sel.unregister(fileobj)


@contextlib.contextmanager
def running(socket_path: str | os.PathLike[str]) -> Iterator[BackendStandin]:
    """``with running(path) as qemu:`` - a started stand-in, closed afterwards."""
    standin = BackendStandin(socket_path)
    with standin:
        yield standin


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: backend_standin.py SOCKET_PATH", file=sys.stderr)
        return 2
    standin = BackendStandin(args[0]).start()
    print(standin.guest_tty, flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    standin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
