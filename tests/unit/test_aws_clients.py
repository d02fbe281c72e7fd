"""boto3 clients (``aws.py``): one per service and container, bounded retries and timeouts that fit inside
Forge's 5 s, and botocore's wire logs (which would print token writes) kept off."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import forge_remote.aws as aws_clients


@pytest.fixture(autouse=True)
def fresh_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # creating a client sends nothing
    aws_clients.reset_clients()
    yield
    aws_clients.reset_clients()  # no client made here outlives the test


def test_a_container_keeps_one_client_per_service() -> None:
    assert aws_clients.dynamodb() is aws_clients.dynamodb()
    assert aws_clients.sqs() is not aws_clients.dynamodb()
    first = aws_clients.sqs()
    aws_clients.reset_clients()
    assert aws_clients.sqs() is not first


def test_retries_and_timeouts_are_bounded() -> None:
    config = aws_clients.dynamodb().meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (2, 3)


def test_wire_logs_stay_off_whatever_the_root_level(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("botocore", "boto3", "urllib3"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    aws_clients.sqs()
    assert all(logging.getLogger(name).level >= logging.INFO for name in ("botocore", "boto3", "urllib3"))
