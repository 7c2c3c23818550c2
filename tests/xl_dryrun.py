"""Run Debian's real ``xl -N create`` (Xen 4.17) without a hypervisor.

``xl -N create CFG`` parses CFG with the real libxlu and xl_parse.c and prints
the resulting libxl_domain_config as JSON, but libxl_ctx_alloc() needs Xen.
tests/xlstub/xlstub.c answers the few libxenctrl/xenstore calls it makes
(background.md §3); this module compiles it with gcc at test time into tests/_build/
(git-ignored, keyed by the source's hash; no binary is ever committed) and runs
xl under LD_PRELOAD.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

XL = "/usr/lib/xen-4.17/bin/xl"
STUB_SOURCE = Path(__file__).parent / "xlstub" / "xlstub.c"
BUILD_DIR = Path(__file__).parent / "_build"

#: What every dry-run config starts with: xl refuses a PV guest without a
#: kernel before it looks at channels.  Three lines, as in the research runs,
#: so xl's "file:4:" line numbers match tests/data/xl-channel-spec-cases.txt.
PREFIX = 'name = "xcb-dryrun"\nmemory = 64\nkernel = "/nonexistent/vmlinuz"\n'


@dataclasses.dataclass(frozen=True)
class XlResult:
    rc: int  # 128 + signal number when xl crashed, like a shell reports it
    stderr: list[str]
    config: dict[str, Any] | None  # the JSON xl printed, None when it printed none

    @property
    def channels(self) -> list[dict[str, Any]]:
        if self.config is None:
            return []
        return list(self.config.get("channels") or [])


def missing_parts() -> str | None:
    """Why the real xl cannot run here, or None when it can."""
    if not os.access(XL, os.X_OK):
        return f"{XL} is missing: install Debian's xen-utils-4.17 (make test does)"
    if shutil.which("gcc") is None:
        return "gcc is missing: it builds the test-only LD_PRELOAD stub tests/xlstub/xlstub.c"
    return None


def require_xl() -> None:
    """Skip (loudly, see conftest.py) when xl or gcc is not installed."""
    reason = missing_parts()
    if reason is not None:
        pytest.skip(reason)


def build_stub() -> Path:
    """Compile the stub once per source version; return the .so path."""
    source = STUB_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = BUILD_DIR / f"xlstub-{digest}.so"
    if target.exists():
        return target
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as tmp:
        partial = Path(tmp) / "xlstub.so"
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-o",
                str(partial),
                str(STUB_SOURCE),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(partial, target)  # atomic: concurrent runs never see half a file
    return target


def stub_env() -> dict[str, str]:
    """The environment that makes xl run on the stub."""
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    env["LD_PRELOAD"] = str(build_stub())
    env["LC_ALL"] = "C"
    return env


def dry_run(cfg: str | bytes, directory: Path, name: str = "case.cfg") -> XlResult:
    """``xl -N create`` on ``cfg`` written to ``directory/name`` (xl wants a regular file)."""
    path = directory / name
    path.write_bytes(cfg if isinstance(cfg, bytes) else cfg.encode("utf-8"))
    proc = subprocess.run(
        [XL, "-N", "create", str(path)],
        env=stub_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    stdout = proc.stdout.decode("utf-8", "replace").strip()
    config = json.loads(stdout) if rc == 0 and stdout else None
    return XlResult(rc, proc.stderr.decode("utf-8", "replace").splitlines(), config)
