"""Translator speed, as ratios against baselines measured in the same run.

1. In process: 10,000 typical domain XMLs (about 3 KB, 4 channels each)
   - to xl: parse (safe parser) + read channels + format the ``channel =`` line;
   - to libvirt ``--into``: parse the xl.cfg + parse the domain + replace its
     channels + serialize;
   each against a bare lxml parse + serialize of the same documents.
   Goal (issue 2): at most 1.5x.
2. The whole ``xen-channel convert --to xl`` process against ``python3 -c pass``
   (the interpreter start every command pays), median of repeated runs.

Run: ``.venv/bin/python bench/bench_convert.py [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from xen_channel_backend import domxml, xlcfg
from xen_channel_backend.convert import xen_channels_from_domain, xl_channels
from xen_channel_backend.model import Target

ROOT = Path(__file__).resolve().parent.parent
Work = Callable[[list[tuple[bytes, bytes]]], None]
CLI = [sys.executable, "-m", "xen_channel_backend"]

DOMAIN = """<domain type='xen'>
  <name>web-{index:05d}</name>
  <uuid>{uuid}</uuid>
  <title>Benchmark guest {index}</title>
  <description>A typical Xen PV guest with four channels (config, guest agent,
    metrics, debug console), about 3 KB of XML, as a management tool would define it.
  </description>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <bootloader>/usr/bin/pygrub</bootloader>
  <os>
    <type arch='x86_64' machine='xenpv'>linux</type>
  </os>
  <features>
    <pae/>
  </features>
  <cpu mode='host-passthrough'/>
  <clock offset='utc' adjustment='reset'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>restart</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/xen/images/web-{index:05d}-root.qcow2'/>
      <target dev='xvda' bus='xen'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/xen/images/web-{index:05d}-data.img'/>
      <target dev='xvdb' bus='xen'/>
      <serial>data-{index:05d}</serial>
    </disk>
    <controller type='xenbus' index='0'/>
    <interface type='bridge'>
      <mac address='00:16:3e:2a:{a:02x}:{b:02x}'/>
      <source bridge='xenbr0'/>
      <script path='vif-bridge'/>
    </interface>
    <interface type='bridge'>
      <mac address='00:16:3e:3b:{a:02x}:{b:02x}'/>
      <source bridge='xenbr1'/>
      <script path='vif-bridge'/>
    </interface>
    <console type='pty'>
      <target type='xen' port='0'/>
    </console>
    <channel type='unix'>
      <source mode='bind' path='/run/xen-channel/{uuid}/org.example.config.0'/>
      <target type='xen' name='org.example.config.0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/run/xen-channel/{uuid}/org.qemu.guest_agent.0'/>
      <target type='xen' name='org.qemu.guest_agent.0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/run/xen-channel/{uuid}/org.example.metrics.0'/>
      <target type='xen' name='org.example.metrics.0'/>
    </channel>
    <channel type='pty'>
      <target type='xen' name='org.example.debug.0'/>
    </channel>
    <input type='mouse' bus='xen'/>
    <input type='keyboard' bus='xen'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video>
      <model type='xen' vram='16384' heads='1' primary='yes'/>
    </video>
    <memballoon model='xen'/>
  </devices>
  <seclabel type='none' model='none'/>
  <metadata>
    <app:inventory xmlns:app='urn:example:inventory:1'>
      <app:owner>team-web</app:owner>
      <app:cost-centre>cc-4711</app:cost-centre>
      <app:backup policy='nightly' retention='14d'/>
    </app:inventory>
  </metadata>
</domain>
"""


class _Quiet:
    def warn(self, message: str) -> None:
        raise AssertionError(message)


def documents(count: int) -> list[tuple[bytes, bytes]]:
    """(domain XML, matching xl.cfg) pairs, each domain different."""
    pairs = []
    for index in range(count):
        text = DOMAIN.format(
            index=index, uuid=uuid.UUID(int=index + 1), a=index // 256 % 256, b=index % 256
        ).encode()
        root = domxml.parse_domain(text, "gen").getroot()
        chans = xen_channels_from_domain(root, False, _Quiet())  # type: ignore[arg-type]
        cfg = f'name = "web-{index:05d}"\nmemory = 1024\n{xlcfg.format_setting(chans)}\n'
        pairs.append((text, cfg.encode()))
    return pairs


def bare_lxml(docs: list[tuple[bytes, bytes]]) -> None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    for xml, _cfg in docs:
        etree.tostring(etree.fromstring(xml, parser), encoding="unicode")


def to_xl(docs: list[tuple[bytes, bytes]]) -> None:
    quiet = _Quiet()
    for xml, _cfg in docs:
        xlcfg.format_setting(xl_channels(xml, "bench", False, quiet))  # type: ignore[arg-type]


def to_libvirt_into(docs: list[tuple[bytes, bytes]]) -> None:
    for xml, cfg in docs:
        channels = xlcfg.read_channels(xlcfg.parse_config(cfg, "bench.cfg")).channels
        tree = domxml.parse_domain(xml, "bench")
        domxml.replace_channels(tree.getroot(), channels, (Target.XEN,))
        domxml.serialize(tree)


def interleaved(
    docs: list[tuple[bytes, bytes]], works: dict[str, Work], repeats: int, chunk: int = 250
) -> dict[str, float]:
    """Seconds per work for all of ``docs``: the sum over chunks of the best of ``repeats``.

    The works take turns on each chunk, so a burst of load from other
    processes hits baseline and candidates alike instead of skewing a ratio.
    """
    totals = dict.fromkeys(works, 0.0)
    for start in range(0, len(docs), chunk):
        part = docs[start : start + chunk]
        best = dict.fromkeys(works, float("inf"))
        for _ in range(repeats):
            for name, work in works.items():
                began = time.perf_counter()
                work(part)
                best[name] = min(best[name], time.perf_counter() - began)
        for name in works:
            totals[name] += best[name]
    return totals


def process_median(argv: list[str], runs: int) -> float:
    # As installed: byte code cached (pip compiles it; a sandbox may set
    # PYTHONDONTWRITEBYTECODE, which would add compiling every module to
    # every run), and one warm-up run to write the cache.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    quick = "--quick" in sys.argv
    count, rounds, runs = (1000, 3, 5) if quick else (10_000, 5, 20)
    docs = documents(count)
    size = statistics.mean(len(xml) for xml, _ in docs)
    print(f"{count} domain XMLs, {size:.0f} bytes on average, 4 Xen channels each")

    times = interleaved(
        docs, {"base": bare_lxml, "xl": to_xl, "into": to_libvirt_into}, repeats=rounds
    )
    base, xl, into = times["base"], times["xl"], times["into"]
    print(f"bare lxml parse+serialize : {base:.3f} s ({base / count * 1e6:.0f} us/doc)")
    verdict = "met" if xl / base <= 1.5 else "MISSED"
    print(f"convert --to xl           : {xl:.3f} s  ratio {xl / base:.2f}x (<= 1.5x: {verdict})")
    print(f"convert --to libvirt --into: {into:.3f} s  ratio {into / base:.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        domain = Path(tmp) / "domain.xml"
        domain.write_bytes(docs[0][0])
        python = process_median([sys.executable, "-c", "pass"], runs)
        command = process_median([*CLI, "convert", "--to", "xl", str(domain)], runs)
    print(f"python3 -c pass           : {python * 1000:.1f} ms (median of {runs})")
    print(f"xen-channel convert --to xl: {command * 1000:.1f} ms  ratio {command / python:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
