"""Waking parked jobs (``jobs/parking.py``): each parked delivery is claimed once and made visible at once,
a delivery that is over is let go, and one SQS would not take stays parked for the next token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from forge_remote import clock
from forge_remote.jobs.parking import wake_parked
from forge_remote.testing import MemoryParkingLot

INSTALLATION = "ari:cloud:ecosystem::installation/9e8d7c6b-parking"
OTHER = "ari:cloud:ecosystem::installation/0f1e2d3c-parking"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"

pytestmark = pytest.mark.usefixtures("frozen_clock")


def sqs_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "refused"}}, "ChangeMessageVisibility")


@dataclass
class FakeSqs:
    """``change_message_visibility`` as SQS answers it: each receipt handle in ``refuse`` gets its error."""

    refuse: dict[str, str] = field(default_factory=dict)  # receipt handle -> error code
    visible: list[tuple[str, str, int]] = field(default_factory=list)  # (queue, handle, timeout) accepted

    def change_message_visibility(self, *, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> Any:  # noqa: N803 (boto3's names)
        if ReceiptHandle in self.refuse:
            raise sqs_error(self.refuse[ReceiptHandle])
        self.visible.append((QueueUrl, ReceiptHandle, VisibilityTimeout))
        return {}


@pytest.fixture
def lot() -> MemoryParkingLot:
    lot = MemoryParkingLot()
    for request_id in ("r1", "r2", "r3"):
        lot.park(
            INSTALLATION, request_id, job="page-snapshot", receipt_handle=f"h-{request_id}", retry_at=clock.now() + 900
        )
    lot.park(OTHER, "r9", job="page-snapshot", receipt_handle="h-r9", retry_at=clock.now() + 900)
    return lot


def test_a_token_wakes_every_parked_job_of_its_installation_at_once(lot: MemoryParkingLot) -> None:
    sqs = FakeSqs()
    report = wake_parked(lot, sqs, QUEUE_URL, INSTALLATION)  # type: ignore[arg-type]
    assert [p.request_id for p in report.woken] == ["r1", "r2", "r3"]
    assert sqs.visible == [(QUEUE_URL, f"h-{r}", 0) for r in ("r1", "r2", "r3")]
    assert lot.waiting(INSTALLATION) == 0
    assert lot.waiting(OTHER) == 1  # another installation's jobs wait for their own token
    again = wake_parked(lot, sqs, QUEUE_URL, INSTALLATION)  # type: ignore[arg-type]
    assert (again.woken, again.already_back) == ([], 0)  # a job is woken once


def test_a_request_id_wakes_that_job_only(lot: MemoryParkingLot) -> None:
    sqs = FakeSqs()
    report = wake_parked(lot, sqs, QUEUE_URL, INSTALLATION, request_id="r2")  # type: ignore[arg-type]
    assert [p.request_id for p in report.woken] == ["r2"]
    assert [handle for _, handle, _ in sqs.visible] == ["h-r2"]
    assert lot.waiting(INSTALLATION) == 2


@pytest.mark.parametrize("code", ["ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue"])
def test_a_delivery_that_is_over_is_let_go(lot: MemoryParkingLot, code: str) -> None:
    sqs = FakeSqs(refuse={"h-r2": code})
    report = wake_parked(lot, sqs, QUEUE_URL, INSTALLATION)  # type: ignore[arg-type]
    assert [p.request_id for p in report.woken] == ["r1", "r3"]
    assert report.already_back == 1
    assert lot.waiting(INSTALLATION) == 0  # not parked again: nothing waits on that delivery any more


def test_a_job_sqs_would_not_wake_stays_parked_for_the_next_token(lot: MemoryParkingLot) -> None:
    sqs = FakeSqs(refuse={"h-r2": "InternalError"})
    with pytest.raises(ClientError):
        wake_parked(lot, sqs, QUEUE_URL, INSTALLATION)  # type: ignore[arg-type]
    assert [handle for _, handle, _ in sqs.visible] == ["h-r1"]
    # r2 was put back and r3 never claimed: the next delivery wakes both.
    retry = wake_parked(lot, FakeSqs(), QUEUE_URL, INSTALLATION)  # type: ignore[arg-type]
    assert [(p.request_id, p.receipt_handle) for p in retry.woken] == [("r2", "h-r2"), ("r3", "h-r3")]


def test_a_woken_job_keeps_what_it_was_parked_with(lot: MemoryParkingLot, frozen_clock: float) -> None:
    (woken,) = wake_parked(lot, FakeSqs(), QUEUE_URL, OTHER).woken  # type: ignore[arg-type]
    assert (woken.installation_id, woken.job, woken.parked_at, woken.retry_at) == (
        OTHER,
        "page-snapshot",
        frozen_clock,
        frozen_clock + 900,
    )
