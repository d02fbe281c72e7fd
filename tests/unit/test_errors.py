"""The library's errors (``errors.py``): every one is either permanent or worth retrying, and the messages
name identifiers, never a secret."""

from __future__ import annotations

import inspect

import pytest

from forge_remote import errors
from forge_remote.errors import (
    ConfluenceError,
    ConfluenceUnavailable,
    ForgeRemoteError,
    PermanentFailure,
    RetryLater,
    TokenRejected,
    TokenUnavailable,
)
from forge_remote.tokens.store import token_sha256


def library_errors() -> list[type[ForgeRemoteError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, ForgeRemoteError) and cls not in (ForgeRemoteError, PermanentFailure, RetryLater)
    ]


def test_every_error_is_either_permanent_or_retried_never_both() -> None:
    found = library_errors()
    assert len(found) > 15
    kinds = {cls.__name__: (issubclass(cls, PermanentFailure), issubclass(cls, RetryLater)) for cls in found}
    assert {name: kind for name, kind in kinds.items() if kind not in ((True, False), (False, True))} == {}


def test_a_rejected_token_is_named_by_its_digest_only() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.secret-payload.sig"
    rejected = TokenRejected(401, "trace-1", token_sha256=token_sha256(token), by="Forge GraphQL")
    assert rejected.reason == "Forge GraphQL rejected the token (HTTP 401)"
    assert (rejected.status, rejected.trace_id, rejected.token_sha256) == (401, "trace-1", token_sha256(token))
    assert token not in repr(rejected.args)
    assert isinstance(rejected, RetryLater)
    assert rejected.delay_s == 0


def test_no_token_names_the_installation() -> None:
    unavailable = TokenUnavailable("ari:cloud:ecosystem::installation/1", "stored token is valid for less than 600s")
    assert (
        unavailable.reason
        == "stored token is valid for less than 600s for installation ari:cloud:ecosystem::installation/1"
    )
    assert unavailable.installation_id == "ari:cloud:ecosystem::installation/1"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (404, "Confluence HTTP 404: page not found"),
        (200, "Confluence: page not found"),
        (0, "Confluence: page not found"),
    ],
)
def test_a_confluence_error_says_the_status_when_there_was_one(status: int, message: str) -> None:
    error = ConfluenceError(status, "page not found", "trace-2")
    assert (error.reason, error.status, error.trace_id) == (message, status, "trace-2")


def test_confluence_down_is_retried_and_keeps_its_status() -> None:
    down = ConfluenceUnavailable(503, "unavailable")
    assert isinstance(down, RetryLater)
    assert (down.reason, down.status) == ("Confluence HTTP 503: unavailable", 503)


def test_retry_later_carries_its_delay() -> None:
    later = RetryLater("rate limited", delay_s=30.0)
    assert (later.reason, later.delay_s, str(later)) == ("rate limited", 30.0, "rate limited")
