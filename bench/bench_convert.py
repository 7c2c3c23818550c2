"""Translator speed, as ratios against baselines measured in the same run.

1. In process, on 10,000 typical domain XMLs (about 3 KB, 4 channels each):
   - ``--to xl``: what ``xen-channel convert --to xl`` runs once it has read
     its input: the safe parse, reading the channels by the table into
     validated Channels, and formatting the ``channel =`` line
     (``convert.xl_channels`` + ``xlcfg.format_setting``);
   - ``--to libvirt --into``: parse the xl.cfg + parse the domain + replace
     its channels + serialize;
   each against a bare lxml parse + serialize of the same documents in the
   same process (so the same interpreter and flags).  The works take turns on
   chunks of 250 documents and each chunk counts its best of ``--rounds``;
   the whole measurement is repeated ``--runs`` times (at least 3) and the
   spread is printed.  Goal (issue 12): ``--to xl`` at most 1.5x.
2. The whole ``convert --to xl`` process against the bare interpreter start,
   both ``python -I -S`` (the measured one puts the package and lxml on its
   path by hand, as an installed package would have them, without the
   development venv's .pth files), alternating, median of each run.

Run: ``.venv/bin/python bench/bench_convert.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import lxml
from lxml import etree

from xen_channel_backend import domxml, xlcfg
from xen_channel_backend.convert import xen_channels_from_domain, xl_channels
from xen_channel_backend.model import Target

ROOT = Path(__file__).resolve().parent.parent
Work = Callable[[list[tuple[bytes, bytes]]], None]
#: The interpreter with the flags both processes run with: no site, no venv.
PYTHON = [sys.executable, "-I", "-S"]
#: The package and lxml on the path by hand, then the CLI.
CLI = [
    *PYTHON,
    "-c",
    f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(lxml.__file__).parent.parent)!r}]; "
    "from xen_channel_backend.cli import main; sys.exit(main())",
]
BASELINE = "lxml.etree.tostring(lxml.etree.fromstring(xml, XMLParser(resolve_entities=False, "
BASELINE += "no_network=True)), encoding='unicode')"

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


def process_medians(commands: dict[str, list[str]], count: int) -> dict[str, float]:
    """Median wall time of each command over ``count`` runs, the commands alternating."""
    # As installed: byte code cached (pip compiles it; a sandbox may set
    # PYTHONDONTWRITEBYTECODE, which would add compiling every module to
    # every run), and one warm-up run of each to write the cache.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for warm_up in (True, *([False] * count)):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
            if not warm_up:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f}x, "
        f"{min(values):.2f}x - {max(values):.2f}x over {len(values)} runs"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 documents, 3 rounds")
    parser.add_argument("--runs", type=int, default=3, help="repeat everything (default 3)")
    args = parser.parse_args()
    count, rounds, processes = (1000, 3, 5) if args.quick else (10_000, 5, 20)
    docs = documents(count)
    size = statistics.mean(len(xml) for xml, _ in docs)
    print(f"{count} domain XMLs, {size:.0f} bytes on average, 4 Xen channels each")
    print(f"in-process baseline, per document, same process: {BASELINE}")
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]})")

    xl_ratios, into_ratios = [], []
    for run in range(1, args.runs + 1):
        times = interleaved(
            docs, {"base": bare_lxml, "xl": to_xl, "into": to_libvirt_into}, repeats=rounds
        )
        base, xl, into = times["base"], times["xl"], times["into"]
        xl_ratios.append(xl / base)
        into_ratios.append(into / base)
        print(
            f"run {run}: baseline {base / count * 1e6:.0f} us/doc, "
            f"--to xl {xl / count * 1e6:.0f} us/doc ({xl / base:.2f}x), "
            f"--to libvirt --into {into / count * 1e6:.0f} us/doc ({into / base:.2f}x)"
        )
    verdict = "met" if statistics.median(xl_ratios) <= 1.5 else "MISSED"
    print(f"convert --to xl in process       : {spread(xl_ratios)} (<= 1.5x: {verdict})")
    print(f"convert --to libvirt --into      : {spread(into_ratios)}")

    baseline_cmd = [*PYTHON, "-c", "pass"]
    print(f"process baseline: {' '.join(baseline_cmd)}")
    shown = ' '.join(CLI[:3])
    print(f"process measured: {shown} -c '<path setup; cli.main()>' convert --to xl FILE")
    process_ratios, medians = [], []
    with tempfile.TemporaryDirectory() as tmp:
        domain = Path(tmp) / "domain.xml"
        domain.write_bytes(docs[0][0])
        for _run in range(args.runs):
            got = process_medians(
                {"python": baseline_cmd, "convert": [*CLI, "convert", "--to", "xl", str(domain)]},
                processes,
            )
            process_ratios.append(got["convert"] / got["python"])
            medians.append((got["python"], got["convert"]))
    print(
        "whole process vs interpreter start: "
        + ", ".join(f"{c * 1000:.0f} ms vs {p * 1000:.0f} ms" for p, c in medians)
        + f"; {spread(process_ratios)} (medians of {processes})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
