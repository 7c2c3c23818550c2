"""xlprobe.first_channel_lost against Debian's real xl 4.17 (under tests/xlstub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xl_dryrun import XL, require_xl, stub_env

from xen_channel_backend.xlprobe import first_channel_lost


@pytest.mark.integration
def test_debian_12_xl_loses_the_first_channel() -> None:
    require_xl()
    assert first_channel_lost(XL, stub_env()) is True


@pytest.mark.integration
def test_xl_that_cannot_reach_xen_is_unknown() -> None:
    require_xl()
    # Without the stub, libxl_ctx_alloc fails: no hypervisor on this machine.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if os.path.exists("/dev/xen/privcmd"):
        pytest.skip("this machine runs on Xen: xl works without the stub")
    assert first_channel_lost(XL, env) is None


def test_missing_xl_is_unknown(tmp_path: Path) -> None:
    assert first_channel_lost(str(tmp_path / "no-such-xl")) is None


def _fake_xl(tmp_path: Path, body: str) -> str:
    """A stand-in for a *fixed* xl: prints what a fixed xl's dry run prints."""
    script = tmp_path / "xl"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_fixed_xl_leaves_devid_out(tmp_path: Path) -> None:
    # No fixed xl exists for Debian 12; the fix (Xen e1ccced4af) makes the
    # dry run omit "devid", which is what this stand-in prints.
    xl = _fake_xl(tmp_path, """echo '{"channels": [{"name": "x", "connection.pty": {}}]}'""")
    assert first_channel_lost(xl) is False


def test_garbage_output_is_unknown(tmp_path: Path) -> None:
    assert first_channel_lost(_fake_xl(tmp_path, "echo not json")) is None
    assert first_channel_lost(_fake_xl(tmp_path, "echo '{}'")) is None
    assert first_channel_lost(_fake_xl(tmp_path, "exit 3")) is None
