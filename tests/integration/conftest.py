"""The integration suite's summary lines: the least-privilege table (granted vs exercised permissions per
function, from ``test_least_privilege.py``) and what moto's CloudFormation could not create (from
``test_cfn_stack.py``), printed at the end of every run that ran those tests (no ``-s`` needed)."""

from __future__ import annotations

from typing import Any

from tests.iam_enforcement import summary_lines
from tests.stack_report import STACK_REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in [*summary_lines(), *STACK_REPORT]:
        terminalreporter.write_line(line)
