"""A guest moved from KVM keeps its agent: virtio qemu-ga channel in, a working agent out.

End to end with the real parts: a KVM domain's virtio ``org.qemu.guest_agent.0``
channel gets a socket path from ``fill --all-targets``, becomes a Xen channel
through ``convert --to xl --retarget-virtio`` and back into a Xen domain's
XML through ``convert --to libvirt --into``; the libxl hook (hook.main, as
libvirtd calls it) registers that path at prepare/start/started; the QEMU
stand-in listens there with Debian's real qemu-ga on its pty (dangerous
commands blocked); and ``xen-channel domifaddr``/``guestinfo`` find it by the
domain's name through the registry.  At release the record goes, and the
commands say so in one line.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from backend_standin import BackendStandin
from hook_fixtures import HookHost, domain_xml, host
from qga_fixtures import QemuGa, require_qemu_ga

from xen_channel_backend import hook
from xen_channel_backend.cli import main
from xen_channel_backend.qga import AGENT_CHANNEL

__all__ = ["host"]  # the fixture, re-exported for pytest
pytestmark = pytest.mark.integration

UUID = "c2a9e8f1-3d47-4b6a-9e05-81f2d7c46a3b"
KVM_XML = f"""<domain type='kvm'>
  <name>app01</name>
  <uuid>{UUID}</uuid>
  <memory unit='KiB'>2097152</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>
"""


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def call_hook(h: HookHost, op: str, subop: str, xml: bytes) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = hook.main(["libxl", "app01", op, subop, "-"], io.BytesIO(xml), out, err, h.environ)
    assert code == 0, err.getvalue()


def test_a_kvm_guests_agent_channel_survives_the_move_to_xen(
    host: HookHost, tmp_path: Path
) -> None:
    require_qemu_ga()
    kvm = tmp_path / "app01-kvm.xml"
    kvm.write_text(KVM_XML)
    filled = tmp_path / "app01-filled.xml"
    code, _out, err = cli("fill", "--all-targets", "--rundir", host.rundir, str(kvm),
                          "-o", str(filled))
    assert code == 0, err
    path = f"{host.rundir}/{UUID}/{AGENT_CHANNEL}"
    assert f'path="{path}"' in filled.read_text()

    cfg = tmp_path / "app01.cfg"
    code, _out, err = cli("convert", "--to", "xl", "--retarget-virtio", str(filled),
                          "-o", str(cfg))
    assert (code, err) == (0, "")
    assert cfg.read_text() == (
        f'channel = [ "connection=socket,path={path},name={AGENT_CHANNEL}" ]\n'
    )

    skeleton = tmp_path / "app01-xen-skeleton.xml"
    skeleton.write_bytes(domain_xml("app01", UUID, []))
    xen = tmp_path / "app01-xen.xml"
    code, _out, err = cli("convert", "--to", "libvirt", "--into", str(skeleton), str(cfg),
                          "-o", str(xen))
    assert code == 0, err
    assert re.search(r"<target type=.xen. name=.org\.qemu\.guest_agent\.0.", xen.read_text())

    xml = xen.read_bytes()
    for op, subop in (("prepare", "begin"), ("start", "begin"), ("started", "begin")):
        call_hook(host, op, subop, xml)
    code, out, err = cli("show", "app01", "--json", "--rundir", host.rundir)
    assert code == 0, err
    assert f'"path": "{path}"' in out  # the hook-visible path is fill's

    with BackendStandin(path) as qemu:
        agent = QemuGa(qemu.guest_tty, str(tmp_path / "qga"))
        try:
            code, out, err = cli("domifaddr", "app01", "--rundir", host.rundir)
            assert (code, err) == (0, "") and "127.0.0.1/8" in out
            code, out, err = cli("guestinfo", "app01", "--hostname", "--rundir", host.rundir)
            assert code == 0 and out.startswith("hostname            : ")
        finally:
            agent.stop()
    call_hook(host, "stopped", "end", xml)
    call_hook(host, "release", "end", xml)
    code, out, err = cli("domifaddr", "app01", "--rundir", host.rundir)
    assert (code, out) == (1, "") and "no registered domain 'app01'" in err
