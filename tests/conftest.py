"""Suite-wide policy: integration tests may skip only loudly.

An integration test (marked ``integration``) needs a daemon, root or a system
package.  When the system cannot provide it the test skips, and this file
prints every such skip in a banner at the end of the run, so a green run that
silently tested nothing real cannot pass unnoticed.  With
``XCB_REQUIRE_INTEGRATION=1`` (set by .ci/run: CI runs as root with every
package installed by make test) such a skip is a failure instead.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_skipped_integration: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or item.get_closest_marker("integration") is None:
        return
    longrepr = report.longrepr
    reason = str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)
    if os.environ.get("XCB_REQUIRE_INTEGRATION") == "1":
        report.outcome = "failed"
        report.longrepr = f"integration test skipped where it is required: {reason}"
    else:
        _skipped_integration.append((item.nodeid, reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _skipped_integration:
        return
    write = terminalreporter.write_line
    write("")
    write("!" * 78, red=True, bold=True)
    write(f"!! {len(_skipped_integration)} INTEGRATION TEST(S) SKIPPED: real parts were NOT tested",
          red=True, bold=True)
    for nodeid, reason in _skipped_integration:
        write(f"!!   {nodeid}: {reason}", red=True)
    write("!" * 78, red=True, bold=True)
