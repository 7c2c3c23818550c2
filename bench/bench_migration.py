"""Duration of a real ``virsh migrate --live`` with our hooks installed, against without.

Two real libvirtd daemons run on this machine, each in its own mount
namespace (tests/integration/two_daemons.py; the recipe is in
docs/testing.md).  Each round measures, alternating which goes first:

* candidate: our hooks installed on both daemons (the real ``xen-channel
  install-hooks --config``, then SIGHUP), a TCG domain whose two virtio
  channels got their paths from ``xen-channel fill`` under the source's
  settings; the destination's migrate hook re-allocates them for its own run
  directory, and its prepare/start/started hooks claim and record them;
* baseline: no hooks on either daemon, the same domain shape with the two
  channels at the paths libvirt generates itself
  (/var/lib/libvirt/qemu/channel/target/...), as a host without us runs it.

``--run-directories shared`` (the default) gives both hosts the same run
directory path, as a fleet normally has (each still private to its own
namespace): the destination's migrate hook then finds nothing to re-allocate.
``distinct`` gives each host its own, so every migration rewrites the paths.

Each domain migrates A to B and back B to A in each round, so each round
gives two samples of each.  The figure is the ratio of the medians.  The
destination runs migrate, prepare, start and started before the source sends
memory, so the hooks lengthen the migration, not the guest's downtime.

Run (as root): .venv/bin/python bench/bench_migration.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from libvirtd import tcg_domain_xml  # noqa: E402
from two_daemons import Daemon, TwoDaemons, skip_reason  # noqa: E402

GOAL = 1.15
CHANNELS = ("org.example.bench.0", "org.example.bench.1")
#: Inside each daemon's private /run/libvirt, so one path on both hosts.
SHARED_RUNDIR = "/run/libvirt/xen-channel"


def timed_migrate(pair: TwoDaemons, name: str, source: Daemon, destination: Daemon) -> float:
    start = time.perf_counter()
    pair.migrate(name, source, destination)
    return time.perf_counter() - start


def define(daemon: Daemon, work: str, tag: str, *, fill: bool) -> str:
    name = f"xcbtest-bench-{tag}-{uuidlib.uuid4().hex[:6]}"
    source = os.path.join(work, f"{name}.xml")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(tcg_domain_xml(name, str(uuidlib.uuid4()),
                                    channels=[(c, None) for c in CHANNELS]))
    if fill:
        filled = source + ".filled"
        daemon.xen_channel("fill", "--all-targets", source, "-o", filled)
        source = filled
    daemon.virsh("define", source)
    daemon.virsh("start", name)
    return name


def set_hooks(pair: TwoDaemons, installed: bool) -> None:
    for daemon in (pair.a, pair.b):
        if installed:
            daemon.install_hooks()
        else:
            daemon.uninstall_hooks()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each: 2 samples of each)")
    parser.add_argument("--run-directories", choices=("shared", "distinct"), default="shared",
                        help="the same run directory path on both hosts, or one each")
    args = parser.parse_args()
    reason = skip_reason()
    if reason is not None:
        print(f"bench_migration: SKIPPED: {reason}")
        return 0
    samples: dict[str, list[float]] = {"hooks": [], "baseline": []}
    with TwoDaemons() as pair, tempfile.TemporaryDirectory() as work:
        if args.run_directories == "shared":
            for daemon in (pair.a, pair.b):
                daemon.rundir = SHARED_RUNDIR
                daemon.write_config(SHARED_RUNDIR)
        set_hooks(pair, True)
        hooked = define(pair.a, work, "hooked", fill=True)
        set_hooks(pair, False)
        plain = define(pair.a, work, "plain", fill=False)
        # One untimed round trip each: the first migration pays for warm-up.
        for installed, name in ((False, plain), (True, hooked)):
            set_hooks(pair, installed)
            timed_migrate(pair, name, pair.a, pair.b)
            timed_migrate(pair, name, pair.b, pair.a)
        for index in range(args.rounds):
            order = [("hooks", hooked), ("baseline", plain)]
            if index % 2:
                order.reverse()
            for label, name in order:
                set_hooks(pair, label == "hooks")
                samples[label].append(timed_migrate(pair, name, pair.a, pair.b))
                samples[label].append(timed_migrate(pair, name, pair.b, pair.a))
        set_hooks(pair, False)
        uri_a, uri_b = pair.a.uri, pair.b.uri
    hooks = statistics.median(samples["hooks"])
    baseline = statistics.median(samples["baseline"])
    ratio = hooks / baseline
    print(f"migration benchmark ({args.rounds} rounds x 2 directions, medians; "
          f"{os.cpu_count()} CPUs; {args.run_directories} run directories)")
    print(f"  baseline: virsh -c {uri_a} migrate --live DOM {uri_b} "
          "--migrateuri tcp:127.0.0.1:PORT --listen-address 127.0.0.1")
    print("            (and back), no hooks installed, 2 virtio channels at libvirt's own paths")
    print(f"  with our hooks: {hooks * 1000:.0f} ms vs baseline {baseline * 1000:.0f} ms: "
          f"{ratio:.2f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'MISSED'})")
    print("  samples (ms): hooks " + " ".join(f"{s * 1000:.0f}" for s in samples["hooks"]))
    print("                baseline " + " ".join(f"{s * 1000:.0f}" for s in samples["baseline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
