"""The files an installer needs besides the code, shipped as package data.

A wheel or an sdist carries them under ``xen_channel_backend/data/``; they
are found through :mod:`importlib.resources`, so they work from any install
(a venv, ``pip install --user``, a zip).  In a git checkout ``data/`` holds
only symlinks to the top-level ``xml/``, ``guest/``, ``systemd/``,
``hooks/``, ``etc/`` and ``docs/``, which stay the one copy
(docs/packaging.md, "One source of truth").

From a shell, for an installer working from a pip install::

    python3 -m xen_channel_backend.resources list
    python3 -m xen_channel_backend.resources cat systemd/xen-channel-monitor.service \\
        > /etc/systemd/system/xen-channel-monitor.service
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import IO, Any

#: What each installer-facing file is, by its path under ``data/``.
INSTALLER_FILES = {
    "xml/metadata.rng": "RelaxNG schema of the <xcb:channels> metadata",
    "systemd/xen-channel-monitor.service": "systemd unit: xen-channel monitor",
    "systemd/xen-channel-broker.service": "systemd unit: xen-channel broker",
    "hooks/qemu": "libvirt hook shim for the qemu driver, for /usr/bin/python3",
    "hooks/libxl": "libvirt hook shim for the libxl driver, for /usr/bin/python3",
    "etc/xen-channel.conf": "the settings file, every default commented out",
    "guest/60-xen-channel.rules": "guest udev rule: /dev/xen-channel/NAME links",
    "guest/xen-channel-setup": "guest udev helper the rule runs",
    "guest/xen-channel-guest@.service": "guest systemd unit: the agent on one channel",
    "guest/xen-channel-guest": "guest launcher that runs the agent from a copied tree",
    "guest/61-xen-channel-qemu-ga.rules": "guest udev rule: qemu-ga on org.qemu.guest_agent.0",
    "guest/xen-channel-qemu-ga@.service": "guest systemd unit: qemu-ga on that channel's tty",
    "xml/examples/vm.json": "example payload for xen-channel send",
}


def data() -> Traversable:
    """The ``data`` directory inside the installed package."""
    return files(__package__ or "xen_channel_backend").joinpath("data")


def data_file(relative: str) -> Traversable:
    """One file under ``data/`` by its ``/``-separated path; FileNotFoundError if absent."""
    node = data()
    for part in relative.split("/"):
        if part in ("", ".", ".."):
            raise FileNotFoundError(f"not a data file name: {relative!r}")
        node = node.joinpath(part)
    if not node.is_file():
        raise FileNotFoundError(f"no data file {relative!r} in this install")
    return node


def walk(node: Traversable | None = None, prefix: str = "") -> Iterator[str]:
    """Every file under ``data/``, as sorted ``/``-separated relative paths."""
    node = data() if node is None else node
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from walk(child, f"{prefix}{child.name}/")
        else:
            yield prefix + child.name


def main(argv: Sequence[str] | None = None, stdout: IO[Any] | None = None) -> int:
    """``list`` the data files, or ``cat`` one to stdout; 2 for a usage error."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    if args == ["list"]:
        for name in walk():
            note = INSTALLER_FILES.get(name)
            print(f"{name}\t{note}" if note else name, file=out)
        return 0
    if len(args) == 2 and args[0] == "cat":
        try:
            content = data_file(args[1]).read_bytes()
        except FileNotFoundError as exc:
            print(f"xen-channel-resources: error: {exc}", file=sys.stderr)
            return 1
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.write(content)
            buffer.flush()
        else:
            out.write(content.decode("utf-8", "replace"))
        return 0
    print("usage: python3 -m xen_channel_backend.resources list | cat NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
