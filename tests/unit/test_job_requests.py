"""Job requests as the worker receives them (``jobs/contract.py``): what a message body must be, what is
normalised rather than refused, and bad job arguments as ``BadJobRequest`` (straight to the DLQ)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from forge_remote.errors import BadJobRequest
from forge_remote.forge.payloads import MAX_JSON_DEPTH
from forge_remote.jobs.contract import JOB_SOURCE, MAX_REQUEST_BYTES, JobContext, JobRegistry, JobRequest

INSTALLATION = "ari:cloud:ecosystem::installation/2c4e6a8b-requests"


def body(**detail: Any) -> str:
    return json.dumps({"job": "page-snapshot", "installationId": INSTALLATION, **detail})


def test_a_bare_request_and_its_envelope_are_the_same_request() -> None:
    request = JobRequest.from_message_body(body(requestId="r-1", attempt=2, requestedBy="5b10ac8d82e05b22cc7d4ef5"))
    enveloped = json.dumps({"source": JOB_SOURCE, "detail": request.to_detail()})
    assert JobRequest.from_message_body(enveloped) == request
    assert (request.request_id, request.attempt, request.requested_by) == ("r-1", 2, "5b10ac8d82e05b22cc7d4ef5")


def test_an_envelope_from_another_source_is_not_unwrapped() -> None:
    foreign = json.dumps({"source": "someone.else", "detail": json.loads(body())})
    with pytest.raises(BadJobRequest, match="job name"):
        JobRequest.from_message_body(foreign)


@pytest.mark.parametrize("attempt", [-1, True, "3", 1.5, None])
def test_an_odd_attempt_count_is_zero_not_a_refusal(attempt: object) -> None:
    assert JobRequest.from_message_body(body(attempt=attempt)).attempt == 0


@pytest.mark.parametrize("request_id", ["", 7, "r" * 129, None])
def test_an_unusable_request_id_is_replaced_by_a_fresh_one(request_id: object) -> None:
    first = JobRequest.from_message_body(body(requestId=request_id))
    second = JobRequest.from_message_body(body(requestId=request_id))
    assert len(first.request_id) == 32
    assert first.request_id != second.request_id


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (body(requestedBy="not an account"), "requestedBy"),
        (body(installationId="ari:cloud:x#y"), "installationId"),
        (body(args={"pad": "x" * MAX_REQUEST_BYTES}), "too large"),
        (body(args={"deep": json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)}), "nested more than"),
        ("[" * 10_000 + "]" * 10_000, "not valid JSON|nested"),
    ],
)
def test_a_request_that_could_never_run_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(BadJobRequest, match=reason):
        JobRequest.from_message_body(text)


def test_to_detail_leaves_out_who_asked_when_nobody_did() -> None:
    detail = JobRequest(job="page-snapshot", installation_id=INSTALLATION, request_id="r").to_detail()
    assert detail == {
        "job": "page-snapshot",
        "installationId": INSTALLATION,
        "args": {},
        "requestId": "r",
        "attempt": 0,
    }


@pytest.mark.parametrize("error", [KeyError("pageId"), ValueError("pageId must be digits"), TypeError("not a str")])
def test_bad_arguments_become_a_bad_request_naming_the_job(error: Exception) -> None:
    registry = JobRegistry()

    def parse(args: Mapping[str, Any]) -> str:
        raise error

    ran: list[str] = []
    registry.job("page-snapshot", parse)(lambda ctx, page_id: ran.append(page_id))
    request = JobRequest(job="page-snapshot", installation_id=INSTALLATION)
    ctx = JobContext(request=request, api_base_url="", confluence=None, results=None, remaining_ms=lambda: 0)  # type: ignore[arg-type]
    with pytest.raises(BadJobRequest, match="bad arguments for job page-snapshot") as refused:
        registry.get("page-snapshot")(ctx)
    assert "pageId" in refused.value.reason or "not a str" in refused.value.reason
    assert ran == []


@pytest.mark.parametrize("name", ["", "Page", "page_snapshot", "-page", "p" * 65])
def test_a_job_name_is_lower_case_words(name: str) -> None:
    with pytest.raises(ValueError, match="invalid job name"):
        JobRegistry().job(name, dict)
