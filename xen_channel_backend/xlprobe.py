"""Probe the installed ``xl`` for Debian 12's lost-first-channel bug.

Xen 4.17's xl gives channel 0 ``devid 0``, which collides with the primary
console: libxl logs "Primary console has invalid configuration", ignores the
error, and the guest never sees that channel (fixed upstream by e1ccced4af in
2025; no 4.17 fix, background.md §3).  A fixed xl leaves ``devid`` out of the parsed
config.  ``xl -N create`` (a dry run that only parses and prints the config as
JSON) shows which one is installed, without creating anything.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: A minimal PV guest with one channel: xl refuses a PV guest with neither
#: kernel nor bootloader before it looks at channels; the kernel is never read
#: in a dry run.
_PROBE_CONFIG = (
    'name = "xen-channel-probe"\n'
    "memory = 16\n"
    'kernel = "/nonexistent/xen-channel-probe"\n'
    'channel = [ "connection=pty,name=org.xen-channel.probe.0" ]\n'
)

_TIMEOUT_SECONDS = 20


def first_channel_lost(xl_path: str, env: Mapping[str, str] | None = None) -> bool | None:
    """True if ``xl_path`` has the devid-0 bug, False if not, None if it cannot tell.

    None means the dry run could not run or printed nothing usable (xl
    missing, no permission to reach Xen, unexpected output); the reason is
    logged at debug level.  ``env`` is the environment for xl (default: ours).
    """
    with tempfile.TemporaryDirectory(prefix="xen-channel-probe-") as directory:
        # xl reads the config with a plain open(): it must be a regular file.
        config = os.path.join(directory, "probe.cfg")
        with open(config, "w", encoding="ascii") as handle:
            handle.write(_PROBE_CONFIG)
        try:
            proc = subprocess.run(
                [xl_path, "-N", "create", config],
                env=dict(env) if env is not None else None,
                capture_output=True,
                timeout=_TIMEOUT_SECONDS,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("cannot run %s -N create: %s", xl_path, exc)
            return None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        log.debug("%s -N create exited %d: %s", xl_path, proc.returncode, detail[-1:] or "")
        return None
    try:
        parsed = json.loads(proc.stdout)
        channel = parsed["channels"][0]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        log.debug("unexpected dry-run output from %s: %r", xl_path, exc)
        return None
    if not isinstance(channel, dict):
        return None
    return channel.get("devid") == 0
