"""Shared helpers for the hook tests: a short private run directory and domain XML.

The run directory must stay short (paths.MAX_RUNDIR is 52 bytes), so it is
made with mkdtemp under /dev/shm (or /tmp) rather than under pytest's long
tmp_path.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import uuid as uuid_module
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import pytest

#: libvirt's hook environment: nothing but these (background.md §1, tested on a real libvirtd).
HOOK_ENV_KEYS = ("HOME", "LC_ALL", "PATH")


@dataclass(frozen=True)
class HookHost:
    """A private run directory, an extra allowed root and the settings file naming them."""

    base: str
    rundir: str
    extra_root: str
    config: str
    group: str

    @property
    def environ(self) -> dict[str, str]:
        """For hook.main(environ=...): only the settings file, like the shim sets it."""
        return {"XEN_CHANNEL_CONFIG": self.config}

    def domain_dir(self, uuid: str) -> str:
        return f"{self.rundir}/{uuid}"


def make_host(group: str = "nogroup") -> HookHost:
    # tmpfs when there is one, like /run on a real host: the registry fsyncs
    # every write, which is free on tmpfs and slow on this sandbox's disk.
    base = tempfile.mkdtemp(prefix="xcb", dir="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    rundir = os.path.join(base, "run")
    extra = os.path.join(base, "extra")
    os.mkdir(extra)
    config = os.path.join(base, "xen-channel.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(
            f"[xen-channel]\nrundir = {rundir}\ngroup = {group}\nallowed_roots = {extra}\n"
        )
    return HookHost(base=base, rundir=rundir, extra_root=extra, config=config, group=group)


@pytest.fixture
def host() -> Iterator[HookHost]:
    made = make_host()
    try:
        yield made
    finally:
        shutil.rmtree(made.base, ignore_errors=True)


def new_uuid() -> str:
    return str(uuid_module.uuid4())


def channel_xml(
    source_type: str, target: str, name: str | None, path: str | None = None
) -> str:
    source = ""
    if path is not None:
        mode = " mode='bind'" if source_type == "unix" else ""
        source = f"<source{mode} path={quoteattr(path)}/>"
    name_attr = f" name={quoteattr(name)}" if name is not None else ""
    return f"<channel type='{source_type}'>{source}<target type='{target}'{name_attr}/></channel>"


def domain_xml(
    name: str, uuid: str | None, channels: Sequence[str], domain_type: str = "xen"
) -> bytes:
    uuid_line = f"<uuid>{uuid}</uuid>" if uuid else ""
    devices = "\n    ".join(channels)
    return (
        f"<domain type='{domain_type}'>\n  <name>{escape(name)}</name>\n  {uuid_line}\n"
        f"  <memory unit='KiB'>65536</memory>\n  <devices>\n    {devices}\n  </devices>\n"
        "</domain>\n"
    ).encode()


def libvirt_env() -> dict[str, str]:
    """The environment libvirtd gives a hook: HOME, LC_ALL=C and its PATH."""
    return {
        "HOME": "/root",
        "LC_ALL": "C",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def install_shims(hooks_dir: str, config: str) -> None:
    """Install the shims with the real ``xen-channel install-hooks`` command."""
    from xen_channel_backend import cli

    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["install-hooks", "--hooks-dir", hooks_dir, "--config", config],
                    stdout=out, stderr=err)
    assert code == 0, err.getvalue()


def run_shim(
    shim: str, domain: str, op: str, subop: str, xml: bytes, extra: str = "-"
) -> subprocess.CompletedProcess[bytes]:
    """Call a shim exactly as libvirtd does: argv, XML on stdin, cut environment."""
    return subprocess.run(
        [shim, domain, op, subop, extra], input=xml, capture_output=True, env=libvirt_env(),
        timeout=60, check=False,
    )
