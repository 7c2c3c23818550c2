"""The qemu-ga client's cost, as ratios against baselines measured in the same run.

1. ``guest-ping`` round trip in process through ``qga.AgentClient``
   (encode, send, read lines, decode, check) against a raw write of the
   same bytes and a read up to the newline, on the same connection to the
   same qemu-ga, the two alternating round by round.  Goal: at most 1.2x.
2. The whole ``xen-channel qemu-agent-command DOM '{"execute":"guest-ping"}'``
   process (start Python, import, find the socket in the registry, check
   it, connect, sync, ping, print), run as the installed command runs,
   against the bare interpreter started the same way.  Goal: at most 3x.

   How the installed command runs: Debian's ``/usr/bin/xen-channel`` is
   pybuild's console script (debian/rules: ``PYBUILD_SYSTEM = pyproject``,
   whose ``installer`` writes ``#!/usr/bin/python3``, no flags, then ``import
   re, sys`` and the call of ``xen_channel_backend.cli:main``; dh_python3
   keeps that interpreter).  So the bench generates that script with
   ``installer`` itself (its template when ``installer`` is missing), puts it
   beside a link to this tree's package (an installed script's directory
   comes first on ``sys.path`` too), and runs ``/usr/bin/python3 SCRIPT ...``
   against ``/usr/bin/python3 -c pass``: site and its ``.pth`` files in both.
   The issue words the baseline as ``python3 -I -S -c pass``, so the same
   command is also measured as ``python3 -I -S -c "...main()"`` against that.
   Every child gets the bench's environment without ``PYTHON*`` variables (an
   admin's shell has none; ``PYTHONDONTWRITEBYTECODE`` would recompile any
   module edited since its last byte code, every run).  For the floor every
   command shares, the installed command is also compared with ``xen-channel
   list`` on an empty run directory (Python, imports, the argument parser, no
   agent): what the agent command itself adds.

The path: a QEMU stand-in (tests/backend_standin.py, its own process)
bridging the channel socket to a pty, and Debian's real qemu-ga on the pty
slave with every dangerous command blocked (tests/qga_fixtures.py).
Each measurement is repeated ``--runs`` times (at least 3), baselines and
measured commands interleaved round by round; the ratio of medians of each
run is printed, then their spread.

Run: ``.venv/bin/python bench/bench_qga.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from broker_fixtures import write_record  # noqa: E402
from qga_fixtures import QemuGa, require_qemu_ga  # noqa: E402

from xen_channel_backend.qga import AGENT_CHANNEL, AgentClient  # noqa: E402

_STANDIN = """
import sys
sys.path.insert(0, sys.argv[1])
from backend_standin import BackendStandin
standin = BackendStandin(sys.argv[2]).start()
print(standin.guest_tty, flush=True)
sys.stdin.read()
standin.close()
"""
PING = b'{"execute":"guest-ping"}\n'
#: What /usr/bin/xen-channel's first line names (pybuild's installer, dh_python3);
#: elsewhere the interpreter behind the venv.
PYTHON = ("/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK)
          else getattr(sys, "_base_executable", sys.executable))
#: installer's console-script template (installer/scripts.py), for when the
#: interpreter lacks the installer module itself.
_SCRIPT_TEMPLATE = """\
#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from xen_channel_backend.cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""
_GENERATE = """
import sys
from installer.scripts import Script
_name, data = Script("xen-channel", "xen_channel_backend.cli", "main",
                     section="console").generate(sys.argv[1], kind="posix")
sys.stdout.buffer.write(data)
"""


def processes(commands: dict[str, list[str]], rounds: int,
              env: dict[str, str]) -> dict[str, list[float]]:
    """Each command once per round, in turn, so load drift touches all alike; checked."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    warm_up = max(3, rounds // 10)
    for index in range(warm_up + rounds):
        for name, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, env=env, check=False)
            elapsed = time.perf_counter() - started
            if done.returncode != 0 or (name.startswith("agent") and
                                        done.stdout != b'{"return":{}}\n\n'):
                raise RuntimeError(f"{shlex.join(argv)} failed: {done.stderr.decode()}")
            if index >= warm_up:
                samples[name].append(elapsed)
    return samples


def entry_script(directory: str) -> tuple[str, str]:
    """The console script pybuild installs as /usr/bin/xen-channel, beside this tree's package.

    Returns its path and where its text came from.
    """
    done = subprocess.run([PYTHON, "-c", _GENERATE, PYTHON], capture_output=True, check=False)
    if done.returncode == 0 and done.stdout.startswith(b"#!"):
        text, origin = done.stdout, f"written by installer ({PYTHON}), as pybuild writes it"
    else:
        text = _SCRIPT_TEMPLATE.format(python=PYTHON).encode()
        origin = "installer's template (the installer module is missing)"
    os.mkdir(directory)
    script = os.path.join(directory, "xen-channel")
    with open(script, "wb") as handle:
        handle.write(text)
    os.chmod(script, 0o755)
    os.symlink(ROOT / "xen_channel_backend", os.path.join(directory, "xen_channel_backend"))
    return script, origin


def raw_ping(sock: socket.socket) -> None:
    """The baseline: the same bytes written, and read up to the newline."""
    sock.sendall(PING)
    buffer = b""
    while not buffer.endswith(b"\n"):
        buffer += sock.recv(65536)
    if buffer != b'{"return": {}}\n':
        raise RuntimeError(f"unexpected answer {buffer!r}")


def interleaved(path: str, rounds: int) -> tuple[list[float], list[float]]:
    """Raw and client pings alternating on one synced connection, so load drift cancels.

    Each client call reads exactly its one answer line, so the raw read that
    follows starts on a clean stream.
    """
    raw: list[float] = []
    ours: list[float] = []
    with AgentClient(path) as client:
        client.sync(10.0)
        sock = client._sock  # the same connection, bypassing the client for the baseline
        assert sock is not None
        for index in range(rounds + max(3, rounds // 10)):
            started = time.perf_counter()
            raw_ping(sock)
            middle = time.perf_counter()
            client.execute("guest-ping", timeout=10.0)
            ended = time.perf_counter()
            if index >= max(3, rounds // 10):  # after the warm-up
                raw.append(middle - started)
                ours.append(ended - middle)
    return raw, ours


def spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}x - {max(ratios):.2f}x (median {statistics.median(ratios):.2f}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (at least 3)")
    args = parser.parse_args()
    runs = max(3, args.runs)
    ping_rounds, process_rounds = (50, 5) if args.quick else (500, 20)
    require_qemu_ga()

    base = tempfile.mkdtemp(prefix="xcbbq", dir="/dev/shm" if os.path.isdir("/dev/shm")
                            else "/tmp")
    rundir = Path(base, "run")
    path = write_record(rundir, str(uuid.uuid4()), "bench1", [AGENT_CHANNEL])[AGENT_CHANNEL]
    standin = subprocess.Popen([sys.executable, "-c", _STANDIN, str(ROOT / "tests"), path],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    agent: QemuGa | None = None
    script, origin = entry_script(os.path.join(base, "bin"))
    empty = os.path.join(base, "empty")
    os.mkdir(empty)
    ping = ["qemu-agent-command", "bench1", '{"execute":"guest-ping"}', "--rundir", str(rundir)]
    commands = {
        "baseline": [PYTHON, "-c", "pass"],
        "agent": [PYTHON, script, *ping],
        "list": [PYTHON, script, "list", "--rundir", empty],
        "baseline -I -S": [PYTHON, "-I", "-S", "-c", "pass"],
        "agent -I -S": [PYTHON, "-I", "-S", "-c",
                        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        "from xen_channel_backend.cli import main; sys.exit(main())", *ping],
    }
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    in_process: list[float] = []
    installed: list[float] = []
    isolated: list[float] = []
    over_floor: list[float] = []
    try:
        assert standin.stdout is not None
        agent = QemuGa(standin.stdout.readline().strip(), os.path.join(base, "qga"))
        with AgentClient(path) as warm:
            warm.sync(30.0)  # qemu-ga is up and answering

        for _ in range(runs):
            raw, ours = interleaved(path, ping_rounds)
            in_process.append(statistics.median(ours) / statistics.median(raw))
            print(f"  guest-ping: client {statistics.median(ours) * 1e6:7.0f} us, raw "
                  f"{statistics.median(raw) * 1e6:7.0f} us, ratio {in_process[-1]:.2f}x")

            medians = {name: statistics.median(samples) for name, samples
                       in processes(commands, process_rounds, env).items()}
            installed.append(medians["agent"] / medians["baseline"])
            isolated.append(medians["agent -I -S"] / medians["baseline -I -S"])
            over_floor.append(medians["agent"] / medians["list"])
            print(f"  process: qemu-agent-command {medians['agent'] * 1e3:5.1f} ms, "
                  f"baseline {medians['baseline'] * 1e3:5.1f} ms, ratio {installed[-1]:.2f}x; "
                  f"-I -S {medians['agent -I -S'] * 1e3:5.1f} ms against "
                  f"{medians['baseline -I -S'] * 1e3:5.1f} ms, ratio {isolated[-1]:.2f}x; "
                  f"`list` {medians['list'] * 1e3:5.1f} ms, ratio {over_floor[-1]:.2f}x")
    finally:
        if agent is not None:
            agent.stop()
        assert standin.stdin is not None
        standin.stdin.close()
        standin.wait()
        shutil.rmtree(base, ignore_errors=True)

    print(f"qemu-ga client, {runs} runs; real qemu-ga 7.2 behind the QEMU stand-in and a pty")
    print(f"  interpreter: {PYTHON} "
          f"({subprocess.run([PYTHON, '-V'], capture_output=True, text=True).stdout.strip()}); "
          f"children's environment: the bench's without PYTHON* variables")
    print(f"  entry script: {origin}, beside a link to {ROOT / 'xen_channel_backend'}")
    for label, name in (("baseline command", "baseline"), ("measured command", "agent"),
                        ("floor command", "list"), ("baseline command (-I -S)", "baseline -I -S"),
                        ("measured command (-I -S)", "agent -I -S")):
        text = shlex.join(commands[name]).replace(script, "SCRIPT")
        print(f"  {label}: {text.replace(str(rundir), 'RUNDIR').replace(empty, 'EMPTY')}")
    goal1 = "met" if max(in_process) <= 1.2 else "MISSED"
    goal2 = "met" if max(installed) <= 3.0 else "MISSED"
    goal3 = "met" if max(isolated) <= 3.0 else "MISSED"
    print(f"guest-ping in process vs raw write+read ({ping_rounds} rounds/run): "
          f"{spread(in_process)}  goal <= 1.2x: {goal1}")
    print(f"whole command as installed vs {PYTHON} -c pass ({process_rounds} rounds/run): "
          f"{spread(installed)}  goal <= 3x: {goal2}")
    print(f"whole command with -I -S vs {PYTHON} -I -S -c pass: "
          f"{spread(isolated)}  goal <= 3x: {goal3}")
    print(f"whole command vs the CLI's floor, `xen-channel list` on an empty run directory: "
          f"{spread(over_floor)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
