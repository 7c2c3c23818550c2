"""xl.cfg parsing, as ratios against xl's own parse of the same files (issue 9 defect 6).

The baseline is the real ``xl -N create FILE`` of Debian's Xen 4.17 under the
test-only LD_PRELOAD stub (tests/xlstub, built by tests/xl_dryrun.py): libxlu
reads the whole file, xl_parse.c interprets it and xl prints the domain
configuration as JSON.  Ours is a child process that reads the same file and
runs what ``xen-channel convert --to libvirt`` runs on it,
``xlcfg.read_channels(xlcfg.parse_config(data, path))``.

Both are whole processes (start-up included: a few tens of ms against
seconds), timed by wall clock, best of the rounds; peak memory is each
process's peak RSS as GNU time reports it (``/usr/bin/time -f %M``), the
highest over the rounds.

Goal (issue 9): on a 16 MiB file, at most 10x xl's time and at most 20x the
input size in peak memory, and time and memory linear in the input.  The
shapes are the issue's (a file of ``;``, a long list) and other ways to fill
16 MiB: nested lists, many short settings.  Chains of ``+=`` are measured for
linearity only: xl's own ``+=`` is quadratic (a 16 MiB chain of ``l += [1]``
ran xl past 24 GB), so it cannot be the baseline there.

Run: ``.venv/bin/python bench/bench_xlparse.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import xl_dryrun  # noqa: E402  (tests/ is on the path only from here)

MIB = 1024 * 1024

#: Our side: what `convert --to libvirt` does with an xl.cfg, in a fresh
#: process.  It also prints its in-process parse time, for the linearity check.
OURS = (
    "import sys, time\n"
    "from xen_channel_backend import xlcfg\n"
    "path = sys.argv[1]\n"
    "with open(path, 'rb') as f:\n"
    "    data = f.read()\n"
    "began = time.perf_counter()\n"
    "xlcfg.read_channels(xlcfg.parse_config(data, path))\n"
    "print(time.perf_counter() - began)\n"
)


def _fill(size: int, unit: bytes, head: bytes = b"", tail: bytes = b"") -> bytes:
    body = size - len(xl_dryrun.PREFIX) - len(head) - len(tail)
    return xl_dryrun.PREFIX.encode() + head + unit * (body // len(unit)) + tail


def _settings(size: int) -> bytes:
    # Many short settings over 1,000 names xl does not interpret.
    line = b"".join(b"xcb.k%03d = %d\n" % (i, i) for i in range(1000))
    return _fill(size, line)


#: name -> (file of about ``size`` bytes, compared with xl?)
SHAPES: dict[str, tuple[Callable[[int], bytes], bool]] = {
    "semicolons": (lambda size: _fill(size, b";"), True),
    "list of strings": (lambda size: _fill(size, b"'x',\n", b"junk = [\n", b"]\n"), True),
    "list on one line": (lambda size: _fill(size, b"1,", b"junk = [", b"]\n"), True),
    "nested lists": (
        lambda size: _fill(size, b"[ 'a', [ 1, [] ] ],\n", b"junk = [\n", b"]\n"),
        True,
    ),
    "short settings": (_settings, True),
    "string += chain": (lambda size: _fill(size, b"s += 'x'\n", b"s = ''\n"), False),
    "list += chain": (lambda size: _fill(size, b"l += [1]\n", b"l = []\n"), False),
}


class Measured:
    """One command over the rounds: best wall time, highest peak RSS, and what it printed."""

    def __init__(self) -> None:
        self.time = float("inf")
        self.peak = 0
        self.parse_time = float("inf")  # ours only: in-process parse time, best

    def add(self, elapsed: float, peak: int, output: bytes) -> None:
        self.time = min(self.time, elapsed)
        self.peak = max(self.peak, peak)
        fields = output.split()
        if fields:
            self.parse_time = min(self.parse_time, float(fields[0]))


#: GNU time reports a child's peak RSS from a process of its own: a child
#: spawned straight from this (large) process would inherit its high-water
#: mark through fork/exec, and wait4 would report ours, not the child's.
TIME = "/usr/bin/time"


def run(argv: list[str], env: dict[str, str] | None, into: Measured, ours: bool) -> None:
    """Run one process, which must exit 0; record its wall time and peak RSS."""
    with tempfile.NamedTemporaryFile("r") as report:
        began = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M", "-o", report.name, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if ours else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - began
        peak_kib = report.read().split()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    into.add(elapsed, int(peak_kib[-1]) * 1024, proc.stdout or b"")


Command = tuple[list[str], "dict[str, str] | None", bool]


def measure(commands: dict[str, Command], rounds: int) -> dict[str, Measured]:
    """Each command ``rounds`` times, the commands taking turns each round."""
    results = {name: Measured() for name in commands}
    for _ in range(rounds):
        for name, (argv, env, ours) in commands.items():
            run(argv, env, results[name], ours)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="4 MiB files, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", action="append", help="shape names to run (repeatable)")
    args = parser.parse_args()
    missing = xl_dryrun.missing_parts() or (
        None if os.access(TIME, os.X_OK) else f"{TIME} (GNU time) is missing: apt-get install time"
    )
    if missing is not None:
        print(f"SKIPPED: {missing}")
        return 0
    big = 4 * MIB if args.quick else 16 * MIB
    small = big // 4
    rounds = args.rounds or (2 if args.quick else 3)
    env = xl_dryrun.stub_env()
    ours = [sys.executable, "-c", OURS]
    print(f"baseline: LD_PRELOAD={env['LD_PRELOAD']} LC_ALL=C {xl_dryrun.XL} -N create FILE")
    print(f"ours:     {sys.executable} -c <read FILE; xlcfg.read_channels(parse_config(...))>")
    print(f"          (cwd {ROOT}; best time and highest peak RSS of {rounds} alternating rounds,")
    print(f"          both run as {TIME} -f %M COMMAND)")
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.cfg"
        empty.write_bytes(xl_dryrun.PREFIX.encode())
        floor = measure({"ours": ([*ours, str(empty)], None, True)}, rounds)["ours"]
        print(f"our floor (the 3-line file): {floor.time * 1000:.0f} ms, "
              f"{floor.peak / MIB:.0f} MiB peak RSS")
        print()
        print(
            f"{'shape':17} {'size':>5} {'xl':>6} {'ours':>6} {'ratio':>6}  "
            f"{'xl RSS':>6} {'ours':>5} {'/input':>6}  "
            f"{'in-process parse':>16} {'growth':>6}  {'RSS growth':>10}"
        )
        verdicts: list[bool] = []
        for shape, (make, versus_xl) in SHAPES.items():
            if args.only and shape not in args.only:
                continue
            results: dict[str, Measured] = {}
            size = {}
            for label, target in (("big", big), ("small", small)):
                path = Path(tmp) / f"{label}.cfg"
                path.write_bytes(make(target))
                size[label] = path.stat().st_size
                commands: dict[str, Command] = {label: ([*ours, str(path)], None, True)}
                if versus_xl and label == "big":
                    commands["xl"] = ([xl_dryrun.XL, "-N", "create", str(path)], env, False)
                results.update(measure(commands, rounds))
                path.unlink()
            mine, smaller = results["big"], results["small"]
            per_input = mine.peak / size["big"]
            growth = mine.parse_time / smaller.parse_time
            rss_growth = (mine.peak - floor.peak) / max(smaller.peak - floor.peak, 1)
            if versus_xl:
                xl = results["xl"]
                ratio = mine.time / xl.time
                verdicts.append(ratio <= 10 and per_input <= 20)
                xl_cols = f"{xl.time:5.2f}s {mine.time:5.2f}s {ratio:5.2f}x  {xl.peak / MIB:5.0f}M"
            else:
                verdicts.append(per_input <= 20)
                xl_cols = f"{'-':>6} {mine.time:5.2f}s {'-':>6}  {'-':>6}"
            print(
                f"{shape:17} {size['big'] / MIB:4.0f}M {xl_cols} {mine.peak / MIB:4.0f}M "
                f"{per_input:5.1f}x  {mine.parse_time:6.2f}s vs {smaller.parse_time:5.2f}s "
                f"{growth:5.1f}x  {rss_growth:5.1f}x"
            )
    print()
    print(f"growth: in-process parse time for {big // MIB} MiB over {small // MIB} MiB; "
          "RSS growth: peak RSS above the floor, the same two files (linear: about 4x)")
    verdict = "met" if all(verdicts) else "MISSED"
    print()
    print(f"goal (<= 10x xl's time, <= 20x the input in peak RSS): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
