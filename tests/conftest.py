"""Suite-wide policy: a test may skip only loudly.

Tests that need a daemon, root or a system package skip when the system
cannot provide it (integration tests are also marked ``integration``).
Every skip is listed in a banner at the end of the run, so a green run that
silently tested nothing real cannot pass unnoticed.  With
``XCB_REQUIRE_INTEGRATION=1`` (set by .ci/run: CI runs as root with every
package that make test installs) any skip is a failure instead: there, a
missing part is a broken install step, not a property of the machine.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_skipped: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)
    if os.environ.get("XCB_REQUIRE_INTEGRATION") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped where every real part is required: {reason}"
    else:
        _skipped.append((item.nodeid, reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _skipped:
        return
    write = terminalreporter.write_line
    write("")
    write("!" * 78, red=True, bold=True)
    write(f"!! {len(_skipped)} TEST(S) SKIPPED: these real parts were NOT tested",
          red=True, bold=True)
    for nodeid, reason in _skipped:
        write(f"!!   {nodeid}: {reason}", red=True)
    write("!" * 78, red=True, bold=True)
