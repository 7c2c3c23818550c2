"""What our hooks add to a domain's life under the real libvirtd, as a ratio.

A TCG domain with two unix channels (paths from ``xen-channel fill``) is
started and destroyed with ``virsh``, rounds alternating between our hooks
installed and not installed (libvirtd re-reads its hooks on SIGHUP, outside
the timing).  Each figure is the median of ``--rounds`` start+destroy pairs;
the whole comparison runs ``--runs`` times for the spread.  Goal: at most
1.10x.

The shims are rendered as a Debian install has them: the system
``/usr/bin/python3`` with ``-I -S``, this tree and Debian's dist-packages on
its path; the baseline is the same daemon with no shim at all.

Needs root and the packages ``scripts/install-deps`` installs (it uses the
integration tests' libvirtd harness).  Run: .venv/bin/python bench/bench_domain_start.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuidlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from libvirtd import Libvirtd, new_domain_name, skip_reason, tcg_domain_xml  # noqa: E402

from xen_channel_backend import cli, install  # noqa: E402

GOAL = 1.10
SYSTEM_PYTHON = "/usr/bin/python3"


def start_destroy(daemon: Libvirtd, name: str) -> float:
    begin = time.perf_counter()
    daemon.virsh("start", name)
    daemon.virsh("destroy", name)
    return time.perf_counter() - begin


def set_hooks(daemon: Libvirtd, config: str, rundir: str, on: bool) -> None:
    if on:
        install.install(daemon.hooks_dir, SYSTEM_PYTHON,
                        (REPO, *install.DISTRIBUTION_PYTHONPATH), config, rundir)
    else:
        install.uninstall(daemon.hooks_dir)
    daemon.sighup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = skip_reason()
    if reason is not None:
        print(f"bench_domain_start: SKIPPED: {reason}")
        return 0
    base = tempfile.mkdtemp(prefix="xcbd", dir="/dev/shm")
    rundir = os.path.join(base, "run")
    config = os.path.join(base, "xen-channel.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(f"[xen-channel]\nrundir = {rundir}\ngroup = root\n")
    daemon = Libvirtd()
    daemon.start()
    try:
        name, uuid = new_domain_name("bench"), str(uuidlib.uuid4())
        source = os.path.join(base, "domain.xml")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(tcg_domain_xml(name, uuid, channels=[
                ("org.example.bench.0", None), ("org.example.bench.1", None)]))
        filled = os.path.join(base, "filled.xml")
        code = cli.main(["fill", "--rundir", rundir, "--all-targets", source, "-o", filled])
        if code != 0:
            raise SystemExit("fill failed")
        daemon.virsh("define", filled)
        ratios: list[float] = []
        for _run in range(args.runs):
            samples: dict[bool, list[float]] = {True: [], False: []}
            for turn in range(args.rounds):
                for hooked in ((True, False) if turn % 2 else (False, True)):
                    set_hooks(daemon, config, rundir, hooked)
                    if not hooked:
                        # Without our prepare hook nobody makes the socket
                        # directory; the baseline gets it ready, untimed.
                        os.makedirs(os.path.join(rundir, uuid), mode=0o750, exist_ok=True)
                    samples[hooked].append(start_destroy(daemon, name))
            with_hooks = statistics.median(samples[True])
            without = statistics.median(samples[False])
            ratios.append(with_hooks / without)
            print(f"  run {_run + 1}: with hooks {with_hooks * 1000:.0f} ms, without "
                  f"{without * 1000:.0f} ms -> {with_hooks / without:.2f}x")
        ratio = statistics.median(ratios)
        verdict = "meets" if ratio <= GOAL else "MISSES"
        print(f"domain start+destroy, 2 unix channels, {args.rounds} rounds x {args.runs} runs "
              f"({os.cpu_count()} CPUs): hooks installed vs not installed -> {ratio:.2f}x median "
              f"({', '.join(f'{r:.2f}x' for r in ratios)}; {verdict} the {GOAL:g}x goal)")
        print(f"  shim: {SYSTEM_PYTHON} -I -S, baseline: the same libvirtd with no shim")
        daemon.virsh("undefine", name)
        return 0
    finally:
        install.uninstall(daemon.hooks_dir)
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
