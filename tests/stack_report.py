"""Lines ``test_cfn_stack.py`` leaves for the end-of-run summary: what moto's CloudFormation created from the
transformed template, per resource type, and what it could not create and why."""

from __future__ import annotations

STACK_REPORT: list[str] = []
