"""Offline user impersonation end to end: ``ctx.confluence_as(account)`` in the real worker (moto, SQS
records, the handler module), user tokens minted by the Forge emulator's GraphQL gateway, Confluence
answered by the Confluence emulator (which knows who a token acts as from its ``sub``).

What is proved: a user token is minted once and cached per (installation, account), across worker
containers, and re-minted before it nears its end; a rejected user token is removed exactly and
re-minted once; a refused app token is removed exactly; uninstall removes cached user tokens and the
item carries a TTL; each failure defers or dead-letters with a reason naming no secret; and the app's
own token never stands in for a user.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.jobs.runner import JobStatus, Outcome
from forge_remote.storage.installations import InstallationRegistry
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import installation_pk, offline_token_sk
from forge_remote.tokens.store import TTL_GRACE_S
from local.apigw import http_api_event
from local.confluence_emulator import ConfluenceEmulator, jwt_not_expired, token_subject
from local.forge_emulator import ForgeEmulator, Site, new_installation_id
from local.lambda_context import LocalLambdaContext
from local.poller import sqs_record
from local.stack import LocalStack

APP_TOKEN_LIFETIME_S = 3 * 3600


def account() -> str:
    return f"557058:{uuid.uuid4()}"


@pytest.fixture
def graphql(forge: ForgeEmulator) -> Iterator[ForgeEmulator]:
    """The session's Forge emulator with its GraphQL state cleared before and after the test."""
    forge.reset_graphql()
    yield forge
    forge.reset_graphql()


@pytest.fixture
def refused() -> set[str]:
    """Accounts whose tokens the Confluence emulator refuses (401), however fresh."""
    return set()


@pytest.fixture
def wiki(refused: set[str]) -> Iterator[ConfluenceEmulator]:
    emulator = ConfluenceEmulator(token_validator=lambda t: jwt_not_expired(t) and token_subject(t) not in refused)
    emulator.start()
    emulator.add_space("ENG", "Engineering")
    emulator.add_space("SEC", "Security")
    emulator.add_page("ENG", "Release notes")
    emulator.add_page("SEC", "Incident review")
    yield emulator
    emulator.stop()


@pytest.fixture
def wiki_site(wiki: ConfluenceEmulator) -> Site:
    return Site(
        installation_id=new_installation_id(),
        cloud_id=wiki.cloud_id,
        api_base_url=wiki.api_base_url,
        site_url="https://example.atlassian.net",
    )


@pytest.fixture
def load(
    stack: LocalStack, graphql: ForgeEmulator, wiki: ConfluenceEmulator, handler: Callable[[str], Any]
) -> Callable[[str], Any]:
    """Functions configured as the local stack is: both emulators allowed, GraphQL on the Forge emulator."""
    hosts = [wiki.api_base_url.split("/")[2], graphql.graphql_url.split("/")[2]]
    stack.parameters["AllowedApiHosts"] = ",".join(hosts)
    stack.parameters["ForgeGraphqlUrl"] = graphql.graphql_url
    return handler


@pytest.fixture
def triggers(load: Callable[[str], Any]) -> Any:
    return load("ForgeTriggersFunction")


@pytest.fixture
def worker(load: Callable[[str], Any]) -> Any:
    return load("ConfluenceWorkerFunction")


@dataclass(frozen=True)
class OfflineWorld:
    """This module's local world: moto, the Forge emulator serving GraphQL, a Confluence site, functions."""

    stack: LocalStack
    forge: ForgeEmulator
    wiki: ConfluenceEmulator
    site: Site
    triggers: Any
    worker: Any


@pytest.fixture
def world(
    stack: LocalStack,
    graphql: ForgeEmulator,
    wiki: ConfluenceEmulator,
    wiki_site: Site,
    triggers: Any,
    worker: Any,
) -> OfflineWorld:
    return OfflineWorld(stack, graphql, wiki, wiki_site, triggers, worker)


def call(triggers: Any, forge: ForgeEmulator, site: Site, path: str, **headers: Any) -> dict[str, Any]:
    body = forge.installed_event(site) if path == "/forge/lifecycle" else {}
    event = http_api_event("POST", path, headers=forge.headers(site, **headers), body=body)
    response: dict[str, Any] = triggers.lambda_handler(event, LocalLambdaContext(timeout_s=6))
    return response


def install(triggers: Any, forge: ForgeEmulator, site: Site) -> str:
    token = forge.app_token(lifetime_s=APP_TOKEN_LIFETIME_S)
    assert call(triggers, forge, site, "/forge/lifecycle", app_token=token)["statusCode"] == 200
    return token


def digest_request(site: Site, account_id: str | None, **args: Any) -> JobRequest:
    return JobRequest(job="user-digest", installation_id=site.installation_id, args=args, requested_by=account_id)


def run(worker: Any, request: JobRequest) -> Outcome:
    """The real runner of a loaded worker container, on one request (no SQS)."""
    outcome: Outcome = worker.runner.run(request, receive_count=1, remaining_ms=lambda: 60_000)
    return outcome


def run_through_sqs(worker: Any, stack: LocalStack, request: JobRequest) -> dict[str, Any]:
    """One request sent, received and handled as the SQS event source mapping would."""
    sqs = boto3.client("sqs")
    body = json.dumps({"source": "forge-remote.jobs", "detail": request.to_detail()})
    sqs.send_message(QueueUrl=stack.physical["JobsQueue"], MessageBody=body)
    messages = sqs.receive_message(QueueUrl=stack.physical["JobsQueue"], AttributeNames=["All"])["Messages"]
    event = {"Records": [sqs_record(m, stack.arns["JobsQueue"], stack.region) for m in messages]}
    response: dict[str, Any] = worker.lambda_handler(event, LocalLambdaContext(function_name="worker", timeout_s=120))
    return response


def dlq_reasons(stack: LocalStack) -> list[str]:
    messages = boto3.client("sqs").receive_message(
        QueueUrl=stack.physical["JobsDeadLetterQueue"], MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )
    return [m["MessageAttributes"]["reason"]["StringValue"] for m in messages.get("Messages", [])]


def items(stack: LocalStack, site: Site) -> dict[str, dict[str, Any]]:
    found = boto3.client("dynamodb").query(
        TableName=stack.physical["TokensTable"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(site.installation_id)}},
        ConsistentRead=True,
    )["Items"]
    return {item["sk"]["S"]: item for item in found}


def digests(stack: LocalStack, site: Site) -> list[dict[str, Any]]:
    return ResultStore(boto3.client("dynamodb"), stack.physical["AppTable"]).list(site.installation_id, "USER_DIGEST")


def bearers(wiki: ConfluenceEmulator) -> list[str]:
    return [seen[3] for seen in wiki.requests_seen if seen[3]]


# -- minted, cached, shared, refreshed -------------------------------------------------------------------


def test_a_user_job_reads_as_that_user_with_one_minted_token(
    world: OfflineWorld,
) -> None:
    app_token = install(world.triggers, world.forge, world.site)
    alice = account()
    world.wiki.restrict_space("SEC", [account()])  # someone else's space: the app could read it, Alice cannot

    outcome = run(world.worker, digest_request(world.site, alice, days=7))

    assert outcome.status is JobStatus.DONE, outcome.reason
    assert world.forge.offline_mints[alice] == 1
    bearer, variables = world.forge.graphql_requests[-1]
    assert bearer == app_token  # the mint is authenticated with the stored app token
    assert variables["input"] == {
        "contextIds": [f"ari:cloud:confluence:{world.site.cloud_id}:workspace/{world.site.cloud_id}"],
        "userId": alice,
    }
    assert {token_subject(t) for t in bearers(world.wiki)} == {alice}  # never the app's token
    (record,) = digests(world.stack, world.site)
    assert [p["spaceKey"] for p in record["pages"]] == ["ENG"]  # the restricted space stayed out
    assert record["accountId"] == alice


def test_the_user_token_carries_only_the_scopes_marked_for_impersonation_and_they_suffice(
    world: OfflineWorld,
) -> None:
    from local.oauth_scopes import impersonation_scopes, manifest_scopes, token_scopes

    assert impersonation_scopes() < manifest_scopes()  # a strict subset: the manifest marks some, not all
    install(world.triggers, world.forge, world.site)
    alice = account()
    outcome = run(world.worker, digest_request(world.site, alice, days=7))
    assert outcome.status is JobStatus.DONE, outcome.reason
    [user_token] = {t for t in bearers(world.wiki) if token_subject(t) == alice}
    assert token_scopes(user_token) == impersonation_scopes()
    assert world.wiki.scope_refusals == []


def test_without_a_scope_marked_for_impersonation_the_user_job_is_refused_and_never_acts_as_the_app(
    world: OfflineWorld,
) -> None:
    app_token = install(world.triggers, world.forge, world.site)
    world.forge.impersonation_scopes = frozenset()  # a manifest with plain scope names only
    outcome = run(world.worker, digest_request(world.site, account(), days=7))
    assert outcome.status is JobStatus.DEAD, outcome  # a 403 cannot get better by retrying
    assert world.wiki.scope_refusals  # Confluence refused the user's token for its scope
    assert app_token not in bearers(world.wiki)


def test_the_cached_token_serves_the_next_job_in_another_container_without_a_mint(
    world: OfflineWorld,
    load: Callable[[str], Any],
) -> None:
    install(world.triggers, world.forge, world.site)
    alice = account()
    assert run(world.worker, digest_request(world.site, alice)).status is JobStatus.DONE
    cached = items(world.stack, world.site)[offline_token_sk(alice)]
    first = cached["token"]["S"]

    assert run(world.worker, digest_request(world.site, alice)).status is JobStatus.DONE  # same container
    other_container = load("ConfluenceWorkerFunction")
    assert run(other_container, digest_request(world.site, alice)).status is JobStatus.DONE

    assert world.forge.offline_mints[alice] == 1
    assert set(bearers(world.wiki)) == {first}
    # Cached with its expiry (ttl and exp agree here) and a DynamoDB TTL an hour past it.
    expires_at = float(cached["expiresAt"]["N"])
    assert abs(expires_at - (clock.now() + world.forge.offline_ttl_s)) < 30
    assert int(cached["ttl"]["N"]) == int(expires_at) + TTL_GRACE_S
    assert cached["subject"]["S"] == alice


def test_a_token_near_its_end_is_reminted_not_handed_out(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    alice = account()
    world.forge.offline_ttl_s = 1800
    assert run(world.worker, digest_request(world.site, alice)).status is JobStatus.DONE
    first = bearers(world.wiki)[-1]
    clock.advance(1800 - 600 + 5)  # still valid, but for less than TOKEN_MIN_VALIDITY_S (600 s)

    assert run(world.worker, digest_request(world.site, alice)).status is JobStatus.DONE

    assert world.forge.offline_mints[alice] == 2
    assert bearers(world.wiki)[-1] != first


def test_the_ttl_bounds_the_expiry_when_it_is_shorter_than_the_tokens_exp(
    world: OfflineWorld,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(world.triggers, world.forge, world.site)
    alice = account()
    from forge_remote.tokens import offline as offline_tokens

    original = offline_tokens.OfflineTokenMinter.mint

    def short_ttl(self: Any, **kwargs: Any) -> offline_tokens.MintedToken:
        minted = original(self, **kwargs)
        return offline_tokens.MintedToken(token=minted.token, ttl_s=900.0)  # exp says an hour

    monkeypatch.setattr(offline_tokens.OfflineTokenMinter, "mint", short_ttl)
    assert run(world.worker, digest_request(world.site, alice)).status is JobStatus.DONE
    cached = items(world.stack, world.site)[offline_token_sk(alice)]
    assert abs(float(cached["expiresAt"]["N"]) - (clock.now() + 900)) < 30
    assert cached["expirySource"]["S"] == "ttl"


# -- rejected tokens -------------------------------------------------------------------------------------


def test_a_rejected_user_token_is_removed_exactly_and_reminted_once(
    world: OfflineWorld,
) -> None:
    app_token = install(world.triggers, world.forge, world.site)
    alice = account()
    assert run(world.worker, digest_request(world.site, alice)).status is JobStatus.DONE
    revoked = bearers(world.wiki)[-1]
    world.wiki.revoke(revoked)
    seen_before = len(world.wiki.requests_seen)

    outcome = run(world.worker, digest_request(world.site, alice))

    assert outcome.status is JobStatus.DONE, outcome.reason
    assert world.forge.offline_mints[alice] == 2
    sent = [s[3] for s in world.wiki.requests_seen[seen_before:]]
    assert sent[0] == revoked
    assert sent[-1] not in (revoked, app_token)
    assert app_token not in sent
    stored = items(world.stack, world.site)
    assert stored["SYSTEM"]["token"]["S"] == app_token  # the app token was not touched
    assert stored[offline_token_sk(alice)]["token"]["S"] == sent[-1]


def test_a_user_confluence_keeps_refusing_is_reminted_once_then_deferred(
    world: OfflineWorld,
    refused: set[str],
) -> None:
    app_token = install(world.triggers, world.forge, world.site)
    alice = account()
    refused.add(alice)  # Confluence refuses every token acting as Alice

    outcome = run(world.worker, digest_request(world.site, alice))

    assert outcome.status is JobStatus.DEFERRED
    assert "rejected" in outcome.reason
    assert world.forge.offline_mints[alice] == 2  # the first, and exactly one fresh mint
    sent = bearers(world.wiki)
    assert {token_subject(t) for t in sent} == {alice}  # never the app's token instead
    assert app_token not in sent
    assert len(set(sent)) == 2
    stored = items(world.stack, world.site)
    assert set(stored) == {"SYSTEM"}  # both user tokens removed, the app token kept
    assert stored["SYSTEM"]["token"]["S"] == app_token


def test_an_app_token_the_gateway_refuses_is_removed_exactly_and_the_job_deferred(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    alice = account()
    world.forge.fail_graphql_next(1, 401)  # the app token expired or was revoked at Forge

    outcome = run(world.worker, digest_request(world.site, alice))

    assert outcome.status is JobStatus.DEFERRED
    assert "Forge GraphQL rejected the token" in outcome.reason
    # Exactly the app token, the only token stored, is gone; what is left is its refusal's digest.
    assert list(items(world.stack, world.site)) == ["REFUSED#SYSTEM"]
    assert "token" not in items(world.stack, world.site)["REFUSED#SYSTEM"]
    assert world.wiki.requests_seen == []  # nothing was asked as the app instead


def test_a_mint_racing_an_uninstall_leaves_no_token(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    registry = InstallationRegistry(boto3.client("dynamodb"), world.stack.physical["AppTable"])
    installation = registry.get(world.site.installation_id)
    assert installation is not None
    assert installation.cloud_id == world.site.cloud_id
    from forge_remote.errors import RetryLater
    from forge_remote.tokens.lease import TokenLease

    app_lease = TokenLease(world.worker.runner.tokens, world.site.installation_id, 600)
    app_lease.acquire()
    registry.mark_uninstalled(world.site.installation_id)  # lands while the job runs
    lease = world.worker.runner._offline_lease(installation, account(), app_lease, lambda: 60_000)
    with pytest.raises(RetryLater, match="uninstalled"):
        lease.acquire()
    assert set(items(world.stack, world.site)) == {"SYSTEM"}


def test_uninstall_deletes_cached_user_tokens(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    for user in (account(), account()):
        assert run(world.worker, digest_request(world.site, user)).status is JobStatus.DONE
    assert len(items(world.stack, world.site)) == 3

    response = call(world.triggers, world.forge, world.site, "/forge/uninstall")

    assert response["statusCode"] == 200
    assert json.loads(response["body"])["tokensDeleted"] == 3
    assert items(world.stack, world.site) == {}


# -- failures: deferred or dead-lettered, never as the app -----------------------------------------------

DEAD = JobStatus.DEAD
DEFERRED = JobStatus.DEFERRED


@pytest.mark.parametrize(
    ("setup", "status", "reason"),
    [
        (
            lambda f, a: f.offline_user_errors.__setitem__(a, "unknown-user"),
            DEAD,
            "will not mint a token for this user",
        ),
        (lambda f, a: f.offline_user_errors.__setitem__(a, "not-allowed"), DEAD, "cannot be impersonated"),
        (lambda f, a: f.offline_user_errors.__setitem__(a, "forbidden"), DEAD, "HTTP 403"),
        # Authorisation, not authentication: about this user, so the app token stays (UNAUTHENTICATED removes it).
        (lambda f, a: f.offline_user_errors.__setitem__(a, "unauthorized"), DEAD, "refused the mint"),
        (lambda f, a: f.fail_graphql_next(1, 429, retry_after="300"), DEFERRED, "HTTP 429"),
        (lambda f, a: f.fail_graphql_next(1, 503), DEFERRED, "HTTP 503"),
        (lambda f, a: f.fail_graphql_next(1, 500), DEFERRED, "HTTP 500"),
        (lambda f, a: f.fail_graphql_next(1, 400), DEAD, "HTTP 400"),
    ],
    ids=[
        "unknown-user",
        "not-allowed",
        "scope-403",
        "graphql-unauthorized",
        "rate-limited",
        "unavailable",
        "server-error",
        "bad-request",
    ],
)
def test_a_failed_mint_defers_or_dead_letters_and_never_acts_as_the_app(
    world: OfflineWorld,
    setup: Callable[[ForgeEmulator, str], None],
    status: JobStatus,
    reason: str,
) -> None:
    app_token = install(world.triggers, world.forge, world.site)
    alice = account()
    setup(world.forge, alice)

    outcome = run(world.worker, digest_request(world.site, alice))

    assert outcome.status is status
    assert reason in outcome.reason
    assert alice not in outcome.reason
    assert app_token not in outcome.reason
    assert world.wiki.requests_seen == []  # no fallback: Confluence was not asked at all
    assert items(world.stack, world.site)["SYSTEM"]["token"]["S"] == app_token  # only a 401 removes the app token
    assert offline_token_sk(alice) not in items(world.stack, world.site)
    if reason == "HTTP 429":
        assert outcome.delay_s >= 300 * 0.9  # Retry-After honoured (the delay is jittered ±10 %)


def test_an_unreachable_gateway_defers(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    closed = "127.0.0.1:9"  # discard port: nothing listens on loopback
    world.worker.runner.allowed_api_hosts = (*world.worker.runner.allowed_api_hosts, closed)
    world.worker.runner.graphql_url = f"http://{closed}/graphql"

    outcome = run(world.worker, digest_request(world.site, account()))

    assert outcome.status is JobStatus.DEFERRED
    assert "Forge GraphQL unreachable" in outcome.reason
    assert world.wiki.requests_seen == []


def test_a_graphql_url_off_the_allow_list_dead_letters_without_sending_the_app_token(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    world.worker.runner.graphql_url = "https://graphql.attacker.example/graphql"

    outcome = run(world.worker, digest_request(world.site, account()))

    assert outcome.status is JobStatus.DEAD
    assert "FORGE_GRAPHQL_URL refused" in outcome.reason
    assert world.forge.graphql_requests == []


def test_a_digest_with_no_account_goes_to_the_dlq(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)

    response = run_through_sqs(world.worker, world.stack, digest_request(world.site, None))

    assert response["batchItemFailures"] == []  # dead-lettered, not deferred
    assert dlq_reasons(world.stack) == ["user-digest needs requestedBy or args.accountId"]
    assert world.forge.graphql_requests == []


def test_a_refused_user_is_dead_lettered_through_sqs_with_a_reason(
    world: OfflineWorld,
) -> None:
    install(world.triggers, world.forge, world.site)
    bot = account()
    world.forge.offline_user_errors[bot] = "not-allowed"  # e.g. a service account (Atlassian ID-9158)

    response = run_through_sqs(world.worker, world.stack, digest_request(world.site, bot))

    assert response["batchItemFailures"] == []
    (reason,) = dlq_reasons(world.stack)
    assert reason.startswith("Forge will not mint a token for this user")
    assert bot not in reason


# -- secrecy ---------------------------------------------------------------------------------------------


def test_no_token_reaches_a_log_or_a_reason(
    all_logs: Callable[[], str],  # first: capture is in place before the functions bind their log streams
    world: OfflineWorld,
) -> None:
    app_token = install(world.triggers, world.forge, world.site)
    alice, bob = account(), account()
    reasons = [run(world.worker, digest_request(world.site, alice)).reason]
    world.wiki.revoke(bearers(world.wiki)[-1])
    reasons.append(run(world.worker, digest_request(world.site, alice)).reason)  # rejected, removed, re-minted
    world.forge.offline_user_errors[bob] = "unknown-user"
    reasons.append(run(world.worker, digest_request(world.site, bob)).reason)
    world.forge.fail_graphql_next(1, 401)
    reasons.append(run(world.worker, digest_request(world.site, account())).reason)

    user_tokens = set(bearers(world.wiki))
    assert len(user_tokens) == 2
    assert all(len(t) > 450 for t in user_tokens)
    assert len(app_token) > 450
    secrets = [app_token, *app_token.split(".")[1:], *(p for t in user_tokens for p in [t, *t.split(".")[1:]])]
    text = all_logs() + "\n".join(reasons)
    assert "rejected the token (HTTP 401); invalidated it" in text  # the worker's log was captured
    assert not [s for s in secrets if s in text]
    assert alice not in "\n".join(reasons)
    assert bob not in "\n".join(reasons)
