"""Fleet inventory: 20 hosts x 50 domains against one host of the same size.

Each host is a real libvirt connection: libvirt's test driver opened on its
own node XML file (``test:///path/node.xml``) holding 50 domains that carry
our ``<xcb:channels>`` metadata (two channels each; 40 running, 10 shut off),
the same fixture the tests use (tests/host_fixtures.py).  Both sides run
``api.host_inventory`` (what ``xen-channel list --connect ...`` prints) in
this process, interleaved, and the figure is the ratio of the medians:

* candidate: the 20 hosts at once (one thread and one read-only connection
  per host);
* baseline: one host of the same size (50 domains).

Goal: at most 3x.  Read the figure knowing what the test driver is: it
answers from memory, so each host costs CPU only (libvirt parsing the node
file when it opens it, about two thirds of the time here, then 52 libvirt
calls and 50 metadata parses), and threads overlap only as far as the CPUs
allow: on N CPUs, 20 such hosts cannot take less than 20/N times one host
(10x on the 2-CPU sandbox).  A third figure runs the same 20 hosts one after
another, to show what the threads save.  A remote host (``qemu+ssh://``)
mostly costs network round trips, which the threads overlap fully.

A fourth figure is what an admin waits for: the whole command
``xen-channel list --hosts FILE`` (20 hosts) against ``xen-channel list
--connect URI`` (one host), each a process of the same interpreter and flags.

Run: .venv/bin/python bench/bench_inventory.py [--rounds 15] [--hosts 20] [--domains 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from host_fixtures import NodeDomain, agent_channels, write_host  # noqa: E402

from xen_channel_backend import api  # noqa: E402

GOAL = 3.0


def make_hosts(directory: str, hosts: int, domains: int) -> list[str]:
    uris = []
    for host in range(hosts):
        members = []
        for index in range(domains):
            uuid = str(uuidlib.UUID(int=(host << 32) + index + 1))
            members.append(NodeDomain(f"vm{host:02d}-{index:03d}", uuid,
                                      running=index % 5 != 4,
                                      channels=agent_channels("/run/xen-channel", uuid)))
        uris.append(write_host(directory, f"host{host:02d}", members))
    return uris


def timed(uris: list[str], *, one_by_one: bool = False) -> float:
    start = time.perf_counter()
    for chosen in [[u] for u in uris] if one_by_one else [uris]:
        found = api.host_inventory(chosen)
        if found.errors:
            raise SystemExit(f"bench_inventory: {found.errors[0].message}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--process-rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xcb-bench-inv-") as work:
        uris = make_hosts(work, args.hosts, args.domains)
        fleet_size = len(api.host_inventory(uris).domains)
        assert fleet_size == args.hosts * args.domains, fleet_size
        timed(uris[:1])  # warm-up: imports, libvirt's first connection
        many: list[float] = []
        one: list[float] = []
        sequential: list[float] = []
        for index in range(args.rounds):
            runs = [(many, uris, False), (one, uris[:1], False), (sequential, uris, True)]
            if index % 2:
                runs.reverse()
            for samples, chosen, one_by_one in runs:
                samples.append(timed(chosen, one_by_one=one_by_one))
        hosts_file = os.path.join(work, "hosts")
        with open(hosts_file, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{uri}\n" for uri in uris))
        command = [sys.executable, "-m", "xen_channel_backend", "list", "--json"]
        proc_many: list[float] = []
        proc_one: list[float] = []
        for index in range(args.process_rounds):
            runs = [(proc_many, ["--hosts", hosts_file]), (proc_one, ["--connect", uris[0]])]
            if index % 2:
                runs.reverse()
            for samples, extra in runs:
                begin = time.perf_counter()
                subprocess.run([*command, *extra], check=True, stdout=subprocess.DEVNULL)
                samples.append(time.perf_counter() - begin)
    fleet, single = statistics.median(many), statistics.median(one)
    in_turn = statistics.median(sequential)
    ratio = fleet / single
    floor = args.hosts / (os.cpu_count() or 1)
    print(f"inventory benchmark ({args.rounds} rounds, medians; {os.cpu_count()} CPUs)")
    print(f"  baseline: api.host_inventory([1 test:///node.xml host, {args.domains} domains]) "
          f"= `xen-channel list --connect test:///NODE.xml` without the process start")
    print(f"  {args.hosts} hosts x {args.domains} domains: {fleet * 1000:.1f} ms vs one host "
          f"{single * 1000:.1f} ms: {ratio:.2f}x (goal <= {GOAL}x: "
          f"{'met' if ratio <= GOAL else 'MISSED'}; CPU floor {args.hosts} hosts / "
          f"{os.cpu_count()} CPUs = {floor:.0f}x)")
    print(f"  the same {args.hosts} hosts one after another: {in_turn * 1000:.1f} ms "
          f"({in_turn / single:.2f}x one host); at once they take "
          f"{fleet / in_turn:.2f} of that")
    p_many, p_one = statistics.median(proc_many), statistics.median(proc_one)
    verdict = "met" if p_many / p_one <= GOAL else "MISSED"
    print(f"  the whole command: `{' '.join(command)} --hosts FILE` ({args.hosts} hosts) "
          f"{p_many * 1000:.0f} ms vs `... --connect URI` (one host) {p_one * 1000:.0f} ms: "
          f"{p_many / p_one:.2f}x (goal <= {GOAL}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
