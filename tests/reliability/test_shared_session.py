"""Regressions for the second outside review's finding on the shared HTTP session, and a variant.

7. The container's one ``requests.Session`` (every tenant's and user's calls, all on
   api.atlassian.com) kept cookies: one set in answer to installation A's request went out with
   installation B's job and user Y's call. The session now keeps no cookies and carries no header of
   its own; checked on the wire, on every client that uses it (Confluence, the personal data reporting
   API, Forge's GraphQL gateway for offline tokens).
Variant: a 401 "scope does not match" (the app's manifest lacks the operation's scope) was read as the
   token being refused: the worker deleted a valid app token and every job of the site waited for a
   new one. It is now a permanent failure naming the manifest, and the token stays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from forge_remote import outbound
from forge_remote.confluence.client import ConfluenceClient
from forge_remote.errors import ScopeMissing, TokenRejected
from forge_remote.outbound import shared_session
from forge_remote.storage.table_keys import APP_TOKEN_SK, installation_pk
from local.loopback import LoopbackServer
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

pytestmark = pytest.mark.reliability


class CookieServer:
    """Answers every request with JSON and a ``Set-Cookie`` naming the bearer it came with; records the
    ``Cookie`` header of each request, by bearer."""

    def __init__(self) -> None:
        self.cookies_seen: list[tuple[str, str]] = []
        self.answer_status = 200
        self.answer_headers: list[tuple[str, str]] = []
        self.answer_body: dict[str, Any] = {"results": [], "_links": {}}
        self._server = LoopbackServer(self._wsgi)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        bearer = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        self.cookies_seen.append((bearer[-8:], environ.get("HTTP_COOKIE", "")))
        headers = [
            ("Content-Type", "application/json"),
            # Domain-less, path "/", long-lived: the cookie every client would send back if it kept any.
            ("Set-Cookie", f"atl.session=of-{bearer[-8:]}; Path=/; Max-Age=3600"),
            ("Set-Cookie", "JSESSIONID=shared-node-7; Path=/"),
            *self.answer_headers,
        ]
        start_response(f"{self.answer_status} X", headers)
        return [json.dumps(self.answer_body).encode()]

    def __enter__(self) -> CookieServer:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def host(self) -> str:
        return self.url.split("/")[2]


@pytest.fixture
def fresh_session() -> Iterator[None]:
    """The container's session as a new container has it (none yet), and none left behind."""
    outbound._session = None
    yield
    if outbound._session is not None:
        outbound._session.close()
    outbound._session = None


def test_a_cookie_set_for_one_tenant_is_never_sent_with_anothers(fresh_session: None, ledger: Ledger) -> None:
    with CookieServer() as server:
        tenants = {name: ledger.secret("x" * 40 + f"-tenant-{name}") for name in "ABC"}
        for _round in range(2):
            for name, token in tenants.items():
                client = ConfluenceClient(
                    f"{server.url}/ex/confluence/cloud-{name}", lambda t=token: t, allowed_hosts=[server.host]
                )
                client.get_json("/rest/api/content/search", {"cql": "type = page"})
                ledger.refused()
        assert len(server.cookies_seen) == 6
        assert [cookie for _, cookie in server.cookies_seen] == [""] * 6, server.cookies_seen
    session = shared_session()
    assert len(session.cookies) == 0
    assert "Authorization" not in session.headers
    assert "Cookie" not in session.headers
    assert session.auth is None


def test_no_client_that_shares_the_session_carries_a_cookie_either(fresh_session: None, ledger: Ledger) -> None:
    """The personal data reporting client and the offline token minter use the same session."""
    from forge_remote.lifecycle.privacy import PersonalDataReporter, ReportedAccount
    from forge_remote.tokens.offline import OfflineTokenMinter

    with CookieServer() as server:
        token_a = ledger.secret("reporting-token-A-" + "y" * 40)
        reporter = PersonalDataReporter(
            f"{server.url}/ex/confluence/cloud-A", lambda: token_a, allowed_hosts=[server.host]
        )
        server.answer_body = {"accounts": []}  # nothing to act on
        reporter.report([ReportedAccount("557058:" + "a" * 36, 1_796_000_000.0)])
        template = "ari:cloud:confluence:{cloudId}:workspace/{cloudId}"
        minter = OfflineTokenMinter(f"{server.url}/graphql", template, [server.host])
        token_b = ledger.secret("app-token-B-" + "z" * 40)
        with pytest.raises(Exception):  # noqa: B017, PT011 (the answer is no mint result: only what was sent matters)
            minter.mint(
                account_id="557058:" + "b" * 36, cloud_id="cloud-B", app_token=token_b, remaining_ms=lambda: 60_000
            )
        assert [cookie for _, cookie in server.cookies_seen] == ["", ""], server.cookies_seen
        ledger.refused(2)
    assert len(shared_session().cookies) == 0


def test_a_scope_refusal_is_not_a_refused_token(fresh_session: None, ledger: Ledger) -> None:
    with CookieServer() as server:
        server.answer_status = 401
        server.answer_headers = [("X-Failure-Category", "FAILURE_CLIENT_SCOPE_CHECK")]
        server.answer_body = {"code": 401, "message": "Unauthorized; scope does not match"}
        token = ledger.secret("a-valid-token-" + "w" * 40)
        client = ConfluenceClient(f"{server.url}/ex/confluence/cloud-A", lambda: token, allowed_hosts=[server.host])
        with pytest.raises(ScopeMissing) as refused:
            client.get_json("/rest/api/user/current")
        assert not isinstance(refused.value, TokenRejected)
        assert "permissions.scopes" in str(refused.value)
        # A plain 401 still is the token's.
        server.answer_headers, server.answer_body = [], {"code": 401, "message": "Unauthorized"}
        with pytest.raises(TokenRejected):
            client.get_json("/rest/api/user/current")
        ledger.refused(2)


def test_a_job_calling_beyond_the_manifests_scopes_keeps_the_app_token(local_world: LocalWorld, ledger: Ledger) -> None:
    """A token Forge granted without the search scope: the job goes to the DLQ naming the manifest, and
    the stored app token, valid all along, is still there for every other job."""
    token = ledger.secret(local_world.forge.app_token(lifetime_s=3 * 3600, scopes=["read:confluence-user"]))
    headers = local_world.forge.headers(local_world.site, app_token=token)
    installed = local_world.send(
        "POST", "/forge/lifecycle", headers, local_world.forge.installed_event(local_world.site)
    )
    assert installed["statusCode"] == 200
    [request] = local_world.pages(1)
    local_world.enqueue(request)
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []  # not deferred: dead-lettered with its reason
    stored = boto3.client("dynamodb").get_item(
        TableName=local_world.stack.physical["TokensTable"],
        Key={"pk": {"S": installation_pk(local_world.site.installation_id)}, "sk": {"S": APP_TOKEN_SK}},
    )
    assert "Item" in stored, "the valid app token was deleted for a missing scope"
    [dead] = boto3.client("sqs").receive_message(
        QueueUrl=local_world.stack.physical["JobsDeadLetterQueue"], MessageAttributeNames=["All"]
    )["Messages"]
    assert "permissions.scopes" in dead["MessageAttributes"]["reason"]["StringValue"]
    ledger.refused()
