"""Monitor speed (issue 4, "Speed"), on libvirt's test:///default driver, in-process.

1. Event to live metadata: the time from a domain's ``started`` event (the
   moment ``createXML`` returns; the test driver queues the event then) to
   its live ``<xcb:channels state="running">`` being written by the monitor's
   real loop in a thread.  Baseline: the same domain start followed by our
   own direct ``setMetadata(LIVE)`` + ``metadata(LIVE)`` round trip, i.e. the
   least any writer has to do.  Ratio of the medians.
2. Reconcile with 1,000 registered domains (a record and a running domain
   each): a cold pass (every domain synced: live XML parsed, metadata
   written), a steady pass (nothing changed), and a pass that removes 1,000
   stale records.  Baseline: what any reconcile must read -
   ``Registry.list()`` plus ``listAllDomains()``.

Records live on tmpfs (/dev/shm) when present, as /run is in production.
Run: .venv/bin/python bench/bench_monitor.py [--domains 1000] [--rounds 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid as uuidlib
from typing import Any

import libvirt

from xen_channel_backend import metadata
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.monitor import Monitor
from xen_channel_backend.registry import ChannelRecord, DomainRecord, Registry
from xen_channel_backend.settings import Settings

URI = "test:///default"
CHANNELS = (
    Channel("org.qemu.guest_agent.0", Connection.PTY, target=Target.VIRTIO),
    Channel("org.example.config.0", Connection.PTY, target=Target.VIRTIO),
)


def domain_xml(name: str, uuid: str) -> str:
    devices = "".join(
        f"<channel type='pty'><target type='virtio' name='{c.name}'/></channel>" for c in CHANNELS
    )
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
        f"<metadata>{metadata_element_text()}</metadata>"
        "<memory>65536</memory><os><type>hvm</type></os>"
        f"<devices>{devices}</devices></domain>"
    )


def metadata_element_text() -> str:
    from lxml import etree

    return etree.tostring(metadata.metadata_element(CHANNELS), encoding="unicode")


class TimedMonitor(Monitor):
    """The real monitor, noting when each domain's live metadata was written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: dict[str, float] = {}
        self.done = threading.Condition()

    def _sync_running(self, domain: Any, uuid: str) -> None:
        super()._sync_running(domain, uuid)
        with self.done:
            self.written[uuid] = time.perf_counter()
            self.done.notify_all()


def bench_event_latency(conn: Any, settings: Settings, rounds: int) -> tuple[float, float]:
    monitor = TimedMonitor(URI, settings, Registry(settings.rundir), reconcile_interval=3600)
    thread = threading.Thread(target=monitor.serve, daemon=True)
    thread.start()
    while monitor.conn is None:
        time.sleep(0.01)
    latencies: list[float] = []
    direct: list[float] = []
    try:
        for index in range(rounds):
            # Monitor: start a domain, wait for the monitor to have written it.
            uuid = str(uuidlib.uuid4())
            domain = conn.createXML(domain_xml(f"bench-ev-{index}", uuid), 0)
            started = time.perf_counter()
            with monitor.done:
                monitor.done.wait_for(lambda u=uuid: u in monitor.written, timeout=30)  # type: ignore[misc]
            latencies.append(monitor.written[uuid] - started)
            check = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE,
                                    libvirt.VIR_DOMAIN_AFFECT_LIVE)
            assert metadata.parse_metadata(check).state == "running"
            domain.destroy()
            # Baseline: a second domain, written directly by us.
            uuid = str(uuidlib.uuid4())
            domain = conn.createXML(domain_xml(f"bench-direct-{index}", uuid), 0)
            started = time.perf_counter()
            domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                               metadata.metadata_xml(CHANNELS, "running"), metadata.PREFIX,
                               metadata.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE,
                            libvirt.VIR_DOMAIN_AFFECT_LIVE)
            direct.append(time.perf_counter() - started)
            domain.destroy()
    finally:
        monitor.stop()
        thread.join(30)
        monitor.close()
    return statistics.median(latencies), statistics.median(direct)


def bench_reconcile(conn: Any, settings: Settings, count: int) -> dict[str, float]:
    registry = Registry(settings.rundir)
    domains = []
    for index in range(count):
        uuid = str(uuidlib.uuid4())
        name = f"bench-rc-{index}"
        domains.append(conn.createXML(domain_xml(name, uuid), 0))
        registry.put(DomainRecord(uuid, name, "test", "running",
                                  tuple(ChannelRecord.from_channel(c) for c in CHANNELS)))
    monitor = Monitor(URI, settings, registry)
    monitor.connect()
    results: dict[str, float] = {}
    try:
        baseline = []
        for _ in range(5):
            start = time.perf_counter()
            registry.list()
            conn.listAllDomains(0)
            baseline.append(time.perf_counter() - start)
        results["baseline"] = statistics.median(baseline)

        start = time.perf_counter()
        report = monitor.reconcile()
        results["cold"] = time.perf_counter() - start
        assert len(report.synced) >= count, report

        steady = []
        for _ in range(5):
            start = time.perf_counter()
            report = monitor.reconcile()
            steady.append(time.perf_counter() - start)
            assert report.synced == [], report
        results["steady"] = statistics.median(steady)

        for domain in domains:
            domain.destroy()  # transient: gone, leaving stale records
        start = time.perf_counter()
        report = monitor.reconcile()
        results["stale"] = time.perf_counter() - start
        assert len(report.removed) == count, len(report.removed)
    finally:
        monitor.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # one line per action is for operators, not for timing
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    top = tempfile.mkdtemp(prefix="xcb-", dir=base)
    settings = Settings(rundir=os.path.join(top, "run"), group=None,
                        allowed_roots=(os.path.join(top, "run"),))
    conn = libvirt.open(URI)
    try:
        print(f"run directory on {'tmpfs (/dev/shm)' if base else tempfile.gettempdir()}; "
              f"libvirt {URI}")
        monitored, direct = bench_event_latency(conn, settings, args.rounds)
        print(f"started event -> live metadata written by the monitor: median "
              f"{monitored * 1e3:.2f} ms; direct setMetadata+metadata round trip "
              f"{direct * 1e3:.2f} ms; ratio {monitored / direct:.2f}x ({args.rounds} rounds)")
        results = bench_reconcile(conn, settings, args.domains)
        baseline = results["baseline"]
        print(f"reconcile with {args.domains} registered domains; baseline "
              f"(registry list + listAllDomains) {baseline * 1e3:.1f} ms")
        for key, label in (("cold", "first pass, every domain synced"),
                           ("steady", "steady pass, nothing changed"),
                           ("stale", f"{args.domains} stale records removed")):
            print(f"  {label}: {results[key] * 1e3:.1f} ms = {results[key] / baseline:.2f}x "
                  "baseline")
    finally:
        conn.close()
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
