"""Registry cost against the number of registered domains (issue 3, "Speed").

Measures what a prepare hook does to the registry - claim_paths() for two
socket paths, then put() of the ``preparing`` record - for a new domain on a
registry holding 10,000 domains, against the same on one holding 10.  Both
registries live on tmpfs when /dev/shm exists (the run directory is on
/run, a tmpfs, in production), are measured interleaved in the same run, and
the figure is the ratio of the medians.  Goal: at most 1.2x.

Also reports get() by UUID and by name, which the hooks and ``show`` use.

Run: .venv/bin/python bench/bench_registry.py [--domains 10000] [--ops 400]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable

from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.registry import PREPARING, ChannelRecord, DomainRecord, Registry

GOAL = 1.2


def domain(index: int, rundir: str, tag: str = "d") -> DomainRecord:
    uuid = str(uuidlib.UUID(int=(1 if tag == "d" else 2) << 64 | index))
    channels = tuple(
        ChannelRecord(Channel(name, Connection.SOCKET, f"{rundir}/{uuid}/{name}",
                              target=Target.XEN), created_dir=True)
        for name in ("org.qemu.guest_agent.0", "org.example.config.0")
    )
    return DomainRecord(uuid, f"{tag}{index}", "qemu", PREPARING, channels)


def populate(rundir: str, count: int) -> Registry:
    registry = Registry(rundir)
    for i in range(count):
        record = domain(i, rundir)
        registry.claim_paths(record)
        registry.put(record)
    return registry


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=10)
    parser.add_argument("--ops", type=int, default=400)
    args = parser.parse_args()

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    top = tempfile.mkdtemp(prefix="xcb-bench-", dir=base)
    try:
        small_dir, big_dir = os.path.join(top, "small"), os.path.join(top, "big")
        started = time.perf_counter()
        small = populate(small_dir, args.baseline)
        big = populate(big_dir, args.domains)
        print(f"filesystem: {'tmpfs (/dev/shm)' if base else tempfile.gettempdir()}; "
              f"populated {args.domains} domains in {time.perf_counter() - started:.1f} s")

        prepare: dict[str, list[float]] = {"small": [], "big": []}
        by_uuid: dict[str, list[float]] = {"small": [], "big": []}
        by_name: dict[str, list[float]] = {"small": [], "big": []}
        for op in range(args.ops):
            # Interleave, and alternate which goes first, so drift hits both.
            order = [("small", small, small_dir), ("big", big, big_dir)]
            if op % 2:
                order.reverse()
            for key, registry, rundir in order:
                record = domain(op, rundir, tag="new")

                def prepare_hook(r: Registry = registry, d: DomainRecord = record) -> None:
                    r.claim_paths(d)
                    r.put(d)

                prepare[key].append(timed(prepare_hook))
                by_uuid[key].append(timed(functools.partial(registry.get, record.uuid)))
                by_name[key].append(timed(functools.partial(registry.get, record.name)))
                registry.remove(record.uuid)

        def ratio(samples: dict[str, list[float]]) -> float:
            return statistics.median(samples["big"]) / statistics.median(samples["small"])

        for label, samples in (
            ("prepare (claim_paths + put)", prepare),
            ("get by UUID", by_uuid),
            ("get by name", by_name),
        ):
            big_us = statistics.median(samples["big"]) * 1e6
            small_us = statistics.median(samples["small"]) * 1e6
            print(
                f"{label}: {args.domains} domains {big_us:.0f} us, "
                f"{args.baseline} domains {small_us:.0f} us, ratio {ratio(samples):.2f}x"
            )
        verdict = "meets" if ratio(prepare) <= GOAL else "MISSES"
        print(f"prepare ratio {ratio(prepare):.2f}x {verdict} the goal of <= {GOAL}x")
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
